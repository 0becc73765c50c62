import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureGuard, runningGuardPid, superviseGuard } from '../worker/guard';

const CLI = join(__dirname, '..', 'dist', 'cli', 'main.js');

/** Issue 13 item 4: a worker restarts its host guard when the guard dies. */
describe('guard supervision', () => {
  let stateDir: string;

  const waitFor = async (cond: () => boolean, ms = 15_000) => {
    const until = Date.now() + ms;
    while (!cond() && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    return cond();
  };

  beforeAll(() => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  });

  beforeEach(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-guard-sup-'));
  });

  afterEach(async () => {
    // Stop the guard and wait until it is gone: it writes in the state dir (its log, the journal) until it exits.
    const pid = runningGuardPid(stateDir);
    if (pid) {
      process.kill(pid, 'SIGTERM');
      await waitFor(() => !existsSync(`/proc/${pid}/cmdline`) || readFileSync(`/proc/${pid}/cmdline`).length === 0);
    }
    await rm(stateDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  });

  it('a guard that was killed is started again while the worker lives', async () => {
    const first = ensureGuard(stateDir, 'test:///default', CLI);
    expect(await waitFor(() => runningGuardPid(stateDir) === first)).toBe(true);
    const stop = superviseGuard(stateDir, 'test:///default', CLI, () => {}, 200);
    try {
      process.kill(first, 'SIGKILL');
      expect(await waitFor(() => (runningGuardPid(stateDir) ?? first) !== first)).toBe(true);
      expect(runningGuardPid(stateDir)).not.toBe(first);
    } finally {
      stop();
    }
  }, 60_000);
});

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FreezeJournal } from '../activities/freeze-journal';
import { ensureGuard, runningGuardPid, stopIdleGuard, superviseGuard } from '../worker/guard';
import { testServerAddress, uniqueId } from './helpers/temporal';

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

  it('a guard with nothing open is ended by stopIdleGuard; one guarding an open freeze is left running', async () => {
    const pid = ensureGuard(stateDir, 'test:///default', CLI);
    expect(await waitFor(() => runningGuardPid(stateDir) === pid)).toBe(true);
    const journal = new FreezeJournal(stateDir);
    const open = { snapshotId: 's1', domain: 'vm', state: 'paused' as const, pausedAtMs: Date.now() };
    journal.write({ ...open, deadlineMs: Date.now() + 3_600_000 });
    expect(await stopIdleGuard(stateDir)).toBeUndefined();
    expect(runningGuardPid(stateDir)).toBe(pid);
    journal.write({ ...open, state: 'resumed', deadlineMs: Date.now(), resumedAtMs: Date.now() });
    expect(await stopIdleGuard(stateDir)).toBe(pid);
    expect(runningGuardPid(stateDir)).toBeUndefined();
  }, 60_000);

  it('groupsnap worker stopped with SIGTERM and nothing open ends the guard it started', async () => {
    const imagesDir = join(stateDir, 'images');
    const worker = spawn(
      process.execPath,
      [
        CLI,
        'worker',
        '--host',
        uniqueId('guard-stop'),
        '--libvirt-uri',
        'test:///default',
        '--state-dir',
        stateDir,
        '--images-dir',
        imagesDir,
        '--no-workflows',
        '--address',
        testServerAddress(),
        '--namespace',
        'groupsnap-test',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    worker.stdout.on('data', (d: Buffer) => (out += d.toString()));
    worker.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => worker.on('exit', (code) => r(code)));
    try {
      expect(await waitFor(() => out.includes('worker started'), 60_000)).toBe(true);
      expect(await waitFor(() => runningGuardPid(stateDir) !== undefined)).toBe(true);
      const guard = runningGuardPid(stateDir);
      worker.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(out).toContain('host guard stopped: no freeze is open');
      expect(runningGuardPid(stateDir)).toBeUndefined();
      expect(existsSync(`/proc/${guard}/cmdline`) && readFileSync(`/proc/${guard}/cmdline`).length > 0).toBe(false);
    } finally {
      if (worker.exitCode === null) worker.kill('SIGKILL');
    }
  }, 120_000);
});

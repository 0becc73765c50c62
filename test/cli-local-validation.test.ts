import { execFile } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { freePort } from '../dev/free-port';
import { CLI } from './helpers/worker-process';

const exec = promisify(execFile);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI with TEMPORAL_ADDRESS pointing at `address` (and no other Temporal settings). */
async function groupsnap(address: string, args: string[]): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, TEMPORAL_ADDRESS: address, TEMPORAL_NAMESPACE: 'default' };
  delete env.TEMPORAL_PROFILE;
  delete env.TEMPORAL_CONFIG_FILE;
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, ...args], { env, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Bad input the CLI must refuse on its own (exit 2, a message naming the problem) before it connects anywhere. */
const CASES: { args: string[]; message: RegExp }[] = [
  { args: ['group', 'create', 'bad/name', '--vm', 'a@h'], message: /group name "bad\/name" is not safe/ },
  { args: ['group', 'create', 'list', '--vm', 'a@h'], message: /group name "list" is reserved/ },
  { args: ['group', 'create', 'g', '--vm', 'a@h', '--tag', 't'], message: /either --vm .* or --tag/ },
  { args: ['group', 'create', 'g', '--vm', 'a@h', '--vm', 'a@h'], message: /VM a@h is listed twice/ },
  { args: ['group', 'create', 'g', '--tag', '../t'], message: /tag "..\/t" is not safe/ },
  { args: ['group', 'show', '../g'], message: /group name "..\/g" is not safe/ },
  { args: ['group', 'delete', '.g'], message: /group name ".g" is not safe/ },
  { args: ['snapshot', '--vm', 'x/y@h'], message: /VM name "x\/y" is not valid/ },
  { args: ['snapshot', '--vm', 'x@h/../z'], message: /host id "h\/..\/z" is not safe/ },
  { args: ['snapshot', '--vm', 'x@'], message: /expected <domain>\[@<host>\]/ },
  {
    args: ['worker', '--snapshots-in-flight', '0'],
    message: /snapshots in flight must be a whole number from 1 to 64, got 0/,
  },
  { args: ['worker', '--snapshots-in-flight', '2.5'], message: /expected an integer, got "2.5"/ },
  { args: ['snapshot', '--vm', 'x@h', '--max-freeze', '5'], message: /max freeze must be an integer from 100/ },
  { args: ['snapshot', '--vm', 'x@h', '--shard-hosts', '0'], message: /shard hosts must be an integer from 1 to 1000/ },
  {
    args: ['snapshot', '--vm', 'x@h', '--shard-above-hosts', '0'],
    message: /shard above hosts must be an integer from 1/,
  },
  { args: ['snapshot', 'shop', '--label', 'a/b'], message: /label "a\/b" is not safe/ },
  { args: ['snapshot', 'shop', '--snapshot-id', '../../etc'], message: /snapshot id "..\/..\/etc" is not safe/ },
  { args: ['snapshot', 'shop', '--max-freeze', '700000'], message: /max freeze must be an integer from 100/ },
  { args: ['snapshot', 'list', 'a b'], message: /group name "a b" is not safe/ },
  { args: ['snapshot', 'delete', 'shop', '../x'], message: /snapshot id "..\/x" is not safe/ },
  { args: ['tag', 'a@h', 'bad/tag'], message: /tag "bad\/tag" is not safe/ },
  { args: ['untag', 'a/b@h', 't'], message: /VM name "a\/b" is not valid/ },
  { args: ['host', 'forget', '../h'], message: /host id "..\/h" is not safe/ },
  { args: ['schedule', 'create', 'shop', '--cron', '61 * * * *'], message: /minute field '61' is out of range/ },
  { args: ['schedule', 'create', 'shop', '--cron', '0 * * * *', '--timezone', 'Mars/Base'], message: /time zone/ },
  { args: ['schedule', 'create', 'shop', '--cron', '0 * * * *', '--keep-daily', '0'], message: /keep nothing/ },
  { args: ['schedule', 'create', 'shop', '--cron', '0 * * * *', '--keep-last', '-1'], message: /keepLast must be/ },
  { args: ['schedule', 'create', 'shop', '--cron', '0 * * * *', '--catchup', 'soon'], message: /not a duration/ },
  { args: ['schedule', 'create', 'shop', '--cron', '0 * * * *', '--overlap', 'never'], message: /overlap policy/ },
  { args: ['schedule', 'create', 'shop', '--cron', '0 * * * *', '--label', '../l'], message: /label "..\/l"/ },
  { args: ['schedule', 'pause', '../g'], message: /group name "..\/g" is not safe/ },
  {
    args: ['schedule', 'backfill', 'shop', '--start', '2026-11-24T06:00:00Z', '--end', '2026-11-24T00:00:00Z'],
    message: /--start must be before --end/,
  },
  { args: ['restore', 'shop', 's1', '--as-clone', '--suffix', '../x'], message: /clone suffix "..\/x" is not safe/ },
  { args: ['restore', 'shop', '../s1', '--as-clone'], message: /snapshot id "..\/s1" is not safe/ },
  { args: ['restore', 'shop', 's1', '--in-place'], message: /confirm with --yes/ },
  { args: ['snapshot', 'pin', '../g', 's1'], message: /group name "..\/g" is not safe/ },
  { args: ['snapshot', 'unpin', 'shop', 'a b'], message: /snapshot id "a b" is not safe/ },
  { args: ['restore', 'list', '../g'], message: /group name "..\/g" is not safe/ },
  { args: ['restore', 'release', '../x', '--yes'], message: /clone name or restore id "..\/x" is not safe/ },
  { args: ['restore', 'release', 'db-1-dr', '--vm', 'a/b@h', '--yes'], message: /VM name "a\/b" is not valid/ },
  { args: ['restore', 'release', 'db-1-dr'], message: /confirm with --yes/ },
];

/**
 * The CLI refuses bad input by itself, with exit 2 and a clear message, even when no Temporal server is reachable:
 * the checks run before any connection (before this, every command first connected, and with the server down
 * failed with exit 1 "Failed to connect before the deadline" after ~10 s, without saying what was wrong).
 */
describe('groupsnap CLI: bad input is refused before anything else', () => {
  let closedPort: number;

  beforeAll(async () => {
    closedPort = await freePort(); // nothing listens there
  });

  it.each(CASES)('exits 2 for: groupsnap $args', async ({ args, message }) => {
    const run = await groupsnap(`127.0.0.1:${closedPort}`, args);
    expect(run.stderr).toMatch(message);
    expect(run.stderr).not.toMatch(/connect/i);
    expect(run.code).toBe(2);
  });

  it('never opens a connection for bad input (a listener at TEMPORAL_ADDRESS sees none)', async () => {
    const accepted: Socket[] = [];
    const server: Server = createServer((s) => {
      accepted.push(s);
      s.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    try {
      for (const args of [
        ['group', 'create', 'bad/name', '--vm', 'a@h'],
        ['snapshot', '--vm', 'x/y@h'],
        ['schedule', 'create', 'shop', '--cron', '0 * * * *', '--keep-weekly', '0'],
      ]) {
        const run = await groupsnap(`127.0.0.1:${port}`, args);
        expect(run.code).toBe(2);
      }
      expect(accepted).toHaveLength(0);
      // The listener works: good input does connect to it (and then fails, since it is not a Temporal server).
      const good = await groupsnap(`127.0.0.1:${port}`, ['group', 'show', 'shop']);
      expect(good.code).toBe(1);
      expect(accepted.length).toBeGreaterThan(0);
      const before = accepted.length;
      expect((await groupsnap(`127.0.0.1:${port}`, ['snapshot', 'shop', '--label', 'a b'])).code).toBe(2);
      expect(accepted.length).toBe(before);
    } finally {
      server.close();
    }
  }, 180_000);
});

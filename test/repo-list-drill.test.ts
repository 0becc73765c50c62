/**
 * `groupsnap repo list` shows each point's last DR drill (result, when, where, time to ready), read from the record
 * the drill's `recordDrill` activity stores beside the point; through the built CLI on a file:// repository.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createDrillActivities } from '../activities/drill';
import { RepositoryBusyError, RepositoryLock } from '../backup/locks';
import { Repository } from '../backup/repository';
import type { DrillRecord } from '../common/drill';
import { BAD_INPUT } from '../common/failures';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { writeTestPoint } from './helpers/repo-points';
import { CLI } from './helpers/worker-process';

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

let dir: string;
let url: string;
let keyFile: string;
const key = randomBytes(32);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gs-repo-list-drill-'));
  url = pathToFileURL(join(dir, 'repo')).href;
  keyFile = join(dir, 'key');
  writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
  const repo = await Repository.init(url, key, { chunkSize: 64 * 1024 });
  try {
    await writeTestPoint(repo, 'shop', 'gs-1', '2026-12-01T10:00:00.000Z', [randomBytes(64 * 1024), null]);
    await writeTestPoint(repo, 'shop', 'gs-2', '2026-12-01T11:00:00.000Z', [randomBytes(64 * 1024), null]);
  } finally {
    repo.close();
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const record = (over: Partial<DrillRecord>): DrillRecord => ({
  drillId: 'd1',
  group: 'shop',
  snapshotId: 'gs-1',
  toHost: 'hv-b',
  status: 'pass',
  readiness: 'serial-line',
  startedAt: '2026-12-01T12:00:00.000Z',
  restoreMs: 4200,
  readyMs: 8100,
  rtoMs: 12300,
  evidence: ['ready'],
  vms: [{ source: 'db-1', clone: 'db-1-d1' }],
  ...over,
});

test('repo list shows each point its last drill: result, when, where, time to ready; "never drilled" otherwise', async () => {
  // Stored the way a drill stores it: the drill's recordDrill activity on the target host, with that host's key.
  const drills = createDrillActivities({ hypervisor: {} as Hypervisor, hostId: 'hv-b', keyFile });
  await drills.recordDrill({ repo: url, record: record({}) });

  const listed = await cli(['repo', 'list', url, '--key-file', keyFile, '--json']);
  expect({ code: listed.code, stderr: listed.stderr }).toEqual({ code: 0, stderr: '' });
  const points = JSON.parse(listed.stdout) as { snapshotId: string; lastDrill: unknown }[];
  expect(points.map((p) => p.snapshotId)).toEqual(['gs-1', 'gs-2']);
  expect(points[0].lastDrill).toEqual({
    result: 'pass',
    at: '2026-12-01T12:00:00.000Z',
    toHost: 'hv-b',
    timeToReadyMs: 12300,
    restoreMs: 4200,
    drillId: 'd1',
  });
  expect(points[1].lastDrill).toBeNull();

  const text = await cli(['repo', 'list', url, '--key-file', keyFile]);
  expect(text.code).toBe(0);
  const [first, second] = text.stdout.split('\n').filter((l) => l.startsWith('shop '));
  expect(first).toContain('last drill passed 2026-12-01T12:00:00.000Z on hv-b (ready in 12.3 s)');
  expect(second).toContain('never drilled');

  // A later drill that failed replaces it in the listing.
  await drills.recordDrill({
    repo: url,
    record: record({
      drillId: 'd2',
      status: 'fail',
      startedAt: '2026-12-01T13:00:00.000Z',
      rtoMs: undefined,
      readyMs: undefined,
      error: 'no ready line within 300 s',
    }),
  });
  const again = JSON.parse((await cli(['repo', 'list', url, '--key-file', keyFile, '--json'])).stdout) as {
    lastDrill: Record<string, unknown> | null;
  }[];
  expect(again[0].lastDrill).toMatchObject({
    result: 'fail',
    at: '2026-12-01T13:00:00.000Z',
    timeToReadyMs: null,
    error: 'no ready line within 300 s',
  });
  const failedText = (await cli(['repo', 'list', url, '--key-file', keyFile])).stdout;
  expect(failedText).toContain('last drill FAILED 2026-12-01T13:00:00.000Z on hv-b');
});

test('drill --point latest skips a damaged point; a junk drill record only hides that record; a prune blocks the drill', async () => {
  const drills = createDrillActivities({ hypervisor: {} as Hypervisor, hostId: 'hv-b', keyFile });
  const durl = pathToFileURL(join(dir, 'damaged')).href;
  const repo = await Repository.init(durl, key, { chunkSize: 64 * 1024 });
  await writeTestPoint(repo, 'shop', 'gs-1', '2026-12-01T10:00:00.000Z', [randomBytes(64 * 1024)]);
  await writeTestPoint(repo, 'shop', 'gs-2', '2026-12-01T11:00:00.000Z', [randomBytes(64 * 1024)]);
  expect(await drills.repoLatestPoint({ repo: durl, group: 'shop' })).toBe('gs-2');
  // One byte of junk over the latest point's group manifest: the drill takes the newest readable point.
  await repo.store.put(repo.groupManifestKey('shop', 'gs-2'), Buffer.from('x'));
  expect(await drills.repoLatestPoint({ repo: durl, group: 'shop' })).toBe('gs-1');
  await drills.recordDrill({ repo: durl, record: record({}) });
  await repo.store.put(`${repo.pointPrefix('shop', 'gs-1')}drill`, randomBytes(100));
  const listed = JSON.parse((await cli(['repo', 'list', durl, '--key-file', keyFile, '--json'])).stdout) as {
    snapshotId: string;
    lastDrill: unknown;
    damaged?: unknown;
  }[];
  expect(listed.map((p) => [p.snapshotId, p.lastDrill ?? null, Boolean(p.damaged)])).toEqual([
    ['gs-1', null, false],
    ['gs-2', null, true],
  ]);
  // A prune in progress holds the drill's reads off (retryable), rather than deleting the point under it.
  const prune = await RepositoryLock.acquire(repo, 'prune', 'nightly-prune');
  await expect(drills.repoLatestPoint({ repo: durl, group: 'shop' })).rejects.toBeInstanceOf(RepositoryBusyError);
  await prune.release();
  repo.close();
});

test("a drill host's bad key file or a foreign endpoint in the URL is non-retryable bad input", async () => {
  const open = join(dir, 'open.key');
  writeFileSync(open, key.toString('base64'));
  chmodSync(open, 0o644);
  const loose = createDrillActivities({ hypervisor: {} as Hypervisor, hostId: 'hv-b', keyFile: open });
  await expect(loose.repoLatestPoint({ repo: url, group: 'shop' })).rejects.toMatchObject({
    type: BAD_INPUT,
    nonRetryable: true,
    message: expect.stringContaining(`chmod 600 ${open}`),
  });
  const drills = createDrillActivities({ hypervisor: {} as Hypervisor, hostId: 'hv-b', keyFile });
  await expect(
    drills.repoLatestPoint({ repo: 's3://dr-backups/shop?endpoint=http://attacker.example/', group: 'shop' }),
  ).rejects.toMatchObject({
    type: BAD_INPUT,
    nonRetryable: true,
    message: expect.stringMatching(/not this host's S3 endpoint/),
  });
});

/**
 * The copy of a point as a workflow (`copyGroupPoint`): the workflows' worker and a copy worker (`groupsnap
 * copy-worker`, in process) against the real Temporal test server, over file repositories. Progress shows in the
 * current details; a second copy finds the point there; a damaged source fails the copy, not retried, with a result.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { NativeConnection } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import { Repository } from '../backup/repository';
import { copyResult, startCopy } from '../client/copy';
import { createGroup } from '../client/groups';
import { BadInputError } from '../common/failures';
import { createCopyWorker } from '../worker/copy-worker';
import { FakeHost } from './helpers/fake-hosts';
import { writeTestPoint } from './helpers/repo-points';
import { CLI } from './helpers/worker-process';
import { connectTestClient, freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

const CHUNK = 64 * 1024;
let dir: string;
let from: string;
let to: string;
let keyFile: string;
const key = randomBytes(32);
let hosts: RunningHosts;
let client: Client;
let closeClient: () => Promise<void>;
let connection: NativeConnection;
let copyWorker: Awaited<ReturnType<typeof createCopyWorker>>;
let copyRun: Promise<void>;
let data: Buffer[];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gs-copy-wf-'));
  from = pathToFileURL(join(dir, 'from')).href;
  to = pathToFileURL(join(dir, 'to')).href;
  keyFile = join(dir, 'repo.key');
  writeFileSync(keyFile, key.toString('base64'), { mode: 0o600 });
  const repo = await Repository.init(from, key, { chunkSize: CHUNK });
  data = Array.from({ length: 40 }, () => randomBytes(CHUNK));
  await writeTestPoint(repo, 'shop', 'gs-1', '2026-12-01T00:00:00Z', data);
  await writeTestPoint(repo, 'shop', 'gs-bad', '2026-12-02T00:00:00Z', [randomBytes(CHUNK)]);
  const [bad] = (await repo.readDiskManifest('shop', 'gs-bad', 'db-1', 'vda')).chunks as string[];
  writeFileSync(join(dir, 'from', 'chunks', bad.slice(0, 2), bad), randomBytes(64));
  repo.close();
  const namespace = await freshNamespace('gscopy');
  hosts = await startHosts([new FakeHost(uniqueId('cp'))], { namespace });
  ({ client, close: closeClient } = await connectTestClient(namespace));
  connection = await NativeConnection.connect({ address: testServerAddress() });
  copyWorker = await createCopyWorker({ connection, namespace, keyFile, progressSignalMs: 0 });
  copyRun = copyWorker.run();
}, 120_000);

afterAll(async () => {
  copyWorker?.worker.shutdown();
  await copyRun;
  await connection?.close();
  await hosts?.stop();
  await closeClient?.();
  rmSync(dir, { recursive: true, force: true });
});

test('copies a point through the copy worker, with progress in the current details', async () => {
  const handle = await startCopy(client, { group: 'shop', snapshotId: 'gs-1', from, to, verify: 'all' });
  const result = await copyResult(handle);
  expect(result).toMatchObject({
    status: 'completed',
    point: 'copied',
    resealed: false,
    chunks: 40,
    chunksUploaded: 40,
    chunksVerified: 40,
    verify: 'all',
  });
  const meta = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
  expect(meta.currentDetails).toContain('**Copy** of gs-1');
  expect(meta.currentDetails).toContain('| 40 / 40 | 100% | 40 |');
  expect(meta.currentDetails).toContain('completed');
  const copy = await Repository.open(to, key);
  try {
    const disk = await copy.readDiskManifest('shop', 'gs-1', 'db-1', 'vda');
    const parts: Buffer[] = [];
    for await (const c of copy.readDisk(disk)) parts.push(c.data);
    expect(Buffer.concat(parts).equals(Buffer.concat(data))).toBe(true);
  } finally {
    copy.close();
  }
  // Again (a new run of the same id): the copy has the point, nothing is uploaded.
  const again = await copyResult(await startCopy(client, { group: 'shop', snapshotId: 'gs-1', from, to }));
  expect(again).toMatchObject({ status: 'completed', point: 'present', chunksUploaded: 0 });
}, 120_000);

test('a damaged source fails the copy at once (not retried), with its result; bad input is refused before it starts', async () => {
  const result = await copyResult(await startCopy(client, { group: 'shop', snapshotId: 'gs-bad', from, to }));
  expect(result.status).toBe('failed');
  expect(result.error).toMatch(/chunks\/.*corrupt|does not/);
  const copy = await Repository.open(to, key);
  try {
    expect(await copy.hasPoint('shop', 'gs-bad')).toBe(false);
  } finally {
    copy.close();
  }
  await expect(startCopy(client, { group: 'shop', snapshotId: '../x', from, to })).rejects.toBeInstanceOf(
    BadInputError,
  );
  await expect(startCopy(client, { group: 'shop', snapshotId: 'gs-1', from, to: 'http://x' })).rejects.toBeInstanceOf(
    BadInputError,
  );
}, 120_000);

test("repo list --group-copy takes the group's copy target from its definition", async () => {
  const ns = client.options.namespace;
  await createGroup(client, { name: 'shop', selector: { tag: 'shop' }, repository: from, copyTo: to });
  await createGroup(client, { name: 'plain', selector: { tag: 'plain' }, repository: from });
  const cli = (...args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(
        process.execPath,
        [
          CLI,
          'repo',
          'list',
          from,
          '--key-file',
          keyFile,
          '--address',
          testServerAddress(),
          '--namespace',
          ns,
          ...args,
        ],
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      ),
    );
  const r = await cli('--group', 'shop', '--group-copy', '--json');
  expect(r.code).toBe(0);
  expect(
    (JSON.parse(r.stdout) as { snapshotId: string; locations: string[] }[]).map((p) => [p.snapshotId, p.locations]),
  ).toEqual([
    ['gs-1', ['primary', 'copy']],
    ['gs-bad', ['primary']],
  ]);
  const none = await cli('--group', 'plain', '--group-copy');
  expect(none.code).toBe(2);
  expect(none.stderr).toMatch(/no copy target/);
  expect((await cli('--group-copy')).code).toBe(2);
}, 60_000);

/**
 * `groupsnap repo copy` on a real S3 server (versitygw with two accounts, `iam`): the primary repository in a bucket
 * of one account (the process's AWS_* settings), the copy in a bucket of another (GROUPSNAP_S3_CREDENTIALS_FILE).
 * A copy killed midway resumes without uploading again what is there; it never deletes in the copy when the primary
 * is pruned; another key reseals; and after the whole first bucket is deleted with admin credentials, every point
 * reads back bit-identical from the copy.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteBucketCommand, DeleteObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { S3_CREDENTIALS_FILE_ENV } from '../backup/credentials';
import { StoreAccessDeniedError } from '../backup/errors';
import { Repository } from '../backup/repository';
import { S3Server } from '../dev/s3-server';
import { writeTestPoint } from './helpers/repo-points';
import { CLI } from './helpers/worker-process';

const CHUNK = 64 * 1024;
const PRIMARY = 's3://copy-primary/dr';
const COPY = 's3://copy-second/dr';
const RESEALED = 's3://copy-third/dr';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

let s3: S3Server;
let root: S3Client;
let dir: string;
let env: Record<string, string>;
let keyFile: string;
let otherKeyFile: string;
const key = randomBytes(32);
const otherKey = randomBytes(32);
/** The data of each point's disk, by snapshot id (null: a zero chunk). */
const points: Record<string, { group: string; data: (Buffer | null)[] }> = {};
const saved: Record<string, string | undefined> = {};

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** Keys of every object of a bucket (root's view). */
async function keysOf(bucket: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const out = await root.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    keys.push(...(out.Contents ?? []).map((o) => o.Key!));
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
  return keys.sort();
}

const chunksIn = async (bucket: string) => (await keysOf(bucket)).filter((k) => k.startsWith('dr/chunks/'));

async function diskOf(repo: Repository, group: string, snapshotId: string): Promise<Buffer> {
  const disk = await repo.readDiskManifest(group, snapshotId, 'db-1', 'vda');
  const parts: Buffer[] = [];
  for await (const c of repo.readDisk(disk)) parts.push(c.data);
  return Buffer.concat(parts);
}

const expected = (id: string) => Buffer.concat(points[id].data.map((c) => c ?? Buffer.alloc(CHUNK)));

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gs-copy-s3-'));
  s3 = await S3Server.start({ iam: true });
  root = s3.client();
  const hosts = await s3.createUser();
  const copier = await s3.createUser();
  await s3.createBucket('copy-primary', hosts.accessKeyId);
  await s3.createBucket('copy-second', copier.accessKeyId);
  await s3.createBucket('copy-third', copier.accessKeyId);
  const credentials = join(dir, 's3-credentials.json');
  const entry = { endpoint: s3.endpoint, region: 'us-east-1', ...copier };
  writeFileSync(credentials, JSON.stringify({ 's3://copy-second': entry, 's3://copy-third': entry }), { mode: 0o600 });
  keyFile = join(dir, 'repo.key');
  otherKeyFile = join(dir, 'copy.key');
  writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
  writeFileSync(otherKeyFile, otherKey.toString('base64') + '\n', { mode: 0o600 });
  env = {
    ...s3.env,
    AWS_ACCESS_KEY_ID: hosts.accessKeyId,
    AWS_SECRET_ACCESS_KEY: hosts.secretAccessKey,
    [S3_CREDENTIALS_FILE_ENV]: credentials,
  };
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  // The primary: three points of group shop sharing chunks, one of crm; 300 chunks in all.
  const shared = Array.from({ length: 150 }, () => randomBytes(CHUNK));
  points['gs-20261201T000000Z-a'] = { group: 'shop', data: [...shared, null, ...shared.slice(0, 10)] };
  points['gs-20261202T000000Z-b'] = {
    group: 'shop',
    data: [...shared.slice(0, 100), ...Array.from({ length: 100 }, () => randomBytes(CHUNK))],
  };
  points['gs-20261203T000000Z-c'] = { group: 'shop', data: Array.from({ length: 40 }, () => randomBytes(CHUNK)) };
  points['gs-20261202T000000Z-d'] = { group: 'crm', data: Array.from({ length: 10 }, () => randomBytes(CHUNK)) };
  const repo = await Repository.init(PRIMARY, key, { chunkSize: CHUNK });
  try {
    for (const [id, p] of Object.entries(points)) {
      const at = `${id.slice(3, 7)}-${id.slice(7, 9)}-${id.slice(9, 11)}T00:00:00Z`;
      await writeTestPoint(repo, p.group, id, at, p.data);
    }
  } finally {
    repo.close();
  }
}, 120_000);

afterAll(async () => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  root?.destroy();
  await s3?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('each bucket is reachable only with its own credentials', async () => {
  // The hosts' account (the process's AWS_*) cannot open the copy bucket once the file does not name it.
  const noFile = process.env[S3_CREDENTIALS_FILE_ENV];
  delete process.env[S3_CREDENTIALS_FILE_ENV];
  try {
    await expect(Repository.init(COPY, key)).rejects.toBeInstanceOf(StoreAccessDeniedError);
  } finally {
    process.env[S3_CREDENTIALS_FILE_ENV] = noFile;
  }
  expect(await keysOf('copy-second')).toEqual([]);
});

test('bad flags exit 2 and write nothing', async () => {
  const openKey = join(dir, 'open.key');
  writeFileSync(openKey, otherKey.toString('base64'), { mode: 0o644 });
  const runs: [string[], RegExp][] = [
    [['--verify', 'some'], /--verify is sample or all/],
    [['--points', 'a,,b'], /--points/],
    [['--points', '../x'], /snapshot id/],
    [['--group', 'a b'], /group name/],
    [['--to-key-file', openKey], /chmod 600/],
    [['--to-key-file', join(dir, 'missing.key')], /cannot read key file/],
  ];
  for (const [extra, message] of runs) {
    const r = await cli(['repo', 'copy', PRIMARY, COPY, '--key-file', keyFile, ...extra]);
    expect({ extra, code: r.code }).toEqual({ extra, code: 2 });
    expect(r.stderr).toMatch(message);
  }
  const same = await cli(['repo', 'copy', PRIMARY, `${PRIMARY}/`, '--key-file', keyFile]);
  expect(same.code).toBe(2);
  const badUrl = await cli(['repo', 'copy', PRIMARY, 'http://x', '--key-file', keyFile]);
  expect(badUrl.code).toBe(2);
  expect(await keysOf('copy-second')).toEqual([]);
}, 60_000);

test('a copy killed midway resumes without uploading again the chunks the copy already has', async () => {
  const child = spawn(process.execPath, [CLI, 'repo', 'copy', PRIMARY, COPY, '--key-file', keyFile], {
    env: { ...process.env, ...env },
    stdio: 'ignore',
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  // Killed once some chunks are stored, long before all 300.
  for (;;) {
    const n = (await chunksIn('copy-second')).length;
    if (n >= 20) break;
    if (child.exitCode !== null) throw new Error(`the copy ended (${child.exitCode}) before it could be killed`);
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill('SIGKILL');
  await exited;
  // A request the server had whole when the client died may still land: let it, before counting.
  await new Promise((r) => setTimeout(r, 1000));
  const stored = (await chunksIn('copy-second')).length;
  expect(stored).toBeGreaterThanOrEqual(20);
  expect(stored).toBeLessThan(300);
  const r = await cli(['repo', 'copy', PRIMARY, COPY, '--key-file', keyFile, '--json']);
  expect(r.code).toBe(0);
  const result = JSON.parse(r.stdout);
  expect(result.resealed).toBe(false);
  expect(result.chunksUploaded).toBe(300 - stored);
  expect((await chunksIn('copy-second')).length).toBe(300);
  expect(result.points.filter((p: { status: string }) => p.status === 'copied').length).toBeGreaterThan(0);
  expect(result.points).toHaveLength(4);
  // Run again: every point is there, nothing is uploaded.
  const again = JSON.parse((await cli(['repo', 'copy', PRIMARY, COPY, '--key-file', keyFile, '--json'])).stdout);
  expect(again.points.map((p: { status: string }) => p.status)).toEqual(['present', 'present', 'present', 'present']);
  expect(again.chunksUploaded).toBe(0);
}, 120_000);

test('repo list --copy shows where each point exists', async () => {
  const r = await cli(['repo', 'list', PRIMARY, '--key-file', keyFile, '--copy', COPY, '--json']);
  expect(r.code).toBe(0);
  const listed = JSON.parse(r.stdout) as { snapshotId: string; locations: string[] }[];
  expect(listed.map((p) => [p.snapshotId, p.locations])).toEqual([
    ['gs-20261202T000000Z-d', ['primary', 'copy']],
    ['gs-20261201T000000Z-a', ['primary', 'copy']],
    ['gs-20261202T000000Z-b', ['primary', 'copy']],
    ['gs-20261203T000000Z-c', ['primary', 'copy']],
  ]);
  const text = await cli(['repo', 'list', PRIMARY, '--key-file', keyFile, '--copy', COPY]);
  expect(text.stdout).toContain('in primary+copy');
}, 60_000);

test('the copy never deletes: points pruned in the primary stay in the copy', async () => {
  const before = await keysOf('copy-second');
  // The killed copy's read lock would hold the prune off until it is stale (10 minutes): removed as if it were.
  for (const k of (await keysOf('copy-primary')).filter((k) => k.startsWith('dr/locks/')))
    await root.send(new DeleteObjectCommand({ Bucket: 'copy-primary', Key: k }));
  const pruned = await cli(['repo', 'prune', PRIMARY, '--key-file', keyFile, '--group', 'shop', '--keep-last', '1']);
  expect(pruned.code).toBe(0);
  const r = await cli(['repo', 'copy', PRIMARY, COPY, '--key-file', keyFile, '--json']);
  expect(r.code).toBe(0);
  expect(JSON.parse(r.stdout).points).toHaveLength(2); // what the primary still has: crm's and shop's last
  const after = await keysOf('copy-second');
  const kept = (k: string) => !k.startsWith('dr/locks/');
  expect(after.filter(kept)).toEqual(before.filter(kept));
  const listed = JSON.parse(
    (await cli(['repo', 'list', PRIMARY, '--key-file', keyFile, '--copy', COPY, '--group', 'shop', '--json'])).stdout,
  ) as { snapshotId: string; locations: string[] }[];
  expect(listed.map((p) => [p.snapshotId, p.locations])).toEqual([
    ['gs-20261201T000000Z-a', ['copy']],
    ['gs-20261202T000000Z-b', ['copy']],
    ['gs-20261203T000000Z-c', ['primary', 'copy']],
  ]);
}, 60_000);

test('a copy under another key reseals the chunks and reads back bit-identical', async () => {
  const r = await cli([
    'repo',
    'copy',
    COPY,
    RESEALED,
    '--key-file',
    keyFile,
    '--to-key-file',
    otherKeyFile,
    '--group',
    'shop',
    '--verify',
    'all',
    '--json',
  ]);
  expect(r.code).toBe(0);
  const result = JSON.parse(r.stdout);
  expect(result).toMatchObject({ resealed: true, verify: 'all', created: true });
  expect(result.points.map((p: { snapshotId: string }) => p.snapshotId)).toEqual([
    'gs-20261201T000000Z-a',
    'gs-20261202T000000Z-b',
    'gs-20261203T000000Z-c',
  ]);
  const source = new Set((await chunksIn('copy-second')).map((k) => k.slice(k.lastIndexOf('/') + 1)));
  const resealed = (await chunksIn('copy-third')).map((k) => k.slice(k.lastIndexOf('/') + 1));
  expect(resealed).toHaveLength(290); // shop's 150 + 100 + 40 distinct chunks
  expect(resealed.filter((id) => source.has(id))).toEqual([]);
  const repo = await Repository.open(RESEALED, otherKey);
  try {
    for (const id of ['gs-20261201T000000Z-a', 'gs-20261203T000000Z-c'])
      expect((await diskOf(repo, 'shop', id)).equals(expected(id))).toBe(true);
  } finally {
    repo.close();
  }
}, 120_000);

test('after the whole first bucket is deleted (admin credentials), every point reads back bit-identical from the copy', async () => {
  for (const k of await keysOf('copy-primary'))
    await root.send(new DeleteObjectCommand({ Bucket: 'copy-primary', Key: k }));
  await root.send(new DeleteBucketCommand({ Bucket: 'copy-primary' }));
  expect((await cli(['repo', 'list', PRIMARY, '--key-file', keyFile])).code).toBe(2);
  const verify = await cli(['repo', 'verify', COPY, '--key-file', keyFile, '--read-data', '--json']);
  expect(verify.code).toBe(0);
  expect(JSON.parse(verify.stdout).ok).toBe(true);
  const repo = await Repository.open(COPY, key);
  try {
    for (const [id, p] of Object.entries(points))
      expect((await diskOf(repo, p.group, id)).equals(expected(id))).toBe(true);
  } finally {
    repo.close();
  }
}, 120_000);

/**
 * The repository on a real S3 server (versitygw, posix backend): init/open faults, dedup, verify locating damage,
 * prune with retention and a chunk sweep that an export lock holds off.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect as netConnect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import {
  BucketNotFoundError,
  DamagedObjectError,
  PERMANENT_REPOSITORY_ERRORS,
  RepositoryExistsError,
  RepositoryInputError,
  StoreAccessDeniedError,
  TransientStoreError,
  WrongKeyError,
} from '../backup/errors';
import { RepositoryBusyError, RepositoryLock } from '../backup/locks';
import { FORMAT_VERSION, sumStats, type DiskExportStats, type DiskManifest } from '../backup/manifest';
import { pruneRepository } from '../backup/prune';
import { Repository } from '../backup/repository';
import type { S3Store } from '../backup/store';
import { verifyRepository } from '../backup/verify';
import { S3Server } from '../dev/s3-server';
import { damageRepository, expectDamageHandled } from './helpers/repo-damage';

const CHUNK = 64 * 1024;
const STATS: DiskExportStats = {
  mode: 'full',
  bytesRead: 0,
  bytesNew: 0,
  bytesUploaded: 0,
  chunksNew: 0,
  chunksData: 0,
};

let s3: S3Server;
const saved: Record<string, string | undefined> = {};
const key = randomBytes(32);

beforeAll(async () => {
  s3 = await S3Server.start();
  for (const [k, v] of Object.entries(s3.env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  await s3.createBucket('gs-test');
});

afterAll(async () => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await s3?.stop();
});

/** A point with one VM of one disk made of `chunks` (each a chunk's content, or null for zeros). */
async function writePoint(
  repo: Repository,
  group: string,
  snapshotId: string,
  createdAt: string,
  data: (Buffer | null)[],
) {
  const ids: (string | null)[] = [];
  for (const c of data) ids.push(c ? (await repo.putChunk(c)).id : null);
  const size = data.length * CHUNK;
  const disk: DiskManifest = {
    version: FORMAT_VERSION,
    group,
    snapshotId,
    domain: 'db-1',
    target: 'vda',
    sourceFormat: 'qcow2',
    sourceImage: '/img/db-1.qcow2',
    virtualSize: size,
    chunkSize: CHUNK,
    chunks: ids,
    stats: STATS,
  };
  const dk = await repo.writeDiskManifest(disk);
  const vk = await repo.writeVmManifest({
    version: FORMAT_VERSION,
    group,
    snapshotId,
    domain: 'db-1',
    host: 'hv-a',
    domainXml: '<domain/>',
    disks: [
      { target: 'vda', manifest: dk, virtualSize: size, sourceFormat: 'qcow2', sourceImage: '/img', stats: STATS },
    ],
  });
  await repo.writeGroupManifest({
    version: FORMAT_VERSION,
    group,
    snapshotId,
    snapshotCreatedAt: createdAt,
    exportedAt: new Date().toISOString(),
    vms: [{ domain: 'db-1', host: 'hv-a', manifest: vk, disks: [{ target: 'vda', virtualSize: size }] }],
    stats: sumStats([{ virtualSize: size, stats: STATS }]),
  });
  return ids;
}

test('init, open with the right key, refuse a wrong key, an existing repository, a missing bucket, bad credentials', async () => {
  const url = 's3://gs-test/faults';
  (await Repository.init(url, key, { chunkSize: CHUNK })).close();
  const repo = await Repository.open(url, key);
  expect(repo.chunkSize).toBe(CHUNK);
  repo.close();
  await expect(Repository.open(url, randomBytes(32))).rejects.toBeInstanceOf(WrongKeyError);
  await expect(Repository.init(url, key)).rejects.toBeInstanceOf(RepositoryExistsError);
  await expect(Repository.init('s3://no-such-bucket/x', key)).rejects.toBeInstanceOf(BucketNotFoundError);
  await expect(Repository.open('s3://no-such-bucket/x', key)).rejects.toBeInstanceOf(BucketNotFoundError);
  const secret = process.env.AWS_SECRET_ACCESS_KEY;
  process.env.AWS_SECRET_ACCESS_KEY = 'wrong-secret';
  try {
    await expect(Repository.open(url, key)).rejects.toBeInstanceOf(StoreAccessDeniedError);
  } finally {
    process.env.AWS_SECRET_ACCESS_KEY = secret;
  }
});

test('verify finds a flipped and a deleted chunk and names group, VM, disk and offset; list shows the outcome', async () => {
  const url = 's3://gs-test/verify';
  const repo = await Repository.init(url, key, { chunkSize: CHUNK });
  const [c0, c1, c2] = [randomBytes(CHUNK), randomBytes(CHUNK), randomBytes(CHUNK)];
  const ids = await writePoint(repo, 'shop', 'gs-20261201T100000Z-aaaaaa', '2026-12-01T10:00:00.000Z', [
    c0,
    null,
    c1,
    c2,
  ]);
  const clean = await verifyRepository(repo, { readData: true });
  expect(clean).toMatchObject({ ok: true, chunksChecked: 3, problems: [] });
  expect(clean.bytesRead).toBe(3 * CHUNK);

  // Damage the store behind the repository's back: versitygw's posix backend keeps each object as a file.
  const file = (id: string) => join(s3.dir, 'gs-test', 'verify', Repository.chunkKey(id));
  const bytes = readFileSync(file(ids[2]!));
  bytes[bytes.length - 20] ^= 0xff;
  writeFileSync(file(ids[2]!), bytes);
  const client = s3.client();
  const { DeleteObjectCommand } = await import('@aws-sdk/client-s3');
  await client.send(new DeleteObjectCommand({ Bucket: 'gs-test', Key: `verify/${Repository.chunkKey(ids[3]!)}` }));
  client.destroy();

  const quick = await verifyRepository(repo);
  expect(quick.ok).toBe(false);
  expect(quick.problems).toEqual([
    expect.objectContaining({ group: 'shop', domain: 'db-1', target: 'vda', offset: 3 * CHUNK, problem: 'missing' }),
  ]);
  const deep = await verifyRepository(repo, { readData: true });
  expect(deep.problems.map((p) => [p.group, p.snapshotId, p.domain, p.target, p.offset, p.problem])).toEqual([
    ['shop', 'gs-20261201T100000Z-aaaaaa', 'db-1', 'vda', 2 * CHUNK, 'corrupt'],
    ['shop', 'gs-20261201T100000Z-aaaaaa', 'db-1', 'vda', 3 * CHUNK, 'missing'],
  ]);
  const [listed] = await repo.listPoints();
  expect(listed.verification).toMatchObject({ ok: false, readData: true, problems: 2 });
  repo.close();
});

test('prune keeps the policy set, sweeps only unreferenced chunks, and waits for running exports', async () => {
  const url = 's3://gs-test/prune';
  const repo = await Repository.init(url, key, { chunkSize: CHUNK });
  const shared = randomBytes(CHUNK);
  const points = [];
  for (let day = 1; day <= 4; day++) {
    const id = `gs-2026120${day}T100000Z-00000${day}`;
    points.push({
      id,
      chunks: await writePoint(repo, 'shop', id, `2026-12-0${day}T10:00:00.000Z`, [shared, randomBytes(CHUNK)]),
    });
  }
  expect((await repo.loadChunkIndex()).size).toBe(5);

  // An export in progress holds prune off: it takes the exclusive lock before deleting anything, so nothing goes.
  const exportLock = await RepositoryLock.acquire(repo, 'export', 'hv-test');
  await expect(RepositoryLock.acquire(repo, 'prune')).rejects.toBeInstanceOf(RepositoryBusyError);
  const held = await pruneRepository(repo, { policy: { keepLast: 2 } });
  expect(held.groups).toEqual([]);
  expect(held.sweep).toMatchObject({
    done: false,
    reason: expect.stringMatching(/^nothing deleted: .*in use by export \(hv-test\)/),
  });
  expect(await repo.listPoints()).toHaveLength(4);
  expect((await repo.loadChunkIndex()).size).toBe(5);
  // ... and an export waits while a sweep runs.
  await exportLock.release();

  const swept = await pruneRepository(repo, { policy: { keepLast: 2 } });
  expect(swept.sweep).toEqual({ done: true, chunksBefore: 5, chunksDeleted: 2, bytesFreed: expect.any(Number) });
  const left = await repo.loadChunkIndex();
  expect([...left].sort()).toEqual(
    [shared, ...points.slice(2).map((p) => p.chunks[1]!)]
      .map((c) => (typeof c === 'string' ? c : repo.chunkId(c)))
      .sort(),
  );
  expect((await repo.listPoints()).map((p) => p.snapshotId)).toEqual([points[2].id, points[3].id]);
  expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);

  const pruneLock = await RepositoryLock.acquire(repo, 'prune');
  await expect(RepositoryLock.acquire(repo, 'export')).rejects.toThrow(/being pruned/);
  await pruneLock.release();
  repo.close();
});

test('damage on S3: a junk group manifest, a truncated disk manifest and a flipped chunk are listed, reported, not swept', async () => {
  const repo = await Repository.init('s3://gs-test/damage', key, { chunkSize: CHUNK });
  await expectDamageHandled(repo, await damageRepository(repo));
  repo.close();
});

test('locks on S3: the exclusive lock is an If-None-Match create; prune and a reader exclude each other', async () => {
  const repo = await Repository.init('s3://gs-test/locks', key, { chunkSize: CHUNK });
  expect(await repo.store.putIfAbsent!('locks/probe', Buffer.from('first'))).toBe(true);
  expect(await repo.store.putIfAbsent!('locks/probe', Buffer.from('second'))).toBe(false);
  expect((await repo.store.get('locks/probe'))!.toString()).toBe('first');
  await repo.store.delete('locks/probe');

  const [a, b] = await Promise.allSettled([
    RepositoryLock.acquire(repo, 'prune', 'pruner-a'),
    RepositoryLock.acquire(repo, 'prune', 'pruner-b'),
  ]);
  // Two prunes racing: exactly one holds the lock.
  expect([a.status, b.status].sort()).toEqual(['fulfilled', 'rejected']);
  const won = (
    a.status === 'fulfilled' ? a.value : (b as PromiseFulfilledResult<RepositoryLock>).value
  ) as RepositoryLock;
  await expect(verifyRepository(repo)).rejects.toThrow(/being pruned .*the reader waits/);
  await won.release();

  await writePoint(repo, 'shop', 'gs-20261201T100000Z-000001', '2026-12-01T10:00:00.000Z', [randomBytes(CHUNK)]);
  await writePoint(repo, 'shop', 'gs-20261202T100000Z-000002', '2026-12-02T10:00:00.000Z', [randomBytes(CHUNK)]);
  await RepositoryLock.hold(
    repo,
    'read',
    async () => {
      const r = await pruneRepository(repo, { policy: { keepLast: 1 } });
      expect(r.sweep).toMatchObject({ done: false, reason: expect.stringContaining('in use by read (restore-1)') });
      expect(await repo.listPoints()).toHaveLength(2);
    },
    { owner: 'restore-1' },
  );
  expect((await pruneRepository(repo, { policy: { keepLast: 1 } })).sweep).toMatchObject({ done: true });
  repo.close();
});

test('an oversize object is refused from its Content-Length without downloading it', async () => {
  const url = 's3://gs-test/oversize';
  (await Repository.init(url, key, { chunkSize: CHUNK })).close();
  // Count the response body bytes the client actually consumes.
  let received = 0;
  class CountingHandler extends NodeHttpHandler {
    override async handle(...args: Parameters<NodeHttpHandler['handle']>) {
      const out = await super.handle(...args);
      const body = out.response.body as Readable;
      if (body && typeof body.pipe === 'function') {
        const counted = new Transform({
          transform(piece: Buffer, _enc, done) {
            received += piece.length;
            done(null, piece);
          },
        });
        body.pipe(counted);
        counted.on('close', () => body.destroy());
        out.response.body = counted;
      }
      return out;
    }
  }
  const repo = await Repository.open(url, key, { s3: { requestHandler: new CountingHandler() } });
  const id = (await repo.putChunk(randomBytes(CHUNK))).id;
  // 300 MiB of junk at the chunk's key (written to versitygw's posix backend, as a stray writer would).
  const file = join(s3.dir, 'gs-test', 'oversize', ...Repository.chunkKey(id).split('/'));
  writeFileSync(file, Buffer.alloc(0));
  truncateSync(file, 300 * 1024 * 1024);
  received = 0;
  const err = await repo.readChunk(id).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(DamagedObjectError);
  expect((err as Error).message).toMatch(/314572800 bytes, larger than the 65570 bytes/);
  expect(received).toBeLessThan(4 * 1024 * 1024);
  repo.close();
});

test('chunks are fetched and opened on the seal threads, with the SDK signing and its errors: exact, missing, damaged, oversize, store down', async () => {
  const url = 's3://gs-test/threads';
  (await Repository.init(url, key, { chunkSize: CHUNK })).close();
  const repo = await Repository.open(url, key, { s3: { maxAttempts: 1 } });
  try {
    expect((repo.store as S3Store).threadGets).toBe(true);
    const chunks = [randomBytes(CHUNK), Buffer.alloc(CHUNK, 'groupsnap '), randomBytes(CHUNK - 1000)];
    const ids: string[] = [];
    for (const c of chunks) ids.push((await repo.putChunk(Buffer.from(c))).id);
    // Many at once, on both threads: each comes back whole and in its place.
    const back = await Promise.all([...ids, ...ids, ...ids].map((id) => repo.readChunk(id)));
    back.forEach((b, i) => expect(b.equals(chunks[i % 3])).toBe(true));

    const file = (id: string) => join(s3.dir, 'gs-test', 'threads', Repository.chunkKey(id));
    const flipped = readFileSync(file(ids[0]));
    flipped[flipped.length - 20] ^= 0xff;
    writeFileSync(file(ids[0]), flipped);
    await expect(repo.readChunk(ids[0])).rejects.toMatchObject({ name: 'DamagedObjectError', problem: 'corrupt' });
    rmSync(file(ids[1]));
    await expect(repo.readChunk(ids[1])).rejects.toMatchObject({ name: 'DamagedObjectError', problem: 'missing' });
    truncateSync(file(ids[2]), 300 * 1024 * 1024);
    const oversize = await repo.readChunk(ids[2]).catch((e: unknown) => e);
    expect(oversize).toBeInstanceOf(DamagedObjectError);
    expect((oversize as Error).message).toMatch(/314572800 bytes, larger than the 65570 bytes/);

    // The server stopped: a transient error (the SDK's retry policy saw a network error), not damage.
    const again = (await repo.putChunk(randomBytes(CHUNK))).id;
    await s3.kill();
    try {
      await expect(repo.readChunk(again)).rejects.toBeInstanceOf(TransientStoreError);
    } finally {
      await s3.resume();
    }
    expect((await repo.readChunk(again)).length).toBe(CHUNK);
  } finally {
    repo.close();
  }
});

test('a store that is down is a transient (retryable) error, a foreign endpoint in the URL is bad input', async () => {
  const saved = process.env.AWS_ENDPOINT_URL_S3;
  // A gateway answering 503 Slow Down, and one not listening at all.
  const busy = createServer((_req, res) => {
    res.writeHead(503, { 'content-type': 'application/xml' });
    res.end(
      '<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>',
    );
  });
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  try {
    for (const endpoint of [`http://127.0.0.1:${(busy.address() as AddressInfo).port}`, 'http://127.0.0.1:1']) {
      process.env.AWS_ENDPOINT_URL_S3 = endpoint;
      const err = await Repository.open('s3://gs-test/x', key, { s3: { maxAttempts: 1 } }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TransientStoreError);
      // Not among the errors an activity treats as permanent (or the CLI as bad input).
      expect(PERMANENT_REPOSITORY_ERRORS as readonly string[]).not.toContain((err as Error).name);
    }
  } finally {
    process.env.AWS_ENDPOINT_URL_S3 = saved;
    busy.close();
  }
  await expect(Repository.open(`s3://gs-test/x?endpoint=http://127.0.0.1:1`, key)).rejects.toThrow(
    /not this host's S3 endpoint/,
  );
  await expect(Repository.open(`s3://gs-test/x?endpoint=http://127.0.0.1:1`, key)).rejects.toBeInstanceOf(
    RepositoryInputError,
  );
});

test("a chunk GET's HTTP faults on the seal threads come out as the repository's errors: 403, 503, a cut or reset body, a reset before any answer", async () => {
  // A TCP proxy in front of versitygw: requests pass through (signed by the SDK, checked by the server) unless a
  // chunk GET meets the fault `mode` names.
  let mode = 'pass';
  const proxy = createNetServer((client) => {
    let head = Buffer.alloc(0);
    client.on('error', () => undefined);
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      if (head.indexOf('\r\n\r\n') < 0) return;
      client.off('data', onData);
      const chunkGet = /^GET [^ ]*\/chunks\//.test(head.toString('latin1'));
      const fault = chunkGet ? mode : 'pass';
      const xml = (status: number, code: string) => {
        const body = `<?xml version="1.0"?><Error><Code>${code}</Code><Message>injected</Message></Error>`;
        client.end(
          `HTTP/1.1 ${status} X\r\ncontent-type: application/xml\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
        );
      };
      if (fault === '403') return xml(403, 'AccessDenied');
      if (fault === '503') return xml(503, 'SlowDown');
      if (fault === 'reset-early') return client.resetAndDestroy();
      const upstream = netConnect(s3.port, '127.0.0.1');
      upstream.on('error', () => client.destroy());
      upstream.write(head);
      client.pipe(upstream);
      let sent = 0;
      upstream.on('data', (r: Buffer) => {
        if (fault === 'pass' || sent + r.length < 20_000) {
          sent += r.length;
          if (!client.write(r)) upstream.pause();
          return;
        }
        // 20 000 bytes of the answer (its head and the start of the body), then the fault.
        client.write(r.subarray(0, 20_000 - sent));
        upstream.destroy();
        if (fault === 'cut') client.end();
        else client.resetAndDestroy();
      });
      client.on('drain', () => upstream.resume());
      upstream.on('end', () => client.end());
    };
    client.on('data', onData);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const saved = process.env.AWS_ENDPOINT_URL_S3;
  process.env.AWS_ENDPOINT_URL_S3 = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  const url = 's3://gs-test/http-faults';
  let repo: Repository | undefined;
  try {
    (await Repository.init(url, key, { chunkSize: 256 * 1024 })).close();
    repo = await Repository.open(url, key, { s3: { maxAttempts: 1 } });
    expect((repo.store as S3Store).threadGets).toBe(true);
    const data = randomBytes(256 * 1024);
    const id = (await repo.putChunk(Buffer.from(data))).id;
    expect((await repo.readChunk(id)).equals(data)).toBe(true);
    const errorOf = async (m: string) => {
      mode = m;
      return repo!.readChunk(id).then(
        () => new Error('no error'),
        (e: unknown) => e as Error,
      );
    };
    const denied = await errorOf('403');
    expect(denied).toBeInstanceOf(StoreAccessDeniedError);
    expect(denied.message).toMatch(/AccessDenied/);
    const busy = await errorOf('503');
    expect(busy).toBeInstanceOf(TransientStoreError);
    expect(busy.message).toMatch(/SlowDown \(HTTP 503\)/);
    const cut = await errorOf('cut');
    expect(cut).toBeInstanceOf(TransientStoreError);
    expect(cut.message).toMatch(/S3 response for chunks\/.* ended after \d+ of \d+ bytes$/);
    const reset = await errorOf('reset');
    expect(reset).toBeInstanceOf(TransientStoreError);
    expect(reset.message).toMatch(/ended after \d+ of \d+ bytes: read ECONNRESET/);
    const early = await errorOf('reset-early');
    expect(early).toBeInstanceOf(TransientStoreError);
    expect(early.message).toMatch(/ECONNRESET/);
    // None of it is damage, and the next read, the faults gone, brings the chunk.
    for (const e of [denied, busy, cut, reset, early]) expect(e).not.toBeInstanceOf(DamagedObjectError);
    mode = 'pass';
    expect((await repo.readChunk(id)).equals(data)).toBe(true);
  } finally {
    repo?.close();
    process.env.AWS_ENDPOINT_URL_S3 = saved;
    proxy.close();
  }
});

/** `repo copy` (backup/copy.ts) and per-repository S3 settings (backup/credentials.ts) over file stores. */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { copyRepository, openCopyTarget } from '../../backup/copy';
import { readS3CredentialsFile, s3ConfigFor, s3EntryFor } from '../../backup/credentials';
import { DamagedObjectError, PointNotFoundError, RepositoryInputError, WrongKeyError } from '../../backup/errors';
import { RepositoryBusyError, RepositoryLock } from '../../backup/locks';
import type { DiskManifest } from '../../backup/manifest';
import { pruneRepository } from '../../backup/prune';
import { Repository } from '../../backup/repository';
import { FileStore, type ObjectStore, type StoredObject } from '../../backup/store';
import { writeTestPoint } from '../helpers/repo-points';

const CHUNK = 64 * 1024;
let dir: string;
let fromUrl: string;
let toUrl: string;
const key = randomBytes(32);
const otherKey = randomBytes(32);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'gs-copy-'));
  fromUrl = pathToFileURL(join(dir, 'from')).href;
  toUrl = pathToFileURL(join(dir, 'to')).href;
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A file store that counts writes and deletes, and can fail the n-th chunk write or change what it stores. */
class CountingStore implements ObjectStore {
  readonly inner: FileStore;
  chunkPuts = 0;
  deletes: string[] = [];
  failAfterChunkPuts = Infinity;
  corruptChunks = false;
  constructor(readonly url: string) {
    this.inner = new FileStore(url, new URL(url).pathname);
  }
  checkLocation = () => this.inner.checkLocation();
  get = (k: string, o?: { maxBytes?: number }) => this.inner.get(k, o);
  exists = (k: string) => this.inner.exists(k);
  putIfAbsent = (k: string, b: Buffer) => this.inner.putIfAbsent(k, b);
  list = (p: string): AsyncIterable<StoredObject> => this.inner.list(p);
  async put(k: string, body: Buffer): Promise<void> {
    if (k.startsWith('chunks/')) {
      if (this.chunkPuts >= this.failAfterChunkPuts) throw new Error('killed midway');
      this.chunkPuts++;
      if (this.corruptChunks) {
        body = Buffer.from(body);
        body[body.length - 1] ^= 1;
      }
    }
    await this.inner.put(k, body);
  }
  async delete(k: string): Promise<void> {
    this.deletes.push(k);
    await this.inner.delete(k);
  }
  close(): void {}
}

/** A source repository with two points of group `shop` sharing chunks, and one of group `crm`. */
async function source(): Promise<{ repo: Repository; data: Buffer[] }> {
  const repo = await Repository.init(fromUrl, key, { chunkSize: CHUNK });
  const data = Array.from({ length: 6 }, () => randomBytes(CHUNK));
  await writeTestPoint(repo, 'shop', 'gs-1', '2026-12-01T00:00:00Z', [data[0], data[1], null, data[2]]);
  await writeTestPoint(repo, 'shop', 'gs-2', '2026-12-02T00:00:00Z', [data[0], data[3], data[4], null]);
  await writeTestPoint(repo, 'crm', 'gs-3', '2026-12-02T00:00:00Z', [data[5]]);
  return { repo, data };
}

/** A point's disk as read back from a repository (authenticated), zeros for null chunks. */
async function diskOf(repo: Repository, group: string, snapshotId: string): Promise<Buffer> {
  const disk = await repo.readDiskManifest(group, snapshotId, 'db-1', 'vda');
  const parts: Buffer[] = [];
  for await (const c of repo.readDisk(disk)) parts.push(c.data);
  return Buffer.concat(parts);
}

function chunkFiles(root: string): string[] {
  return readdirSync(join(root, 'chunks'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => e.name);
}

describe('repo copy', () => {
  it('with the same key makes a replica: same config, same chunk ids, every point restores bit-identical', async () => {
    const { repo: src } = await source();
    const { repo: dst, created } = await openCopyTarget(src, key, toUrl, undefined);
    expect(created).toBe(true);
    expect(dst.config).toEqual(src.config);
    const r = await copyRepository(src, dst, { verify: 'all' });
    expect(r.resealed).toBe(false);
    expect(r.points.map((p) => [p.group, p.snapshotId, p.status])).toEqual([
      ['crm', 'gs-3', 'copied'],
      ['shop', 'gs-1', 'copied'],
      ['shop', 'gs-2', 'copied'],
    ]);
    expect(r.chunksUploaded).toBe(6);
    expect(r.points.find((p) => p.snapshotId === 'gs-2')!.chunksVerified).toBe(3);
    expect(chunkFiles(join(dir, 'to')).sort()).toEqual(chunkFiles(join(dir, 'from')).sort());
    for (const [g, id] of [
      ['shop', 'gs-1'],
      ['shop', 'gs-2'],
      ['crm', 'gs-3'],
    ])
      expect((await diskOf(dst, g, id)).equals(await diskOf(src, g, id))).toBe(true);
    // A second run finds every point there and writes nothing.
    const again = await copyRepository(src, dst);
    expect(again.points.every((p) => p.status === 'present')).toBe(true);
    expect(again.chunksUploaded).toBe(0);
    src.close();
    dst.close();
  });

  it('under another key reseals every chunk and rewrites the manifests with the target ids', async () => {
    const { repo: src } = await source();
    const { repo: dst } = await openCopyTarget(src, key, toUrl, otherKey);
    expect(dst.config.id).not.toBe(src.config.id);
    const r = await copyRepository(src, dst, { group: 'shop', points: ['gs-2'] });
    expect(r.resealed).toBe(true);
    expect(r.points).toHaveLength(1);
    expect(r.points[0].chunksVerified).toBe(3); // a sample, at least 4 (the point has 3)
    const srcDisk = await src.readDiskManifest('shop', 'gs-2', 'db-1', 'vda');
    const dstDisk: DiskManifest = await dst.readDiskManifest('shop', 'gs-2', 'db-1', 'vda');
    expect(dstDisk.chunks.map((c) => c === null)).toEqual(srcDisk.chunks.map((c) => c === null));
    for (const [i, c] of dstDisk.chunks.entries()) if (c !== null) expect(c).not.toBe(srcDisk.chunks[i]);
    expect(chunkFiles(join(dir, 'to')).sort()).toEqual(dstDisk.chunks.filter((c) => c !== null).sort());
    expect((await diskOf(dst, 'shop', 'gs-2')).equals(await diskOf(src, 'shop', 'gs-2'))).toBe(true);
    expect((await dst.listPoints()).map((p) => p.snapshotId)).toEqual(['gs-2']);
    await expect(Repository.open(toUrl, key)).rejects.toBeInstanceOf(WrongKeyError);
    src.close();
    dst.close();
  });

  it('resumes an interrupted copy without uploading again what the target has', async () => {
    for (const k of [undefined, otherKey]) {
      const sub = k ? 'resealed' : 'replica';
      mkdirSync(join(dir, sub));
      fromUrl = pathToFileURL(join(dir, sub, 'from')).href;
      toUrl = pathToFileURL(join(dir, sub, 'to')).href;
      const { repo: src } = await source();
      const store = new CountingStore(toUrl);
      store.failAfterChunkPuts = 3;
      const first = await openCopyTarget(src, key, toUrl, k, { store });
      await expect(copyRepository(src, first.repo, { concurrency: 1 })).rejects.toThrow('killed midway');
      expect(store.chunkPuts).toBe(3);
      // crm/gs-3 (1 chunk) completed; shop/gs-1 did not: 2 of its 3 chunks stored, not indexed, no manifest.
      expect((await first.repo.listPoints()).map((p) => p.snapshotId)).toEqual(['gs-3']);
      // The killed copy's lock is left behind (stale in 10 minutes); shared locks do not block each other.
      store.failAfterChunkPuts = Infinity;
      store.chunkPuts = 0;
      const { repo: dst } = await openCopyTarget(src, key, toUrl, k, { store });
      const r = await copyRepository(src, dst, { concurrency: 1 });
      expect(store.chunkPuts).toBe(3); // 6 chunks in all, 3 stored before the kill
      expect(r.points.map((p) => p.status)).toEqual(['present', 'copied', 'copied']);
      expect((await diskOf(dst, 'shop', 'gs-1')).equals(await diskOf(src, 'shop', 'gs-1'))).toBe(true);
      src.close();
      dst.close();
    }
  });

  it('never deletes in the target: points pruned in the source stay in the copy', async () => {
    const { repo: src } = await source();
    const store = new CountingStore(toUrl);
    const { repo: dst } = await openCopyTarget(src, key, toUrl, undefined, { store });
    await copyRepository(src, dst);
    const pruned = await pruneRepository(src, { policy: { keepLast: 1 }, group: 'shop' });
    expect(pruned.groups[0].deleted).toEqual(['gs-1']);
    expect(pruned.sweep.done && pruned.sweep.chunksDeleted).toBe(2);
    await writeTestPoint(src, 'shop', 'gs-4', '2026-12-03T00:00:00Z', [randomBytes(CHUNK)]);
    const r = await copyRepository(src, dst);
    expect(r.points.map((p) => `${p.snapshotId}:${p.status}`)).toEqual(['gs-3:present', 'gs-2:present', 'gs-4:copied']);
    expect(store.deletes.filter((k) => !k.startsWith('locks/'))).toEqual([]);
    expect((await dst.listPoints({ group: 'shop' })).map((p) => p.snapshotId)).toEqual(['gs-1', 'gs-2', 'gs-4']);
    expect((await diskOf(dst, 'shop', 'gs-1')).length).toBe(4 * CHUNK);
    src.close();
    dst.close();
  });

  it('checks what it wrote: a chunk stored wrong is found by reading it back, and the point is not written', async () => {
    const { repo: src } = await source();
    const store = new CountingStore(toUrl);
    store.corruptChunks = true;
    const { repo: dst } = await openCopyTarget(src, key, toUrl, undefined, { store });
    await expect(copyRepository(src, dst, { group: 'crm', verify: 'all' })).rejects.toBeInstanceOf(DamagedObjectError);
    expect(await dst.hasPoint('crm', 'gs-3')).toBe(false);
    src.close();
    dst.close();
  });

  it('refuses a damaged source chunk and writes no point for it', async () => {
    const { repo: src } = await source();
    const [id] = (await src.readDiskManifest('crm', 'gs-3', 'db-1', 'vda')).chunks as string[];
    writeFileSync(join(dir, 'from', 'chunks', id.slice(0, 2), id), randomBytes(100));
    // Resealed (the chunk is decrypted) and replica (its sealed bytes are checked before they are stored).
    for (const [k, sub] of [
      [otherKey, 'resealed'],
      [undefined, 'replica'],
    ] as const) {
      const url = pathToFileURL(join(dir, sub)).href;
      const { repo: dst } = await openCopyTarget(src, key, url, k);
      await expect(copyRepository(src, dst, { group: 'crm' })).rejects.toBeInstanceOf(DamagedObjectError);
      expect(await dst.listPoints()).toEqual([]);
      expect(await dst.chunkStored(id)).toBe(false);
      dst.close();
    }
    src.close();
  });

  it('refuses another chunk size, an unknown point, and waits for a prune of the target', async () => {
    const { repo: src } = await source();
    (await Repository.init(toUrl, otherKey, { chunkSize: 2 * CHUNK })).close();
    await expect(openCopyTarget(src, key, toUrl, otherKey)).rejects.toBeInstanceOf(RepositoryInputError);
    const url3 = pathToFileURL(join(dir, 'three')).href;
    const { repo: dst } = await openCopyTarget(src, key, url3, undefined);
    await expect(copyRepository(src, dst, { group: 'shop', points: ['gs-9'] })).rejects.toBeInstanceOf(
      PointNotFoundError,
    );
    const prune = await RepositoryLock.acquire(dst, 'prune');
    await expect(copyRepository(src, dst)).rejects.toBeInstanceOf(RepositoryBusyError);
    await prune.release();
    expect(await dst.listPoints()).toEqual([]);
    src.close();
    dst.close();
  });
});

describe('per-repository S3 credentials', () => {
  const entry = (id: string) => ({ accessKeyId: id, secretAccessKey: 'secret', endpoint: 'http://127.0.0.1:9000' });

  it('takes the longest URL that is the bucket or a parent prefix of the repository', () => {
    const entries = { 's3://copy': entry('bucket'), 's3://copy/shop': entry('shop'), 's3://copy/sh': entry('sh') };
    expect(s3EntryFor(entries, 's3://copy/shop/daily')?.accessKeyId).toBe('shop');
    expect(s3EntryFor(entries, 's3://copy/shopping')?.accessKeyId).toBe('bucket');
    expect(s3EntryFor(entries, 's3://copy')?.accessKeyId).toBe('bucket');
    expect(s3EntryFor(entries, 's3://other/shop')).toBeUndefined();
  });

  it('reads a 0600 file, refuses one others may read or that is invalid, and never names a secret', () => {
    const file = join(dir, 'creds.json');
    writeFileSync(file, JSON.stringify({ 's3://copy/shop': entry('AKIDCOPY') }), { mode: 0o600 });
    const config = s3ConfigFor('s3://copy/shop', file);
    expect(config).toMatchObject({ endpoint: 'http://127.0.0.1:9000', forcePathStyle: true });
    expect(s3ConfigFor('s3://primary/shop', file)).toEqual({});
    expect(s3ConfigFor('file:///x', file)).toEqual({});
    chmodSync(file, 0o644);
    expect(() => readS3CredentialsFile(file)).toThrow(/chmod 600/);
    writeFileSync(file, JSON.stringify({ 's3://copy': { accessKeyId: 'a', secretAccessKey: 'TOPSECRET', extra: 1 } }), {
      mode: 0o600,
    });
    chmodSync(file, 0o600);
    expect(() => readS3CredentialsFile(file)).toThrow(RepositoryInputError);
    try {
      readS3CredentialsFile(file);
    } catch (err) {
      expect((err as Error).message).not.toContain('TOPSECRET');
    }
  });
});

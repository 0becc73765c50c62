/** Unit tests of the repository core (backup/) on the file:// backend: format, crypto, dedup, reading disks back. */
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { configMac, deriveKeys, looksLikeText, parseKey, readKeyFile } from '../../backup/crypto';
import {
  BucketNotFoundError,
  DamagedObjectError,
  PointNotFoundError,
  RepositoryExistsError,
  RepositoryInputError,
  LockLostError,
  RepositoryNotFoundError,
  StoreAccessDeniedError,
  WrongKeyError,
} from '../../backup/errors';
import { RepositoryBusyError, RepositoryLock } from '../../backup/locks';
import { pruneRepository } from '../../backup/prune';
import { verifyRepository } from '../../backup/verify';
import { damageRepository, expectDamageHandled } from '../helpers/repo-damage';
import { writeTestPoint } from '../helpers/repo-points';
import { FORMAT_VERSION, sumStats, type DiskExportStats, type DiskManifest } from '../../backup/manifest';
import { releaseChunk, Repository } from '../../backup/repository';
import { openStore, parseRepositoryUrl, type ObjectStore } from '../../backup/store';

const CHUNK = 64 * 1024;
const STATS: DiskExportStats = {
  mode: 'full',
  bytesRead: 0,
  bytesNew: 0,
  bytesUploaded: 0,
  chunksNew: 0,
  chunksData: 0,
};

let dir: string;
let url: string;
const key = randomBytes(32);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'gs-repo-'));
  url = pathToFileURL(join(dir, 'repo')).href;
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** Every file under `root`, relative, sorted. */
function files(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name), `${rel}${e.name}/`);
      else out.push(`${rel}${e.name}`);
    }
  };
  walk(root, '');
  return out.sort();
}

/** Stores `image` as a disk of a point the way an export does, chunk by chunk. */
async function storeDisk(
  repo: Repository,
  image: Buffer,
  names: { group: string; snapshotId: string; domain: string; target: string },
): Promise<DiskManifest> {
  const chunks: (string | null)[] = [];
  for (let off = 0; off < image.length; off += repo.chunkSize) {
    const data = image.subarray(off, Math.min(off + repo.chunkSize, image.length));
    chunks.push(data.every((b) => b === 0) ? null : (await repo.putChunk(data)).id);
  }
  const m: DiskManifest = {
    version: FORMAT_VERSION,
    ...names,
    sourceFormat: 'qcow2',
    sourceImage: `/images/${names.domain}.${names.target}.qcow2`,
    virtualSize: image.length,
    chunkSize: repo.chunkSize,
    chunks,
    stats: STATS,
  };
  await repo.writeDiskManifest(m);
  return m;
}

describe('keys', () => {
  test('a key file may be 32 raw bytes, base64 (as `head -c 32 /dev/urandom | base64` prints) or hex', () => {
    let raw = randomBytes(32);
    while (looksLikeText(raw)) raw = randomBytes(32); // about once in 10^9
    const f = join(dir, 'k');
    writeFileSync(f, raw, { mode: 0o600 });
    expect(readKeyFile(f).equals(raw)).toBe(true);
    writeFileSync(f, raw.toString('base64') + '\n');
    expect(readKeyFile(f).equals(raw)).toBe(true);
    writeFileSync(f, raw.toString('hex'));
    expect(readKeyFile(f).equals(raw)).toBe(true);
  });

  test('a key file group or others may read is refused with the chmod to run; 32 bytes of text are no raw key', () => {
    const f = join(dir, 'open.key');
    writeFileSync(f, randomBytes(32).toString('base64') + '\n', { mode: 0o644 });
    chmodSync(f, 0o644); // whatever the umask
    expect(() => readKeyFile(f)).toThrow(RepositoryInputError);
    expect(() => readKeyFile(f)).toThrow(`run 'chmod 600 ${f}'`);
    chmodSync(f, 0o640);
    expect(() => readKeyFile(f)).toThrow(/accessible by group or others \(mode 0640\)/);
    chmodSync(f, 0o600);
    expect(readKeyFile(f)).toHaveLength(32);

    // A 32-character passphrase is 32 bytes: it must not be taken as a raw key.
    const phrase = join(dir, 'phrase.key');
    writeFileSync(phrase, 'correct horse battery staple 123', { mode: 0o600 });
    expect(readFileSync(phrase)).toHaveLength(32);
    expect(() => readKeyFile(phrase)).toThrow(/a passphrase is not a key/);
    expect(() => parseKey(Buffer.from('ÄÖÜäöü-pässwörd-ünïcödé!', 'utf8').subarray(0, 32))).toThrow(
      RepositoryInputError,
    );
    expect(looksLikeText(Buffer.from('correct horse battery staple 123'))).toBe(true);
    expect(looksLikeText(Buffer.from([0xff, 0xfe, 0x00, 0x41]))).toBe(false);
  });

  test('a key of the wrong length or a missing key file is bad input', () => {
    expect(() => parseKey(Buffer.from('short'))).toThrow(RepositoryInputError);
    expect(() => parseKey(randomBytes(16).toString('base64') as unknown as Buffer)).toThrow();
    expect(() => readKeyFile(join(dir, 'nope'))).toThrow(/cannot read key file/);
  });
});

describe('repository URLs', () => {
  test('s3:// and file:// parse; anything else is bad input', () => {
    expect(parseRepositoryUrl('s3://backups/dr/shop')).toMatchObject({
      kind: 's3',
      bucket: 'backups',
      prefix: 'dr/shop/',
    });
    expect(parseRepositoryUrl('s3://backups')).toMatchObject({ kind: 's3', bucket: 'backups', prefix: '' });
    expect(parseRepositoryUrl('s3://b1k/p?endpoint=http://127.0.0.1:9000')).toMatchObject({
      endpoint: 'http://127.0.0.1:9000',
    });
    expect(parseRepositoryUrl('file:///srv/backups/')).toMatchObject({ kind: 'file', path: '/srv/backups' });
    for (const bad of [
      'http://x/y',
      '/srv/backups',
      's3://UPPER/x',
      'file://otherhost/x',
      'nonsense',
      's3://0aa/%',
      'file:///%',
    ]) {
      expect(() => parseRepositoryUrl(bad)).toThrow(RepositoryInputError);
    }
  });
});

describe('init and open', () => {
  test('init writes only a plain config that holds no key; open checks the key', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    repo.close();
    expect(files(join(dir, 'repo'))).toEqual(['config']);
    const config = JSON.parse(readFileSync(join(dir, 'repo', 'config'), 'utf8'));
    expect(config).toMatchObject({
      format: 'groupsnap-repository',
      version: 2,
      chunkSize: CHUNK,
      cipher: 'aes-256-gcm',
    });
    expect(readFileSync(join(dir, 'repo', 'config'), 'utf8')).not.toContain(key.toString('hex'));
    expect(readFileSync(join(dir, 'repo', 'config'), 'utf8')).not.toContain(key.toString('base64'));

    const again = await Repository.open(url, key);
    expect(again.chunkSize).toBe(CHUNK);
    again.close();
    await expect(Repository.open(url, randomBytes(32))).rejects.toBeInstanceOf(WrongKeyError);
  });

  test('init refuses an existing repository; open of an empty place or a missing parent says so', async () => {
    (await Repository.init(url, key)).close();
    await expect(Repository.init(url, key)).rejects.toBeInstanceOf(RepositoryExistsError);
    await expect(Repository.open(pathToFileURL(join(dir, 'empty')).href, key)).rejects.toBeInstanceOf(
      RepositoryNotFoundError,
    );
    await expect(Repository.init(pathToFileURL(join(dir, 'no', 'such', 'repo')).href, key)).rejects.toBeInstanceOf(
      BucketNotFoundError,
    );
    await expect(Repository.init(url + '2', key, { chunkSize: 1000 })).rejects.toBeInstanceOf(RepositoryInputError);
  });
});

describe('chunks', () => {
  test('identical chunks are stored once; names are keyed hashes; content is encrypted', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    const data = Buffer.alloc(CHUNK, 'groupsnap-secret-pattern ');
    const a = await repo.putChunk(data);
    const b = await repo.putChunk(Buffer.from(data));
    expect(a.uploaded).toBe(true);
    expect(b).toEqual({ id: a.id, uploaded: false, storedBytes: 0 });
    // Same content in another repository (another id, so other derived keys) gets another name.
    const other = await Repository.init(pathToFileURL(join(dir, 'other')).href, key, { chunkSize: CHUNK });
    expect(other.chunkId(data)).not.toBe(a.id);
    other.close();
    const { createHash } = await import('node:crypto');
    expect(a.id).not.toBe(createHash('sha256').update(data).digest('hex'));

    const chunkFiles = files(join(dir, 'repo')).filter((f) => f.startsWith('chunks/'));
    expect(chunkFiles).toEqual([`chunks/${a.id.slice(0, 2)}/${a.id}`]);
    const stored = readFileSync(join(dir, 'repo', chunkFiles[0]));
    expect(stored.subarray(0, 4).toString()).toBe('GSN1');
    expect(stored.includes(Buffer.from('groupsnap-secret'))).toBe(false);
    expect(stored.length).toBeLessThan(CHUNK / 10); // compressed before encryption
    expect((await repo.readChunk(a.id)).equals(data)).toBe(true);

    // Random data does not compress: stored as is (plus the envelope).
    const noise = await repo.putChunk(randomBytes(CHUNK));
    expect(noise.storedBytes).toBe(CHUNK + 4 + 2 + 12 + 16);
    repo.close();
  });

  test('a flipped byte, a swapped name or a missing chunk is reported as damage of that object', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    const a = await repo.putChunk(randomBytes(CHUNK));
    const b = await repo.putChunk(randomBytes(CHUNK));
    const fa = join(dir, 'repo', Repository.chunkKey(a.id));
    const fb = join(dir, 'repo', Repository.chunkKey(b.id));
    const bytes = readFileSync(fa);
    bytes[100] ^= 0x01;
    writeFileSync(fa, bytes);
    await expect(repo.readChunk(a.id)).rejects.toThrow(DamagedObjectError);
    await expect(repo.readChunk(a.id)).rejects.toMatchObject({ problem: 'corrupt', key: Repository.chunkKey(a.id) });
    // b's bytes under a's name: authenticated with its name, so it does not open.
    writeFileSync(fa, readFileSync(fb));
    await expect(repo.readChunk(a.id)).rejects.toMatchObject({ problem: 'corrupt' });
    rmSync(fb);
    await expect(repo.readChunk(b.id)).rejects.toMatchObject({ problem: 'missing', key: Repository.chunkKey(b.id) });
    repo.close();
  });

  test('with a loaded chunk index, putChunk skips known chunks without asking the store', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    const data = randomBytes(CHUNK);
    const { id } = await repo.putChunk(data);
    const fresh = await Repository.open(url, key);
    expect([...(await fresh.loadChunkIndex())]).toEqual([id]);
    expect(await fresh.hasChunk(id)).toBe(true);
    expect((await fresh.putChunk(data)).uploaded).toBe(false);
    fresh.forgetChunk(id);
    expect((await fresh.putChunk(data)).uploaded).toBe(true);
    fresh.close();
    repo.close();
  });
});

describe('points', () => {
  test('a point exists once its group manifest is written; disks read back byte for byte, zeros as holes', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    const group = 'shop';
    const snapshotId = 'gs-20261201T100000Z-abc123';
    // 5.5 chunks: data, zeros, data, data (same as chunk 0), zeros, half a chunk of data.
    const c0 = randomBytes(CHUNK);
    const image = Buffer.concat([
      c0,
      Buffer.alloc(CHUNK),
      randomBytes(CHUNK),
      c0,
      Buffer.alloc(CHUNK),
      randomBytes(CHUNK / 2),
    ]);
    const disk = await storeDisk(repo, image, { group, snapshotId, domain: 'db 1', target: 'vda' });
    expect(disk.chunks.map((c) => (c === null ? null : 'id'))).toEqual(['id', null, 'id', 'id', null, 'id']);
    expect(disk.chunks[3]).toBe(disk.chunks[0]);
    expect(files(join(dir, 'repo')).filter((f) => f.startsWith('chunks/'))).toHaveLength(3);

    const vmKey = await repo.writeVmManifest({
      version: FORMAT_VERSION,
      group,
      snapshotId,
      domain: 'db 1',
      host: 'hv-a',
      domainXml: '<domain><name>db 1</name></domain>',
      disks: [
        {
          target: 'vda',
          manifest: repo.diskManifestKey(group, snapshotId, 'db 1', 'vda'),
          virtualSize: image.length,
          sourceFormat: 'qcow2',
          sourceImage: disk.sourceImage,
          stats: STATS,
        },
      ],
    });
    // Not yet a point.
    expect(await repo.listPoints()).toEqual([]);
    await expect(repo.readGroupManifest(group, snapshotId)).rejects.toBeInstanceOf(PointNotFoundError);

    await repo.writeGroupManifest({
      version: FORMAT_VERSION,
      group,
      snapshotId,
      label: 'nightly',
      snapshotCreatedAt: '2026-12-01T10:00:00.000Z',
      exportedAt: new Date().toISOString(),
      vms: [{ domain: 'db 1', host: 'hv-a', manifest: vmKey, disks: [{ target: 'vda', virtualSize: image.length }] }],
      stats: sumStats([{ virtualSize: image.length, stats: STATS }]),
    });
    // Names in object keys are keyed hashes: neither the group nor the VM shows in the store.
    expect(files(join(dir, 'repo')).join('\n')).not.toMatch(/shop|db 1|vda/);

    const reader = await Repository.open(url, key);
    const [point] = await reader.listPoints({ group });
    expect(point).toMatchObject({ group, snapshotId, label: 'nightly', vms: [{ domain: 'db 1', host: 'hv-a' }] });
    expect(await reader.listPoints({ group: 'other' })).toEqual([]);
    const gm = await reader.readGroupManifest(group, snapshotId);
    const vm = await reader.readManifestAt<import('../../backup/manifest').VmManifest>(gm.vms[0].manifest);
    expect(vm.domainXml).toContain('db 1');
    const dm = await reader.readManifestAt<DiskManifest>(vm.disks[0].manifest);
    expect(dm).toEqual(disk);

    const streamed: Buffer[] = [];
    for await (const part of reader.diskStream(dm)) streamed.push(part as Buffer);
    expect(Buffer.concat(streamed).equals(image)).toBe(true);

    const out = join(dir, 'disk.raw');
    const progress: number[] = [];
    await reader.writeDiskImage(dm, out, { onProgress: (done) => progress.push(done) });
    expect(readFileSync(out).equals(image)).toBe(true);
    expect(progress[progress.length - 1]).toBe(image.length);
    // Zero chunks are holes: the file uses less space than its size.
    expect(statSync(out).blocks * 512).toBeLessThan(image.length);

    // Damage names the chunk's offset in the disk when read back.
    rmSync(join(dir, 'repo', Repository.chunkKey(dm.chunks[2] as string)));
    await expect(reader.writeDiskImage(dm, out)).rejects.toMatchObject({ problem: 'missing' });

    await reader.deletePoint(group, snapshotId);
    expect(await reader.listPoints()).toEqual([]);
    expect(files(join(dir, 'repo')).filter((f) => f.startsWith('points/'))).toEqual([]);
    reader.close();
    repo.close();
  });

  test('manifests are sealed and bound to their key: moving one breaks it', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    await repo.writeSealedJson('points/x/a/note', { hello: 'secret-label' });
    const raw = readFileSync(join(dir, 'repo', 'points/x/a/note'));
    expect(raw.includes(Buffer.from('secret-label'))).toBe(false);
    await expect(repo.readSealedJson('points/x/a/note')).resolves.toEqual({ hello: 'secret-label' });
    writeFileSync(join(dir, 'repo', 'points/x/b-note'), raw);
    await expect(repo.readSealedJson('points/x/b-note')).rejects.toBeInstanceOf(DamagedObjectError);
    // Sealed under the right key and name, but not a group manifest: refused as damage, never half-used.
    await repo.writeSealedJson('points/x/a/group', { hello: 'secret-label' });
    await expect(repo.readSealedJson('points/x/a/group')).rejects.toThrow(/not a valid group object/);
    await repo.writeSealedJson('points/x/a/group', { vms: 'x'.repeat(100) });
    await expect(repo.listPoints()).resolves.toEqual([]);
    expect(() => repo.pointPrefix('shop', '../etc')).toThrow(RepositoryInputError);
    repo.close();
  });
});

describe('config', () => {
  const configFile = () => join(dir, 'repo', 'config');
  const readConfig = () => JSON.parse(readFileSync(configFile(), 'utf8')) as Record<string, unknown>;
  const writeConfig = (c: Record<string, unknown>) => writeFileSync(configFile(), JSON.stringify(c));
  const fieldsOf = (c: Record<string, unknown>) =>
    ['format', 'version', 'id', 'createdAt', 'chunkSize', 'cipher', 'compression', 'chunkHash', 'keyCheck'].map(
      (f) => c[f],
    );

  test('a changed config is refused: its mac no longer matches, and no mac at all is refused too', async () => {
    (await Repository.init(url, key, { chunkSize: CHUNK })).close();
    const good = readConfig();
    expect(good.mac).toMatch(/^[0-9a-f]{64}$/);
    writeConfig({ ...good, chunkSize: 128 * 1024 }); // in bounds, but not what was authenticated
    await expect(Repository.open(url, key)).rejects.toThrow(/config is corrupt: its authentication \(mac\)/);
    writeConfig({ ...good, createdAt: '2020-01-01T00:00:00.000Z' });
    await expect(Repository.open(url, key)).rejects.toBeInstanceOf(DamagedObjectError);
    const { mac: _mac, ...unauthenticated } = good;
    writeConfig(unauthenticated);
    await expect(Repository.open(url, key)).rejects.toThrow(/not authenticated \(no mac\)/);
    writeConfig(good);
    (await Repository.open(url, key)).close();
  });

  test('every config field is bounded, even under a valid mac (chunk sizes 0, 1, "x", 1e12)', async () => {
    (await Repository.init(url, key, { chunkSize: CHUNK })).close();
    const good = readConfig();
    const keys = deriveKeys(key, good.id as string);
    for (const chunkSize of [0, 1, 'x', 1e12, 65536.5, -65536, null]) {
      const c = { ...good, chunkSize };
      writeConfig({ ...c, mac: configMac(keys, fieldsOf(c)) });
      await expect(Repository.open(url, key)).rejects.toThrow(/config is corrupt: invalid: chunkSize/);
    }
    for (const [field, value] of [
      ['cipher', 'rot13'],
      ['createdAt', 'x'.repeat(1000)],
      ['version', 0],
    ] as const) {
      const c = { ...good, [field]: value };
      writeConfig({ ...c, mac: configMac(keys, fieldsOf(c)) });
      await expect(Repository.open(url, key)).rejects.toBeInstanceOf(DamagedObjectError);
    }
    writeFileSync(configFile(), Buffer.alloc(1024 * 1024, 0x20)); // 1 MiB of spaces: refused by its size
    await expect(Repository.open(url, key)).rejects.toThrow(/larger than the 65536 bytes/);
  });
});

describe('damaged objects, size bounds and locks (file store)', () => {
  test('junk group manifest, truncated disk manifest, flipped chunk: listed, verified, not swept', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    const damage = await damageRepository(repo);
    await expectDamageHandled(repo, damage);
    repo.close();
  });

  test('an oversize object is refused from its size, without being read into memory', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    const id = (await repo.putChunk(randomBytes(CHUNK))).id;
    const file = join(dir, 'repo', Repository.chunkKey(id));
    truncateSync(file, 300 * 1024 * 1024); // a 300 MiB (sparse) object at a chunk's key
    const before = process.memoryUsage().arrayBuffers;
    const err = await repo.readChunk(id).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DamagedObjectError);
    expect((err as Error).message).toMatch(/314572800 bytes, larger than the 65570 bytes/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 * 1024 * 1024);
    // A manifest's bound too (a group manifest is at most 16 MiB).
    const gk = repo.groupManifestKey('shop', 'gs-1');
    await repo.store.put(gk, Buffer.alloc(0));
    truncateSync(join(dir, 'repo', ...gk.split('/')), 64 * 1024 * 1024);
    await expect(repo.readGroupManifest('shop', 'gs-1')).rejects.toThrow(/larger than the \d+ bytes/);
    repo.close();
  });

  test('a deflate bomb is refused: inflate stops at the bound of its kind', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    // 4 MiB of spaces sealed as a "verified" record (bound 64 KiB): small stored, huge inflated.
    const k = repo.verificationKey('shop', 'gs-1');
    await repo.writeSealedJson(k, ' '.repeat(4 * 1024 * 1024));
    expect((await repo.store.get(k))!.length).toBeLessThan(64 * 1024);
    await expect(repo.readSealedJson(k)).rejects.toThrow(/inflates beyond 65536 bytes/);
    repo.close();
  });

  test('locks: the exclusive lock is a conditional create; a lost lock stops the writer; readers and prune exclude each other', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    // Conditional create: the store refuses a second create of the same key.
    expect(await repo.store.putIfAbsent!('locks/x', Buffer.from('a'))).toBe(true);
    expect(await repo.store.putIfAbsent!('locks/x', Buffer.from('b'))).toBe(false);
    expect((await repo.store.get('locks/x'))!.toString()).toBe('a');
    await repo.store.delete('locks/x');
    const prune = await RepositoryLock.acquire(repo, 'prune', 'pruner-1');
    await expect(RepositoryLock.acquire(repo, 'prune', 'pruner-2')).rejects.toThrow(/being pruned by pruner-1/);
    // A reader waits while a prune holds the repository (verify takes a shared lock).
    await expect(RepositoryLock.acquire(repo, 'read', 'restore-1')).rejects.toBeInstanceOf(RepositoryBusyError);
    await expect(verifyRepository(repo)).rejects.toBeInstanceOf(RepositoryBusyError);
    await prune.release();

    // ... and a prune deletes nothing while a reader holds its shared lock.
    await writeTestPoint(repo, 'shop', 'gs-20261201T100000Z-000001', '2026-12-01T10:00:00.000Z', [randomBytes(CHUNK)]);
    await writeTestPoint(repo, 'shop', 'gs-20261202T100000Z-000002', '2026-12-02T10:00:00.000Z', [randomBytes(CHUNK)]);
    const reader = await RepositoryLock.acquire(repo, 'read', 'restore-1');
    const blocked = await pruneRepository(repo, { policy: { keepLast: 1 } });
    expect(blocked.sweep).toMatchObject({
      done: false,
      reason: expect.stringMatching(/nothing deleted.*read \(restore-1\)/),
    });
    expect(blocked.groups).toEqual([]);
    expect(await repo.listPoints()).toHaveLength(2);
    // Exports share with readers.
    await (await RepositoryLock.acquire(repo, 'export', 'hv-a')).release();
    await reader.release();
    const done = await pruneRepository(repo, { policy: { keepLast: 1 } });
    expect(done.groups[0].deleted).toEqual(['gs-20261201T100000Z-000001']);
    expect(done.sweep).toMatchObject({ done: true, chunksDeleted: 1 });

    // A refresh that fails loses the lock: its signal aborts and the writer's next write is refused.
    const failing: ObjectStore = Object.create(repo.store) as ObjectStore;
    let failLocks = false;
    failing.put = async (k, body, digests) => {
      if (failLocks && k.startsWith('locks/')) throw new Error('store unreachable');
      return repo.store.put(k, body, digests);
    };
    const writer = await Repository.open(url, key, { store: failing });
    const lock = await RepositoryLock.acquire(writer, 'export', 'hv-a', { refreshMs: 50 });
    writer.useLock(lock);
    await writer.putChunk(randomBytes(CHUNK));
    failLocks = true;
    await new Promise((r) => setTimeout(r, 300));
    expect(lock.signal.aborted).toBe(true);
    expect(() => lock.assertHeld()).toThrow(LockLostError);
    await expect(writer.putChunk(randomBytes(CHUNK))).rejects.toThrow(
      /lost the repository's export lock.*refresh failed: store unreachable/,
    );
    await expect(writer.writeSealedJson('points/x/y/note', {})).rejects.toBeInstanceOf(LockLostError);
    await lock.release();
    writer.close();
    repo.close();
  });

  test('two prunes racing on a store whose conditional create checks, then writes: exactly one holds the lock', async () => {
    const repo = await Repository.init(url, key, { chunkSize: CHUNK });
    // As versitygw's posix backend: If-None-Match is a check, then a write; both racers pass the check.
    const racy: ObjectStore = Object.create(repo.store) as ObjectStore;
    racy.putIfAbsent = async (k, body) => {
      if (await repo.store.exists(k)) return false;
      await new Promise((r) => setTimeout(r, 20));
      await repo.store.put(k, body);
      return true;
    };
    const racing = await Repository.open(url, key, { store: racy });
    for (let round = 0; round < 3; round++) {
      const [a, b] = await Promise.allSettled([
        RepositoryLock.acquire(racing, 'prune', 'pruner-a'),
        RepositoryLock.acquire(racing, 'prune', 'pruner-b'),
      ]);
      expect([a.status, b.status].sort()).toEqual(['fulfilled', 'rejected']);
      const lost = (a.status === 'rejected' ? a : b) as PromiseRejectedResult;
      expect(lost.reason).toBeInstanceOf(RepositoryBusyError);
      const won = (a.status === 'fulfilled' ? a : b) as PromiseFulfilledResult<RepositoryLock>;
      // The winner's lock is the one in the store, and it is still held.
      expect(won.value.signal.aborted).toBe(false);
      await won.value.release();
      expect(await repo.store.exists('locks/prune')).toBe(false);
    }
    racing.close();
    repo.close();
  });

  test('an S3 endpoint comes only from the host: a URL naming another one is bad input', () => {
    const saved = [process.env.AWS_ENDPOINT_URL_S3, process.env.AWS_ENDPOINT_URL];
    try {
      delete process.env.AWS_ENDPOINT_URL_S3;
      delete process.env.AWS_ENDPOINT_URL;
      expect(() => openStore('s3://b1k/p?endpoint=http://169.254.169.254/')).toThrow(/not this host's S3 endpoint/);
      process.env.AWS_ENDPOINT_URL_S3 = 'http://127.0.0.1:9000';
      expect(() => openStore('s3://b1k/p?endpoint=http://evil.example:9000')).toThrow(RepositoryInputError);
      openStore('s3://b1k/p?endpoint=http://127.0.0.1:9000/').close(); // the host's own: accepted
      openStore('s3://b1k/p').close();
    } finally {
      if (saved[0] === undefined) delete process.env.AWS_ENDPOINT_URL_S3;
      else process.env.AWS_ENDPOINT_URL_S3 = saved[0];
      if (saved[1] === undefined) delete process.env.AWS_ENDPOINT_URL;
      else process.env.AWS_ENDPOINT_URL = saved[1];
    }
  });
});

test('a reader with read-only store access reads without a lock, but still not while a prune holds the repository', async () => {
  const repo = await Repository.init(url, key, { chunkSize: CHUNK });
  const readOnly: ObjectStore = Object.create(repo.store) as ObjectStore;
  readOnly.put = async (k) => {
    throw new StoreAccessDeniedError(url, `${k}: read-only credentials`);
  };
  readOnly.putIfAbsent = readOnly.put as unknown as ObjectStore['putIfAbsent'];
  const reader = await Repository.open(url, key, { store: readOnly });
  const why: string[] = [];
  await expect(
    RepositoryLock.holdForReading(reader, async () => 'read', { onUnlocked: (w) => why.push(w) }),
  ).resolves.toBe('read');
  expect(why).toEqual([expect.stringContaining('read-only credentials')]);
  const prune = await RepositoryLock.acquire(repo, 'prune', 'nightly');
  await expect(RepositoryLock.holdForReading(reader, async () => 'read')).rejects.toBeInstanceOf(RepositoryBusyError);
  await prune.release();
  reader.close();
  repo.close();
});

test("releaseChunk frees a chunk's own memory at once and leaves a slice of shared memory alone", () => {
  const chunk = Buffer.from(new ArrayBuffer(64 * 1024));
  chunk.fill(7);
  releaseChunk(chunk);
  expect(chunk.buffer.byteLength).toBe(0);
  expect(chunk.length).toBe(0);
  const shared = Buffer.alloc(64 * 1024, 7);
  const slice = shared.subarray(1024, 2048);
  releaseChunk(slice);
  releaseChunk(Buffer.from('small')); // from the 8 KiB pool
  expect(shared.buffer.byteLength).toBe(64 * 1024);
  expect(slice.every((b) => b === 7)).toBe(true);
});

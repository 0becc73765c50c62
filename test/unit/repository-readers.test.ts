/**
 * Fuzzing of every reader of repository objects (config, group/VM/disk manifests, verification and drill records,
 * sealed chunks, lock objects, key files, repository URLs) on an in-memory store: whatever bytes an object holds,
 * a reader returns a valid object or throws one of the repository's typed errors (`RepositoryError`); it never
 * crashes with another error, hangs or reads past the bound of the object's kind.
 *
 * Bounded for CI (100 runs per property); a longer run: `GROUPSNAP_FUZZ_RUNS=20000 npx jest --selectProjects unit
 * test/unit/repository-readers.test.ts`.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { parseKey } from '../../backup/crypto';
import { RepositoryError } from '../../backup/errors';
import { RepositoryLock } from '../../backup/locks';
import { FORMAT_VERSION, MAX_OBJECT_BYTES, zeroRanges, type DiskManifest } from '../../backup/manifest';
import { Repository } from '../../backup/repository';
import {
  ObjectTooLargeError,
  parseRepositoryUrl,
  type GetOptions,
  type ObjectStore,
  type StoredObject,
} from '../../backup/store';

const RUNS = Number(process.env.GROUPSNAP_FUZZ_RUNS ?? 100);
const CHUNK = 64 * 1024;
// Long runs take long: the jest timeout grows with them.
jest.setTimeout(Math.max(60_000, RUNS * 200));

/** An object store in memory that honours `maxBytes` like the real ones, and counts what `get` hands out. */
class MemoryStore implements ObjectStore {
  readonly url = 'mem://fuzz';
  readonly objects = new Map<string, { body: Buffer; at: Date }>();
  largestRead = 0;
  async checkLocation(): Promise<void> {}
  async get(key: string, opts: GetOptions = {}): Promise<Buffer | undefined> {
    const o = this.objects.get(key);
    if (!o) return undefined;
    const max = opts.maxBytes ?? Number.MAX_SAFE_INTEGER;
    if (o.body.length > max) throw new ObjectTooLargeError(key, o.body.length, max);
    this.largestRead = Math.max(this.largestRead, o.body.length);
    return Buffer.from(o.body);
  }
  async put(key: string, body: Buffer): Promise<void> {
    this.objects.set(key, { body: Buffer.from(body), at: new Date() });
  }
  async putIfAbsent(key: string, body: Buffer): Promise<boolean> {
    if (this.objects.has(key)) return false;
    await this.put(key, body);
    return true;
  }
  async exists(key: string): Promise<boolean> {
    return this.objects.has(key);
  }
  async *list(prefix: string): AsyncIterable<StoredObject> {
    for (const [key, o] of [...this.objects]) {
      if (key.startsWith(prefix)) yield { key, size: o.body.length, lastModified: o.at };
    }
  }
  async delete(key: string): Promise<void> {
    this.objects.delete(key);
  }
  close(): void {}
}

const key = randomBytes(32);
let store: MemoryStore;
let repo: Repository;
let validConfig: Buffer;
let disk: DiskManifest;
let keys: { group: string; vm: string; disk: string; verified: string; drill: string };
let chunkIds: string[];

beforeAll(async () => {
  store = new MemoryStore();
  repo = await Repository.init('mem://fuzz', key, { chunkSize: CHUNK, store });
  validConfig = (await store.get('config')) as Buffer;
  chunkIds = [];
  for (let i = 0; i < 3; i++) chunkIds.push((await repo.putChunk(randomBytes(CHUNK))).id);
  disk = {
    version: FORMAT_VERSION,
    group: 'shop',
    snapshotId: 'gs-1',
    domain: 'db-1',
    target: 'vda',
    sourceFormat: 'qcow2',
    sourceImage: '/img',
    virtualSize: 3 * CHUNK,
    chunkSize: CHUNK,
    chunks: chunkIds,
    stats: { mode: 'full', bytesRead: 0, bytesNew: 0, bytesUploaded: 0, chunksNew: 0, chunksData: 3 },
  };
  keys = {
    group: repo.groupManifestKey('shop', 'gs-1'),
    vm: repo.vmManifestKey('shop', 'gs-1', 'db-1'),
    disk: repo.diskManifestKey('shop', 'gs-1', 'db-1', 'vda'),
    verified: repo.verificationKey('shop', 'gs-1'),
    drill: `${repo.pointPrefix('shop', 'gs-1')}drill`,
  };
});
afterAll(() => repo.close());

/** Runs `read`; a throw must be a RepositoryError (anything else fails the property). */
async function onlyTypedErrors(read: () => Promise<unknown>): Promise<void> {
  try {
    await read();
  } catch (err) {
    if (!(err instanceof RepositoryError)) throw err;
  }
}

const bytes = fc.oneof(
  fc.uint8Array({ maxLength: 512 }).map((a) => Buffer.from(a)),
  // Valid-looking sealed headers followed by junk.
  fc
    .tuple(fc.constantFrom(0, 1, 2, 255), fc.uint8Array({ minLength: 0, maxLength: 300 }))
    .map(([c, rest]) => Buffer.concat([Buffer.from('GSN1', 'ascii'), Buffer.from([1, c]), Buffer.from(rest)])),
);

/** A JSON value shaped like the documents, with fields replaced by anything. */
function mutated(base: Record<string, unknown>): fc.Arbitrary<unknown> {
  return fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    fc
      .tuple(fc.constantFrom(...Object.keys(base)), fc.jsonValue({ maxDepth: 2 }))
      .map(([field, value]) => ({ ...base, [field]: value })),
    fc.constantFrom(...Object.keys(base)).map((field) => {
      const copy: Record<string, unknown> = { ...base };
      delete copy[field];
      return copy;
    }),
  );
}

describe('fuzzing repository object readers', () => {
  test('config: any bytes or any JSON open a repository or throw a RepositoryError', async () => {
    const config = JSON.parse(validConfig.toString('utf8')) as Record<string, unknown>;
    const json = mutated(config).map((doc) => Buffer.from(JSON.stringify(doc) ?? 'null'));
    await fc.assert(
      fc.asyncProperty(fc.oneof(bytes, json), async (body) => {
        const s = new MemoryStore();
        await s.put('config', body);
        await onlyTypedErrors(async () => (await Repository.open('mem://fuzz', key, { store: s })).close());
      }),
      { numRuns: RUNS },
    );
  });

  test('manifests and records of each kind: raw junk, and authentic (sealed) JSON of any shape', async () => {
    const vm = {
      version: FORMAT_VERSION,
      group: 'shop',
      snapshotId: 'gs-1',
      domain: 'db-1',
      host: 'hv-a',
      domainXml: '<domain/>',
      disks: [{ target: 'vda', manifest: keys.disk, virtualSize: 3 * CHUNK, sourceFormat: 'raw', sourceImage: '/i' }],
    };
    const group = {
      version: FORMAT_VERSION,
      group: 'shop',
      snapshotId: 'gs-1',
      snapshotCreatedAt: '2026-12-01T00:00:00Z',
      exportedAt: '2026-12-01T00:00:00Z',
      vms: [{ domain: 'db-1', host: 'hv-a', manifest: keys.vm, disks: [{ target: 'vda', virtualSize: 3 * CHUNK }] }],
      stats: { logicalBytes: 0, bytesRead: 0, bytesNew: 0, bytesUploaded: 0, chunksNew: 0, chunksData: 0 },
    };
    const verified = { version: FORMAT_VERSION, verifiedAt: 'x', readData: true, ok: true, problems: 0 };
    const drill = { drillId: 'd', status: 'pass', startedAt: 'x', toHost: 'hv-b', vms: [] };
    const kinds = [
      ['group', group],
      ['vm', vm],
      ['disk', disk],
      ['verified', verified],
      ['drill', drill],
    ] as const;
    for (const [kind, base] of kinds) {
      const objectKey = keys[kind];
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(
            bytes.map((b) => ({ raw: b })),
            mutated(base as unknown as Record<string, unknown>).map((doc) => ({ doc })),
          ),
          async (input) => {
            if ('raw' in input) await store.put(objectKey, input.raw);
            else await repo.writeSealedJson(objectKey, input.doc);
            await onlyTypedErrors(() => repo.readSealedJson(objectKey));
            // The listing and the readers built on it stay typed whatever this object is.
            await onlyTypedErrors(() => repo.listPointsReport());
            if (kind === 'disk') {
              await onlyTypedErrors(async () => {
                const m = await repo.readManifestAt<DiskManifest>(objectKey);
                for await (const c of repo.readDisk(m)) void c;
              });
            }
          },
        ),
        { numRuns: RUNS },
      );
      await store.delete(objectKey);
    }
  });

  test('sealed chunks: junk, another chunk under this name, or a cut object read as damage', async () => {
    const real = (await store.get(Repository.chunkKey(chunkIds[0]))) as Buffer;
    const other = (await store.get(Repository.chunkKey(chunkIds[1]))) as Buffer;
    const id = chunkIds[2];
    const ck = Repository.chunkKey(id);
    const saved = (await store.get(ck)) as Buffer;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          bytes,
          fc.constant(other),
          fc.nat({ max: real.length }).map((n) => real.subarray(0, n)),
          fc.tuple(fc.nat({ max: real.length - 1 }), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
            const b = Buffer.from(real);
            b[i] ^= x;
            return b;
          }),
        ),
        async (body) => {
          await store.put(ck, body);
          await onlyTypedErrors(() => repo.readChunk(id));
        },
      ),
      { numRuns: RUNS },
    );
    await store.put(ck, saved);
    await expect(repo.readChunk(id)).resolves.toHaveLength(CHUNK);
    // No reader was handed more than the largest object of any kind.
    expect(store.largestRead).toBeLessThanOrEqual(MAX_OBJECT_BYTES.drill + CHUNK);
  });

  test('lock objects: any body is still a lock, and listing or taking locks never crashes', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('locks/prune', 'locks/export-1', 'locks/read-2', 'locks/junk'),
        fc.oneof(
          bytes,
          mutated({ kind: 'export', owner: 'hv-a', token: 't' }).map((d) => Buffer.from(JSON.stringify(d) ?? '')),
        ),
        async (lockKey, body) => {
          await store.put(lockKey, body);
          const locks = await RepositoryLock.list(repo);
          expect(locks.map((l) => l.key)).toContain(lockKey);
          await onlyTypedErrors(async () => (await RepositoryLock.acquire(repo, 'read', 'fuzz')).release());
          await store.delete(lockKey);
        },
      ),
      { numRuns: RUNS },
    );
  });

  test('key files and repository URLs: a key of 32 bytes or RepositoryInputError; a location or RepositoryInputError', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 128 }).map((a) => Buffer.from(a)),
          fc.string({ maxLength: 80 }).map((s) => Buffer.from(s)),
          fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a)),
        ),
        (raw) => {
          try {
            expect(parseKey(raw)).toHaveLength(32);
          } catch (err) {
            if (!(err instanceof RepositoryError)) throw err;
          }
        },
      ),
      { numRuns: RUNS * 10 },
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.webUrl(),
          fc.string().map((s) => `s3://${s}`),
        ),
        (url) => {
          try {
            parseRepositoryUrl(url);
          } catch (err) {
            if (!(err instanceof RepositoryError)) throw err;
          }
        },
      ),
      { numRuns: RUNS * 10 },
    );
  });
});

describe('zeroRanges', () => {
  const id = (n: number) => n.toString(16).padStart(64, '0');
  it("merges a disk's chunks without data into ranges, the last one cut at the virtual size", () => {
    const m = { virtualSize: 10 * 1024 - 512, chunkSize: 1024, chunks: [null, null, id(1), null, id(2), id(3)] };
    m.chunks.push(null, null, null, null);
    expect(zeroRanges(m)).toEqual([
      { offset: 0, length: 2048 },
      { offset: 3072, length: 1024 },
      { offset: 6144, length: 10 * 1024 - 512 - 6144 },
    ]);
  });
  it('is empty for a disk whose every chunk holds data, and one range for an empty disk', () => {
    expect(zeroRanges({ virtualSize: 2048, chunkSize: 1024, chunks: [id(1), id(2)] })).toEqual([]);
    expect(zeroRanges({ virtualSize: 2048, chunkSize: 1024, chunks: [null, null] })).toEqual([
      { offset: 0, length: 2048 },
    ]);
  });
});

/**
 * A second copy of a repository's points (`groupsnap repo copy`, the group's copy target): another repository,
 * usually in another bucket with other credentials (./credentials.ts), optionally under another key.
 *
 * - Per point: its chunks first, then an index object naming them, then its disk and VM manifests, then a check of
 *   what was written, then the group manifest **last**: a point exists in the target only once it is complete and
 *   checked. A point whose group manifest the target already has is skipped.
 * - Same repository (the target's `config` is the source's: created by the copy, same id and key): chunk ids and
 *   name tags are the same, so a chunk the target has is never read from the source, and one it lacks is stored as
 *   the source holds it (its sealed bytes, checked on the way: decrypted, keyed hash). Another repository (another
 *   id, another key): every chunk is decrypted and sealed anew under the target's keys, its id is the target's
 *   keyed hash, and the manifests are rewritten with the target's chunk ids and keys.
 * - Resumable: chunks the target's index names, or that its store holds (an interrupted copy stored them before it
 *   indexed them: asked of the store), are not uploaded again.
 * - Never deletes in the target (a point pruned in the source stays in the copy until the copy's own prune).
 * - Holds a shared `read` lock on the source and a shared `export` lock on the target (./locks.ts): a prune of
 *   either waits, and a copy whose target lock is lost stops before its next write.
 * - Checks what it wrote: every manifest is read back through the target (authenticated, schema-checked) and
 *   compared with what was meant; chunks are read back and authenticated (AES-GCM, then the keyed hash of their
 *   content must be their name): a random sample (`verify: 'sample'`, the default: 1 in 16, at least 4 per point)
 *   or every chunk the point names (`verify: 'all'`).
 */
import { randomInt } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import type { S3ClientConfig } from '@aws-sdk/client-s3';
import { DamagedObjectError, PointNotFoundError, RepositoryInputError } from './errors';
import { RepositoryLock } from './locks';
import type { DiskManifest, GroupManifest, VmManifest } from './manifest';
import { KEYS, Repository, type PointSummary } from './repository';
import { openStore, type ObjectStore } from './store';

/** How many chunks of a point the copy reads back and authenticates. */
export type CopyVerify = 'sample' | 'all';

export interface CopyOptions {
  /** Only this group's points. */
  group?: string;
  /** Only these snapshot ids (each must be a point of the source). */
  points?: string[];
  /** @default 'sample' */
  verify?: CopyVerify;
  /** Chunks in flight. @default 8 */
  concurrency?: number;
  /** Called after every chunk and point. */
  onProgress?: (p: CopyProgress) => void;
  /** Lock owner (host name by default). */
  owner?: string;
  /** Stops the copy before its next chunk (a cancelled activity). */
  signal?: AbortSignal;
}

export interface CopyProgress {
  group: string;
  snapshotId: string;
  pointsDone: number;
  pointsTotal: number;
  /** Chunks of the current point handled (copied or found present) and its total. */
  chunksDone: number;
  chunksTotal: number;
  /** Over the whole copy so far. */
  chunksUploaded: number;
  bytesUploaded: number;
}

export interface CopiedPoint {
  group: string;
  snapshotId: string;
  /** `copied`: written now; `present`: the target had the point already (left as it is). */
  status: 'copied' | 'present';
  /** Distinct chunks the point names. */
  chunks: number;
  chunksUploaded: number;
  bytesUploaded: number;
  /** Chunks read back from the target and authenticated. */
  chunksVerified: number;
  /** Manifests written and read back (disks, VMs, the group). */
  manifests: number;
}

export interface CopyResult {
  from: string;
  to: string;
  /** Chunks sealed anew under the target's keys (another repository), or stored as the source's. */
  resealed: boolean;
  verify: CopyVerify;
  points: CopiedPoint[];
  chunksUploaded: number;
  bytesUploaded: number;
  durationMs: number;
}

/**
 * Opens the copy target at `url`, creating it when it does not exist: with the source's own key (`key`
 * undefined), as a replica of the source (its `config` copied: same id, same derived keys, nothing resealed); with
 * another key, as a new repository of the source's chunk size. An existing target must have the source's chunk size.
 * @throws WrongKeyError, RepositoryInputError (another chunk size), BucketNotFoundError, StoreAccessDeniedError
 */
export async function openCopyTarget(
  source: Repository,
  sourceKey: Buffer,
  url: string,
  key: Buffer | undefined,
  opts: { store?: ObjectStore; s3?: S3ClientConfig } = {},
): Promise<{ repo: Repository; created: boolean }> {
  const store = opts.store ?? openStore(url, opts.s3);
  let created = false;
  try {
    await store.checkLocation();
    if (!(await store.exists(KEYS.config))) {
      if (key === undefined) {
        const body = Buffer.from(JSON.stringify(source.config, null, 2) + '\n');
        if (store.putIfAbsent) created = await store.putIfAbsent(KEYS.config, body);
        else {
          await store.put(KEYS.config, body);
          created = true;
        }
      } else {
        const repo = await Repository.init(url, key, { chunkSize: source.chunkSize, store });
        return { repo, created: true };
      }
    }
    const repo = await Repository.open(url, key ?? sourceKey, { store });
    if (repo.chunkSize !== source.chunkSize) {
      throw new RepositoryInputError(
        `${url} has chunks of ${repo.chunkSize} bytes, ${source.url} of ${source.chunkSize}: a copy needs the same chunk size`,
      );
    }
    return { repo, created };
  } catch (err) {
    if (!opts.store) store.close();
    throw err;
  }
}

/** The source's points to copy (oldest first), checked against `opts.points`. @throws PointNotFoundError */
async function pointsToCopy(source: Repository, opts: CopyOptions): Promise<PointSummary[]> {
  const all = await source.listPoints(opts.group ? { group: opts.group } : {});
  if (!opts.points) return all;
  const wanted = new Set(opts.points);
  const found = all.filter((p) => wanted.has(p.snapshotId));
  for (const id of wanted) {
    if (!found.some((p) => p.snapshotId === id)) throw new PointNotFoundError(opts.group ?? '(any group)', id);
  }
  return found;
}

/**
 * Copies points from `source` into `target` (see the module comment), holding a shared lock on each.
 * @throws RepositoryBusyError when a prune holds either; DamagedObjectError when a source object is damaged (the
 *   point is not written); TransientStoreError, LockLostError (retry: the copy resumes)
 */
export async function copyRepository(
  source: Repository,
  target: Repository,
  opts: CopyOptions = {},
): Promise<CopyResult> {
  const lockOpts = opts.owner ? { owner: opts.owner } : {};
  return RepositoryLock.holdForReading(
    source,
    () =>
      RepositoryLock.hold(
        target,
        'export',
        async (lock) => {
          target.useLock(lock);
          try {
            return await copyLocked(source, target, opts);
          } finally {
            target.useLock(undefined);
          }
        },
        lockOpts,
      ),
    lockOpts,
  );
}

/** The state of one copy run. */
interface CopyRun {
  readonly source: Repository;
  readonly target: Repository;
  readonly opts: CopyOptions;
  readonly resealed: boolean;
  /** Source chunk id -> target chunk id (resealed: found by reading the chunk; shared chunks are read once). */
  readonly ids: Map<string, string>;
  readonly result: CopyResult;
  pointsTotal: number;
}

async function copyLocked(source: Repository, target: Repository, opts: CopyOptions): Promise<CopyResult> {
  const started = Date.now();
  const resealed = source.config.id !== target.config.id;
  const verify = opts.verify ?? 'sample';
  const points = await pointsToCopy(source, opts);
  await target.loadChunkIndex();
  // An interrupted copy may have stored chunks after its last index object: ask the store about unknown ones.
  target.askStoreForUnknownChunks();
  const run: CopyRun = {
    source,
    target,
    opts,
    resealed,
    ids: new Map(),
    pointsTotal: points.length,
    result: {
      from: source.url,
      to: target.url,
      resealed,
      verify,
      points: [],
      chunksUploaded: 0,
      bytesUploaded: 0,
      durationMs: 0,
    },
  };
  for (const p of points) {
    opts.signal?.throwIfAborted();
    run.result.points.push(await copyPoint(run, p.group, p.snapshotId));
  }
  run.result.durationMs = Date.now() - started;
  return run.result;
}

/** A point's manifests as read (and authenticated) from the source. */
interface SourcePoint {
  group: GroupManifest;
  vms: { manifest: VmManifest; disks: DiskManifest[] }[];
}

async function readSourcePoint(source: Repository, group: string, snapshotId: string): Promise<SourcePoint> {
  const g = await source.readGroupManifest(group, snapshotId);
  const vms: SourcePoint['vms'] = [];
  for (const v of g.vms) {
    const manifest = await source.readManifestAt<VmManifest>(v.manifest);
    const disks: DiskManifest[] = [];
    for (const d of manifest.disks) disks.push(await source.readManifestAt<DiskManifest>(d.manifest));
    vms.push({ manifest, disks });
  }
  return { group: g, vms };
}

async function copyPoint(run: CopyRun, group: string, snapshotId: string): Promise<CopiedPoint> {
  const { target } = run;
  const out: CopiedPoint = {
    group,
    snapshotId,
    status: 'present',
    chunks: 0,
    chunksUploaded: 0,
    bytesUploaded: 0,
    chunksVerified: 0,
    manifests: 0,
  };
  if (await target.hasPoint(group, snapshotId)) {
    progress(run, out, 0, 0);
    return out;
  }
  out.status = 'copied';
  const point = await readSourcePoint(run.source, group, snapshotId);
  const chunks = [...new Set(point.vms.flatMap((v) => v.disks.flatMap((d) => d.chunks)))].filter(
    (c): c is string => c !== null,
  );
  out.chunks = chunks.length;
  await copyChunks(run, out, chunks);
  const named = chunks.map((c) => targetId(run, c));
  // The index names what this point relies on (uploaded, or found stored by asking): before any manifest.
  await target.indexChunks(named.filter((id) => !target.isIndexed(id)));
  const written = await writeManifests(run, point);
  out.manifests = written.length + 1;
  out.chunksVerified = await verifyWritten(run, written, named);
  const groupKey = await target.writeGroupManifest(written.groupManifest);
  await checkReadBack(target, groupKey, written.groupManifest);
  progress(run, out, chunks.length, chunks.length);
  return out;
}

function targetId(run: CopyRun, sourceId: string): string {
  if (!run.resealed) return sourceId;
  const id = run.ids.get(sourceId);
  if (id === undefined) throw new Error(`chunk ${sourceId} was not copied`);
  return id;
}

/** Every chunk of the point into the target, `concurrency` at a time. */
async function copyChunks(run: CopyRun, out: CopiedPoint, chunks: string[]): Promise<void> {
  const { source, target, result, opts } = run;
  let next = 0;
  let done = 0;
  const lane = async (): Promise<void> => {
    while (next < chunks.length) {
      opts.signal?.throwIfAborted();
      const id = chunks[next++];
      // Same repository: a chunk the target has (index, or its store) is not even read from the source.
      if (!run.resealed && !(await target.hasChunk(id))) {
        // Same keys: the sealed bytes are stored as they are, once checked (decrypted, keyed hash) on the way.
        const sealed = await source.readChunkSealed(id);
        const stored = await target.putSealedChunk(id, sealed);
        if (stored > 0) {
          out.chunksUploaded++;
          out.bytesUploaded += stored;
          result.chunksUploaded++;
          result.bytesUploaded += stored;
        }
      } else if (run.resealed && !run.ids.has(id)) {
        const plain = await source.readChunk(id);
        const r = await target.putChunk(plain, undefined, { detach: true });
        if (run.resealed) run.ids.set(id, r.id);
        else if (r.id !== id)
          throw new DamagedObjectError(Repository.chunkKey(id), 'corrupt', 'copied under another id');
        if (r.uploaded) {
          out.chunksUploaded++;
          out.bytesUploaded += r.storedBytes;
          result.chunksUploaded++;
          result.bytesUploaded += r.storedBytes;
        }
      }
      progress(run, out, ++done, chunks.length);
    }
  };
  const lanes = Math.max(1, Math.min(opts.concurrency ?? 8, chunks.length));
  await Promise.all(Array.from({ length: lanes }, () => lane()));
}

function progress(run: CopyRun, p: CopiedPoint, chunksDone: number, chunksTotal: number): void {
  run.opts.onProgress?.({
    group: p.group,
    snapshotId: p.snapshotId,
    pointsDone: run.result.points.length + (chunksDone === chunksTotal ? 1 : 0),
    pointsTotal: run.pointsTotal,
    chunksDone,
    chunksTotal,
    chunksUploaded: run.result.chunksUploaded,
    bytesUploaded: run.result.bytesUploaded,
  });
}

/** What a point's copy wrote before its group manifest: each manifest with its key, and the group manifest. */
interface WrittenManifests {
  length: number;
  docs: { key: string; doc: DiskManifest | VmManifest }[];
  groupManifest: GroupManifest;
}

/** The disk manifests (chunk ids of the target), the VM manifests (keys of the target), the group manifest to write. */
async function writeManifests(run: CopyRun, point: SourcePoint): Promise<WrittenManifests> {
  const { target } = run;
  const docs: WrittenManifests['docs'] = [];
  const vmEntries: GroupManifest['vms'] = [];
  for (const v of point.vms) {
    const disks: VmManifest['disks'] = [];
    for (const [i, d] of v.disks.entries()) {
      const doc: DiskManifest = { ...d, chunks: d.chunks.map((c) => (c === null ? null : targetId(run, c))) };
      const key = await target.writeDiskManifest(doc);
      docs.push({ key, doc });
      disks.push({ ...v.manifest.disks[i], manifest: key });
    }
    const vm: VmManifest = { ...v.manifest, disks };
    const key = await target.writeVmManifest(vm);
    docs.push({ key, doc: vm });
    const entry = point.group.vms.find((e) => e.domain === v.manifest.domain)!;
    vmEntries.push({ ...entry, manifest: key });
  }
  return { length: docs.length, docs, groupManifest: { ...point.group, vms: vmEntries } };
}

/** Reads a manifest back through the target and compares it with what was written. @throws DamagedObjectError */
async function checkReadBack(target: Repository, key: string, doc: unknown): Promise<void> {
  const back = await target.readSealedJson<unknown>(key);
  if (!back) throw new DamagedObjectError(key, 'missing', 'not found when read back after the copy wrote it');
  // As stored: JSON drops undefined fields.
  if (!isDeepStrictEqual(back, JSON.parse(JSON.stringify(doc)))) {
    throw new DamagedObjectError(key, 'corrupt', 'read back after the copy wrote it, it differs from what was written');
  }
}

/** Reads back every manifest written and some or all chunks (authenticated); returns the chunks checked. */
async function verifyWritten(run: CopyRun, written: WrittenManifests, chunks: string[]): Promise<number> {
  const { target } = run;
  for (const { key, doc } of written.docs) await checkReadBack(target, key, doc);
  let sample = chunks;
  if ((run.opts.verify ?? 'sample') === 'sample') {
    const want = Math.min(chunks.length, Math.max(4, Math.ceil(chunks.length / 16)));
    const pool = [...chunks];
    for (let i = 0; i < want; i++) {
      const j = i + randomInt(pool.length - i);
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
    sample = pool.slice(0, want);
  }
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < sample.length) await target.readChunk(sample[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(8, sample.length) }, () => lane()));
  return sample.length;
}

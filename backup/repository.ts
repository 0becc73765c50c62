import { randomBytes } from 'node:crypto';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { S3ClientConfig } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import {
  chunkIdOf,
  configMac,
  deriveKeys,
  hexEqual,
  keyCheck,
  keyCheckMatches,
  nameTag,
  readKeyFile,
  seal,
  SEAL_OVERHEAD,
  SealError,
  unseal,
  type RepositoryKeys,
} from './crypto';
import {
  BucketNotFoundError,
  DamagedObjectError,
  ObjectLockedError,
  PointNotFoundError,
  RepositoryExistsError,
  RepositoryInputError,
  RepositoryNotFoundError,
  StoreAccessDeniedError,
  WrongKeyError,
} from './errors';
import {
  DiskManifestSchema,
  DrillRecordSchema,
  FORMAT_VERSION,
  GroupManifestSchema,
  MAX_CHUNK_SIZE,
  MAX_DISK_CHUNKS,
  MAX_OBJECT_BYTES,
  MIN_CHUNK_SIZE,
  OBJECT_LOCK_FORMAT_VERSION,
  RepositoryConfigSchema,
  VerificationRecordSchema,
  VmManifestSchema,
  type DiskManifest,
  type GroupManifest,
  type RepositoryConfig,
  type VerificationRecord,
  type VmManifest,
} from './manifest';
import { ChunkIdSet, sortedIdBuffer } from './chunk-id-set';
import { ChunkIdMismatchError, SealPool } from './seal-pool';
import {
  ChunkRetention,
  chunkRetainUntil,
  datedIndexBody,
  manifestRetainUntil,
  parseDatedIndexBody,
  type ObjectLockSettings,
} from './object-lock';
import { FileStore, openStore, S3Store, type LockingStore, type ObjectRetention, type ObjectStore } from './store';
import { planQcow2, wrongLength, writeSparse } from './qcow2-image';

/** What a repository writer checks before each write: the lock it holds (./locks.ts `RepositoryLock`). */
export interface HeldLock {
  /** @throws LockLostError when the lock was lost: nothing more may be written */
  assertHeld(): void;
}

/** Kinds of sealed JSON objects, each with its schema and size bound (docs/repository-format.md, "Bounds"). */
export type SealedKind = 'group' | 'vm' | 'disk' | 'verified' | 'drill';

const SCHEMAS: Record<SealedKind, z.ZodType> = {
  group: GroupManifestSchema,
  vm: VmManifestSchema,
  disk: DiskManifestSchema,
  verified: VerificationRecordSchema,
  drill: DrillRecordSchema,
};

/** The kind of a sealed object from its key (`points/<G>/<id>/group`, `.../vms/<V>`, `.../disks/<V>-<T>`, ...). */
export function sealedKindOf(key: string): SealedKind | undefined {
  if (!key.startsWith(KEYS.pointsPrefix)) return undefined;
  const rest = key.split('/').slice(3);
  if (rest.length === 1 && (rest[0] === 'group' || rest[0] === 'verified' || rest[0] === 'drill')) return rest[0];
  if (rest.length === 2 && rest[0] === 'vms') return 'vm';
  if (rest.length === 2 && rest[0] === 'disks') return 'disk';
  return undefined;
}

/** A schema's complaints, short: `path: message; ...` (at most a few). */
function issues(error: z.ZodError): string {
  const list = error.issues.slice(0, 4).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
  return list.join('; ') + (error.issues.length > 4 ? `; and ${error.issues.length - 4} more` : '');
}

/** Default chunk size: 4 MiB. */
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;

/** Object keys, relative to the repository root. */
export const KEYS = {
  config: 'config',
  chunksPrefix: 'chunks/',
  pointsPrefix: 'points/',
  locksPrefix: 'locks/',
  indexPrefix: 'index/',
} as const;

/** Chunk ids per index object written by a compaction (32 bytes each: 3.2 MB). */
const INDEX_IDS_PER_OBJECT = 100_000;
/** More index objects than this at load: the loading export compacts them into a few. */
const INDEX_COMPACT_OVER = 32;

const CHUNK_ID = /^[0-9a-f]{64}$/;

/** Snapshot ids, group names and the like end up in object keys: a conservative character set. */
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export interface OpenOptions {
  /** An object store to use instead of the one the URL names (tests: fault injection). */
  store?: ObjectStore;
  /** Extra `S3Client` settings (e.g. a custom request handler, or other credentials). */
  s3?: S3ClientConfig;
  /** The clock lock dates are computed from, ms (tests: a lock that lapses in seconds). @default Date.now */
  clock?: () => number;
}

export interface InitOptions extends OpenOptions {
  /** @default DEFAULT_CHUNK_SIZE (4 MiB) */
  chunkSize?: number;
  /**
   * Object Lock: the bucket is created with it (or must have it and versioning), and every point is locked this
   * long. Format 3; only on S3 (a directory cannot lock objects).
   */
  objectLock?: ObjectLockSettings;
}

/** One point as `listPoints` reports it. */
export interface PointSummary {
  group: string;
  snapshotId: string;
  label?: string;
  snapshotCreatedAt: string;
  exportedAt: string;
  vms: { domain: string; host: string; disks: { target: string; virtualSize: number }[] }[];
  stats: GroupManifest['stats'];
  /** Object key of the group manifest. */
  manifest: string;
  /** The last `repo verify` of this point, if any. */
  verification?: VerificationRecord;
  /** The last DR drill of this point (`groupsnap drill`, recorded beside it), if any. */
  lastDrill?: PointDrillSummary;
  /** Object Lock: the point is locked until this date (ISO 8601); absent in a repository without Object Lock. */
  retainUntil?: string;
}

/** A point whose group manifest cannot be read: listed (marked damaged) by `repo list`, skipped by the rest. */
export interface DamagedPoint {
  /** The group, when the listing was of one group (a name tag does not reveal the group's name). */
  group?: string;
  /** The group's name tag in object keys. */
  groupTag: string;
  snapshotId: string;
  /** Object key of the damaged group manifest. */
  manifest: string;
  problem: 'missing' | 'corrupt';
  detail: string;
}

/** A listing of points: the readable ones, and those whose group manifest is damaged. */
export interface PointListing {
  points: PointSummary[];
  damaged: DamagedPoint[];
}

/** What a listing shows of a point's last drill (the full record: `DrillRecord` in common/drill.ts). */
export interface PointDrillSummary {
  drillId: string;
  status: 'pass' | 'fail';
  /** When the drill started (ISO 8601). */
  startedAt: string;
  toHost: string;
  /** Restore requested -> ready signal (ms): the drill's time to ready, an RTO estimate. */
  rtoMs?: number;
  /** Restore requested -> every VM running (ms). */
  restoreMs?: number;
  /** Every VM running -> ready signal (ms). */
  readyMs?: number;
  error?: string;
}

/** Object key suffix, under a point's prefix, of its last drill's record (written by activities/drill.ts). */
export const DRILL_RECORD = 'drill';

/** One chunk of a disk as read back. */
export interface DiskChunk {
  index: number;
  offset: number;
  /** Plaintext; zeros for a zero chunk. */
  data: Buffer;
  /** The chunk id, or `null` for a zero chunk. */
  id: string | null;
}

/** Result of storing one chunk. */
export interface PutChunkResult {
  id: string;
  /** False when the repository already had it (nothing was sent). */
  uploaded: boolean;
  /** Sealed bytes sent (0 when not uploaded). */
  storedBytes: number;
}

/**
 * A groupsnap repository opened with its key. The reader API (open, list points, read manifests, read chunks,
 * stream a disk back) is what a restore needs; the writer API is what an export and prune use.
 */
export class Repository {
  /** Chunk ids known to exist (from {@link loadChunkIndex} and this instance's own uploads). */
  private known?: ChunkIdSet;
  /** Chunk ids known to exist that the index does not name (uploaded or found since it was loaded, or listed). */
  private unindexed = new Set<string>();
  /** Whether a chunk the loaded index lacks is asked of the store ({@link askStoreForUnknownChunks}). */
  private askStoreForUnknown = false;
  /** Threads for chunk hashing and sealing (started on the first chunk). */
  private pool?: SealPool;
  /** The lock writes are made under ({@link useLock}): checked before each write. */
  private lock?: HeldLock;
  /** Object Lock: what is known of chunks' retention (index objects' dates, this instance's puts and extensions). */
  private readonly retention = new ChunkRetention();
  /** The clock lock dates come from. */
  readonly now: () => number;

  private constructor(
    readonly store: ObjectStore,
    readonly config: RepositoryConfig,
    private readonly keys: RepositoryKeys,
    clock?: () => number,
  ) {
    this.now = clock ?? Date.now;
  }

  /** The repository's Object Lock settings (format 3), or `undefined` when it has none. */
  get objectLock(): ObjectLockSettings | undefined {
    return this.config.objectLock;
  }

  /** The store's Object Lock calls. @throws RepositoryInputError when the store cannot lock (never for format 3) */
  get locking(): LockingStore {
    if (!this.store.locking) throw new RepositoryInputError(`${this.url} cannot lock objects`);
    return this.store.locking;
  }

  /** A retention in the repository's mode until `until` (ms). */
  retentionUntil(until: number): ObjectRetention {
    return { mode: this.objectLock?.mode ?? 'governance', until: new Date(until) };
  }

  get url(): string {
    return this.store.url;
  }

  get chunkSize(): number {
    return this.config.chunkSize;
  }

  /**
   * Creates a repository at `url` (the bucket or the parent directory must exist) and returns it opened.
   * @throws RepositoryExistsError when one is already there; BucketNotFoundError, StoreAccessDeniedError
   */
  static async init(url: string, key: Buffer, opts: InitOptions = {}): Promise<Repository> {
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
      throw new RepositoryInputError(`chunk size must be an integer from 64 KiB to 64 MiB, not ${chunkSize}`);
    }
    const store = opts.store ?? openStore(url, opts.s3);
    try {
      if (opts.objectLock) await prepareLockedBucket(store, opts.objectLock);
      else await store.checkLocation();
      if (await store.exists(KEYS.config)) throw new RepositoryExistsError(store.url);
      const id = randomBytes(16).toString('hex');
      const keys = deriveKeys(key, id);
      const fields: Omit<RepositoryConfig, 'mac'> = {
        format: 'groupsnap-repository',
        version: opts.objectLock ? OBJECT_LOCK_FORMAT_VERSION : FORMAT_VERSION,
        id,
        createdAt: new Date().toISOString(),
        chunkSize,
        cipher: 'aes-256-gcm',
        compression: 'deflate-raw',
        chunkHash: 'hmac-sha256',
        keyCheck: keyCheck(keys),
        ...(opts.objectLock ? { objectLock: { mode: opts.objectLock.mode, days: opts.objectLock.days } } : {}),
      };
      const config: RepositoryConfig = { ...fields, mac: configMac(keys, configFields(fields)) };
      const body = Buffer.from(JSON.stringify(config, null, 2) + '\n');
      // Two inits racing: the conditional write lets exactly one create the config.
      if (store.putIfAbsent) {
        if (!(await store.putIfAbsent(KEYS.config, body))) throw new RepositoryExistsError(store.url);
      } else await store.put(KEYS.config, body);
      return new Repository(store, config, keys, opts.clock);
    } catch (err) {
      if (!opts.store) store.close();
      throw err;
    }
  }

  /**
   * Opens the repository at `url` with `key` (32 bytes; see `readKeyFile`).
   * @throws RepositoryNotFoundError, WrongKeyError, BucketNotFoundError, StoreAccessDeniedError
   */
  static async open(url: string, key: Buffer, opts: OpenOptions = {}): Promise<Repository> {
    const store = opts.store ?? openStore(url, opts.s3);
    try {
      const raw = await store.get(KEYS.config, { maxBytes: MAX_OBJECT_BYTES.config });
      if (!raw) throw new RepositoryNotFoundError(store.url);
      const config = parseConfig(raw);
      const keys = deriveKeys(key, config.id);
      // The key check first: a wrong key is told apart from a changed config.
      if (!keyCheckMatches(keys, config.keyCheck)) throw new WrongKeyError(store.url);
      if (!hexEqual(configMac(keys, configFields(config)), config.mac)) {
        throw new DamagedObjectError(KEYS.config, 'corrupt', 'its authentication (mac) does not match: it was changed');
      }
      if (config.objectLock && !store.locking) {
        throw new RepositoryInputError(`${store.url} has Object Lock, which this store cannot honour`);
      }
      return new Repository(store, config, keys, opts.clock);
    } catch (err) {
      if (!opts.store) store.close();
      throw err;
    }
  }

  /** {@link open} with a key file. */
  static async openWithKeyFile(url: string, keyFile: string, opts: OpenOptions = {}): Promise<Repository> {
    return Repository.open(url, readKeyFile(keyFile), opts);
  }

  close(): void {
    void this.pool?.close();
    this.pool = undefined;
    this.store.close();
  }

  private sealPool(): SealPool {
    return (this.pool ??= new SealPool(this.keys));
  }

  /**
   * Makes every later write (chunk, manifest, record) of this instance check `lock` first, so a writer whose lock
   * was lost stops at its next write (`LockLostError`) instead of writing on unprotected.
   */
  useLock(lock: HeldLock | undefined): void {
    this.lock = lock;
  }

  private async put(key: string, body: Buffer, digests?: { sha256?: string; crc32?: string }): Promise<void> {
    this.lock?.assertHeld();
    await this.store.put(key, body, digests);
  }

  // ---- names ----

  /** Object key prefix of every object of one point. */
  pointPrefix(group: string, snapshotId: string): string {
    checkId('group', group);
    checkId('snapshot id', snapshotId);
    return `${KEYS.pointsPrefix}${nameTag(this.keys, 'group', group)}/${snapshotId}/`;
  }

  groupManifestKey(group: string, snapshotId: string): string {
    return `${this.pointPrefix(group, snapshotId)}group`;
  }

  vmManifestKey(group: string, snapshotId: string, domain: string): string {
    return `${this.pointPrefix(group, snapshotId)}vms/${nameTag(this.keys, 'vm', domain)}`;
  }

  diskManifestKey(group: string, snapshotId: string, domain: string, target: string): string {
    return `${this.pointPrefix(group, snapshotId)}disks/${nameTag(this.keys, 'vm', domain)}-${nameTag(this.keys, 'disk', target)}`;
  }

  verificationKey(group: string, snapshotId: string): string {
    return `${this.pointPrefix(group, snapshotId)}verified`;
  }

  /** Object key of a chunk: `chunks/<first two hex digits>/<id>`. */
  static chunkKey(id: string): string {
    return `${KEYS.chunksPrefix}${id.slice(0, 2)}/${id}`;
  }

  // ---- chunks ----

  /** The chunk id (keyed hash) of some plaintext. */
  chunkId(data: Buffer): string {
    return chunkIdOf(this.keys, data);
  }

  /**
   * Loads the chunk index, so {@link putChunk} skips the chunks it names without asking: the ids in the sealed
   * objects under `index/` (a few: every export adds one, and they are compacted), never a listing of `chunks/`,
   * except in a repository nothing has indexed yet (empty, or written before the index existed), whose chunks are
   * listed once. The index may miss chunks (those are uploaded again, harmlessly) but never names a chunk the store
   * lacks: exports index only chunks they stored or saw, and prune rewrites it before it deletes chunks.
   * `onProgress` is called every few objects (a long load's sign of life). With `compact` (an export, holding the
   * repository's export lock, so no sweep runs), many index objects are rewritten as a few. Returns the ids.
   */
  async loadChunkIndex(opts: { onProgress?: () => void; compact?: boolean } = {}): Promise<ChunkIdSet> {
    const known = new ChunkIdSet();
    const read = new Set<string>();
    let listed = 0;
    const tick = () => {
      if (++listed % 1000 === 0) opts.onProgress?.();
    };
    // A compaction by another export may remove objects between the listing and their reading (their ids are then
    // in a new object): list again, a few times, until a pass finds nothing gone.
    for (let pass = 0; pass < 3; pass++) {
      let vanished = false;
      const keys: string[] = [];
      for await (const o of this.store.list(KEYS.indexPrefix)) {
        tick();
        if (!read.has(o.key)) keys.push(o.key);
      }
      for (const key of keys) {
        opts.onProgress?.();
        // A damaged index object only makes the index miss chunks (uploaded again): not a reason to fail an export.
        const ids = await this.readIndexObject(key).catch((err: unknown) => {
          if (err instanceof DamagedObjectError) return Buffer.alloc(0);
          throw err;
        });
        if (!ids) {
          vanished = true;
          continue;
        }
        read.add(key);
        known.addSorted(ids);
        const until = this.indexDates.get(key);
        if (until !== undefined) this.retention.addSorted(until, ids);
      }
      if (!vanished) break;
    }
    if (read.size === 0) {
      for await (const o of this.store.list(KEYS.chunksPrefix)) {
        tick();
        const id = o.key.slice(o.key.lastIndexOf('/') + 1);
        if (CHUNK_ID.test(id)) known.add(id);
      }
      this.unindexed = new Set(known.addedIds());
    } else {
      this.unindexed = new Set();
      // With Object Lock, hosts never delete: the index is compacted by prune (admin credentials) only.
      if (opts.compact && !this.objectLock && read.size > INDEX_COMPACT_OVER) {
        await this.replaceChunkIndex([...known], [...read]);
      }
    }
    this.known = known;
    return known;
  }

  /**
   * Every chunk the store holds, by listing `chunks/` (verify and prune need the truth, not the index; an export
   * uses {@link loadChunkIndex}). `onProgress` as there.
   */
  async listChunks(opts: { onProgress?: () => void } = {}): Promise<Set<string>> {
    const ids = new Set<string>();
    for await (const o of this.store.list(KEYS.chunksPrefix)) {
      if (ids.size % 1000 === 999) opts.onProgress?.();
      const id = o.key.slice(o.key.lastIndexOf('/') + 1);
      if (CHUNK_ID.test(id)) ids.add(id);
    }
    return ids;
  }

  /** Whether the loaded index names the chunk (false before {@link loadChunkIndex}, or when it listed the chunks). */
  isIndexed(id: string): boolean {
    return this.known !== undefined && this.known.has(id) && !this.unindexed.has(id);
  }

  /** Records a chunk found stored (asked of the store) since the index was loaded: known, not yet indexed. */
  noteStored(id: string): void {
    this.known?.add(id);
    this.unindexed.add(id);
  }

  /**
   * Adds chunks to the index (one new sealed object under `index/`): only chunks this writer stored or saw stored,
   * while no prune can sweep them (an export holds the repository's export lock).
   */
  async indexChunks(ids: Iterable<string>): Promise<void> {
    const chunks = [...new Set(ids)].filter((id) => CHUNK_ID.test(id));
    if (chunks.length === 0) return;
    await this.writeIndexObject(
      chunks,
      this.objectLock ? Math.min(...chunks.map((id) => this.retention.until(id))) : 0,
    );
    for (const id of chunks) this.unindexed.delete(id);
  }

  /**
   * Writes one index object: the ids' 32 bytes each, concatenated, sealed (not compressed: they are random); with
   * Object Lock, after the date (ms) all of them are locked until at least.
   */
  private async writeIndexObject(ids: string[], until = 0): Promise<string> {
    const key = `${KEYS.indexPrefix}${randomBytes(16).toString('hex')}`;
    const body = this.objectLock ? datedIndexBody(until, sortedIdBuffer(ids)) : sortedIdBuffer(ids);
    await this.store.put(key, await seal(this.keys, body, key, false));
    return key;
  }

  /** Dates of the dated index objects read (Object Lock), by key. */
  private readonly indexDates = new Map<string, number>();

  /** The concatenated ids of one index object, or `undefined` when it is gone. @throws DamagedObjectError */
  private async readIndexObject(key: string): Promise<Buffer | undefined> {
    const sealed = await this.store.get(key);
    if (!sealed) return undefined;
    let ids: Buffer;
    try {
      ids = await unseal(this.keys, sealed, key);
    } catch (err) {
      if (err instanceof SealError) throw new DamagedObjectError(key, 'corrupt', err.message);
      throw err;
    }
    if (this.objectLock) {
      const dated = parseDatedIndexBody(ids);
      if (!dated) throw new DamagedObjectError(key, 'corrupt', 'no date');
      this.indexDates.set(key, dated.until);
      ids = dated.ids;
    }
    if (ids.length % 32 !== 0) throw new DamagedObjectError(key, 'corrupt', 'not a whole number of chunk ids');
    return ids;
  }

  /**
   * Replaces the whole chunk index by `ids` (prune: the chunks it keeps, before it deletes the others, so a crash
   * in between leaves an index that misses chunks, never one that names deleted chunks). Call with the
   * repository's exclusive lock held.
   */
  async rewriteChunkIndex(ids: Iterable<string>): Promise<void> {
    const old: string[] = [];
    for await (const o of this.store.list(KEYS.indexPrefix)) old.push(o.key);
    await this.replaceChunkIndex([...new Set(ids)], old);
  }

  /** Writes `ids` as new index objects, then removes the `old` ones (never those written meanwhile by others). */
  private async replaceChunkIndex(ids: string[], old: string[]): Promise<void> {
    const mine = new Set<string>();
    // With Object Lock, ids are grouped by their known lock date (one day's precision), so the rewrite keeps it.
    const byDate = new Map<number, string[]>();
    for (const id of ids) {
      const until = this.objectLock ? Math.floor(this.retention.until(id) / 86400_000) * 86400_000 : 0;
      byDate.set(until, [...(byDate.get(until) ?? []), id]);
    }
    for (const [until, group] of byDate) {
      for (let i = 0; i < group.length; i += INDEX_IDS_PER_OBJECT) {
        mine.add(await this.writeIndexObject(group.slice(i, i + INDEX_IDS_PER_OBJECT), until));
      }
    }
    for (const key of old) if (!mine.has(key)) await this.purge(key);
    const now = new Set(ids);
    this.unindexed = new Set([...this.unindexed].filter((id) => !now.has(id)));
  }

  /** Whether the store holds the chunk, asked of the store itself (not the loaded index). */
  async chunkStored(id: string): Promise<boolean> {
    return this.store.exists(Repository.chunkKey(id));
  }

  /** Whether the chunk exists (from the loaded index when there is one, else by asking the store). */
  async hasChunk(id: string): Promise<boolean> {
    if (this.known?.has(id)) return true;
    if (this.known && !this.askStoreForUnknown) return false;
    const stored = await this.store.exists(Repository.chunkKey(id));
    if (stored && this.known) {
      // Stored by an interrupted attempt after its last checkpoint, never indexed: index it with this export's.
      this.known.add(id);
      this.unindexed.add(id);
    }
    return stored;
  }

  /**
   * From now on a chunk the loaded index lacks is asked of the store before it is uploaded: a resumed export, whose
   * interrupted attempt may have stored chunks after its last checkpoint and before it indexed them, uploads none
   * of them again. Costs one existence check per new chunk, so only resumed exports turn it on.
   */
  askStoreForUnknownChunks(): void {
    this.askStoreForUnknown = true;
  }

  /** Forgets a chunk in the loaded index (after it was found missing or deleted). */
  forgetChunk(id: string): void {
    this.known?.delete(id);
    this.unindexed.delete(id);
  }

  /**
   * Stores a chunk unless the repository has it: compressed, encrypted, named by its keyed hash.
   * `knownId` saves hashing again when the caller already did. Without it, the hashing, sealing and the digests of
   * the request body run on the repository's worker threads (./seal-pool.ts); `detach` lets `data`'s memory move
   * there instead of being copied (the caller must not use `data` afterwards).
   */
  async putChunk(data: Buffer, knownId?: string, opts: { detach?: boolean } = {}): Promise<PutChunkResult> {
    if (knownId === undefined) {
      let present = false;
      const { id, sealed } = await this.sealPool().hashAndSeal(
        data,
        async (id) => {
          present = await this.hasChunk(id);
          return !present;
        },
        opts,
      );
      if (present || !sealed) return { id, uploaded: false, storedBytes: 0 };
      const digests = { sha256: sealed.sha256, crc32: sealed.crc32 };
      if (!(await this.putChunkObject(id, sealed.sealed, digests))) return { id, uploaded: false, storedBytes: 0 };
      this.known?.add(id);
      this.unindexed.add(id);
      return { id, uploaded: true, storedBytes: sealed.sealed.length };
    }
    const id = knownId;
    if (await this.hasChunk(id)) return { id, uploaded: false, storedBytes: 0 };
    const sealed = await seal(this.keys, data, id);
    if (!(await this.putChunkObject(id, sealed))) return { id, uploaded: false, storedBytes: 0 };
    this.known?.add(id);
    this.unindexed.add(id);
    return { id, uploaded: true, storedBytes: sealed.length };
  }

  /**
   * Stores a sealed chunk: with Object Lock, write-once (`If-None-Match: *`) and locked (false, nothing written, when
   * the store has it already: it is then known stored, its lock unknown until {@link ensureRetention}).
   */
  private async putChunkObject(id: string, sealed: Buffer, digests?: { sha256?: string; crc32?: string }) {
    const key = Repository.chunkKey(id);
    if (!this.objectLock) {
      await this.put(key, sealed, digests);
      return true;
    }
    this.lock?.assertHeld();
    const until = chunkRetainUntil(this.objectLock, this.now());
    if (await this.locking.putLocked(key, sealed, this.retentionUntil(until), digests)) {
      this.retention.note(id, until);
      return true;
    }
    this.known?.add(id);
    this.unindexed.add(id);
    return false;
  }

  /**
   * Object Lock: makes every chunk of `ids` locked until at least `needed` (ms): those whose known lock (chunk
   * index, this instance's puts) ends earlier are extended (PutObjectRetention, 16 at a time) to a chunk's full lock
   * from now, so the next exports find them long enough. Returns the ids extended (to index with their new date).
   * Nothing to do without Object Lock.
   */
  async ensureRetention(ids: Iterable<string | null>, needed: number, onBatch?: () => void): Promise<string[]> {
    const settings = this.objectLock;
    if (!settings) return [];
    const short = [...new Set(ids)].filter((id): id is string => id !== null && this.retention.until(id) < needed);
    const until = Math.max(chunkRetainUntil(settings, this.now()), needed);
    for (let i = 0; i < short.length; i += 16) {
      this.lock?.assertHeld();
      await Promise.all(short.slice(i, i + 16).map((id) => this.extendChunk(id, until, needed)));
      onBatch?.();
    }
    return short;
  }

  private async extendChunk(id: string, until: number, needed: number): Promise<void> {
    const key = Repository.chunkKey(id);
    try {
      await this.locking.setRetention(key, this.retentionUntil(until));
      this.retention.note(id, until);
    } catch (err) {
      // Refused: its lock may already be longer (a shorter date is refused in compliance mode). Ask it.
      if (!(err instanceof ObjectLockedError || err instanceof StoreAccessDeniedError)) throw err;
      const held = await this.locking.retention(key);
      if (!held || held.until.getTime() < needed) throw err;
      this.retention.note(id, held.until.getTime());
    }
  }

  /** The latest date a chunk is known locked until (ms; 0 unknown). */
  chunkRetainedUntil(id: string): number {
    return this.retention.until(id);
  }

  /** Removes an object for good: every version of it with Object Lock (a plain delete only hides it there). */
  async purge(key: string): Promise<void> {
    if (!this.objectLock) {
      await this.store.delete(key);
      return;
    }
    for await (const v of this.locking.listVersions(key)) {
      if (v.key === key) await this.locking.deleteVersion(key, v.versionId);
    }
  }

  /**
   * Reads, decrypts and checks one chunk on the repository's worker threads (on S3 the GET too: ./seal-pool.ts).
   * @throws DamagedObjectError when it is missing, does not decrypt, or its content does not match its name
   */
  async readChunk(id: string): Promise<Buffer> {
    const key = Repository.chunkKey(id);
    // The built-in stores return a fresh buffer per get, which can move to the worker; another store (a test's)
    // may hand out what it keeps, so that is copied.
    const own = this.store instanceof S3Store || this.store instanceof FileStore;
    if (!/^[0-9a-f]{64}$/.test(id)) throw new DamagedObjectError(key, 'corrupt', 'not a chunk id');
    const pool = this.sealPool();
    // No chunk is larger than the chunk size sealed uncompressed: anything bigger is refused unread.
    const maxSealed = this.config.chunkSize + SEAL_OVERHEAD;
    for (let attempt = 1; ; attempt++) {
      try {
        let plain: Buffer | undefined;
        const store = this.store;
        if (store instanceof S3Store && store.threadGets) {
          // The GET is sent from the thread that opens it: HTTP parsing and body buffers stay off this thread.
          plain = await store.getOnThread(key, maxSealed, (req) =>
            pool.getAndOpen(req, key, id, maxSealed, this.config.chunkSize),
          );
        } else {
          const sealed = await this.store.get(key, { maxBytes: maxSealed });
          if (sealed) plain = await pool.open(own ? sealed : Buffer.from(sealed), id, this.config.chunkSize);
        }
        if (!plain) throw new DamagedObjectError(key, 'missing');
        return plain;
      } catch (err) {
        const damage =
          err instanceof SealError
            ? err.message
            : err instanceof ChunkIdMismatchError
              ? 'content does not match its id'
              : undefined;
        if (damage === undefined) throw err;
        // Read once more before calling it damage at rest (the S3 store does not check chunk reads' CRC32).
        if (attempt < 2) continue;
        throw new DamagedObjectError(key, 'corrupt', damage);
      }
    }
  }

  /**
   * A chunk's stored (sealed) bytes, checked as {@link readChunk} checks them (decrypted and its keyed hash compared
   * with its id, on the worker threads): a copy into a repository of the same keys (a replica) stores them as
   * they are instead of sealing the content again.
   * @throws DamagedObjectError when it is missing, does not decrypt, or its content does not match its name
   */
  async readChunkSealed(id: string): Promise<Buffer> {
    const key = Repository.chunkKey(id);
    if (!CHUNK_ID.test(id)) throw new DamagedObjectError(key, 'corrupt', 'not a chunk id');
    for (let attempt = 1; ; attempt++) {
      const sealed = await this.store.get(key, { maxBytes: this.config.chunkSize + SEAL_OVERHEAD });
      if (!sealed) throw new DamagedObjectError(key, 'missing');
      try {
        await this.sealPool().open(Buffer.from(sealed), id, this.config.chunkSize);
        return sealed;
      } catch (err) {
        if (!(err instanceof SealError || err instanceof ChunkIdMismatchError)) throw err;
        if (attempt < 2) continue;
        throw new DamagedObjectError(
          key,
          'corrupt',
          err instanceof SealError ? err.message : 'content does not match its id',
        );
      }
    }
  }

  /**
   * Stores a chunk's sealed bytes as another repository of the same keys holds them (a replica's copy, checked by
   * {@link readChunkSealed}), unless this one has the chunk. Returns the bytes stored (0: it had it).
   */
  async putSealedChunk(id: string, sealed: Buffer): Promise<number> {
    if (await this.hasChunk(id)) return 0;
    if (!(await this.putChunkObject(id, sealed))) return 0;
    this.known?.add(id);
    this.unindexed.add(id);
    return sealed.length;
  }

  // ---- manifests ----

  /**
   * Seals and writes a JSON document at `key` (the key is authenticated with it). With Object Lock, manifests are
   * write-once and locked until `retainUntil` (ms; default now + the lock period): when the key exists (an
   * export's retry), the stored manifest stands if it is a valid one, else the write fails as damage.
   */
  async writeSealedJson(key: string, doc: unknown, retainUntil?: number): Promise<void> {
    const body = await seal(this.keys, Buffer.from(JSON.stringify(doc)), key);
    const kind = sealedKindOf(key);
    if (!this.objectLock || (kind !== 'group' && kind !== 'vm' && kind !== 'disk')) {
      await this.put(key, body);
      return;
    }
    this.lock?.assertHeld();
    // A date already past (a copied manifest's) would be refused by the store: locked from now instead.
    const now = this.now();
    const until =
      retainUntil !== undefined && retainUntil > now ? retainUntil : manifestRetainUntil(this.objectLock, now);
    if (await this.locking.putLocked(key, body, this.retentionUntil(until))) return;
    // Written before (a retried activity): the first write stands, as long as it is an authentic manifest.
    await this.readSealedJson(key);
  }

  /**
   * Reads a sealed JSON document, or `undefined` when absent. Its kind (from its key: group, VM or disk manifest,
   * verification or drill record) bounds its size before it is read and after it is inflated, and its schema
   * checks what it holds.
   * @throws DamagedObjectError when it is too large, does not open or is not a valid object of its kind
   */
  async readSealedJson<T>(key: string): Promise<T | undefined> {
    const kind = sealedKindOf(key);
    const max = kind ? MAX_OBJECT_BYTES[kind] : MAX_OBJECT_BYTES.group;
    const sealed = await this.store.get(key, { maxBytes: max + SEAL_OVERHEAD });
    if (!sealed) return undefined;
    let doc: unknown;
    try {
      doc = JSON.parse((await unseal(this.keys, sealed, key, max)).toString('utf8'));
    } catch (err) {
      if (err instanceof SealError || err instanceof SyntaxError) {
        throw new DamagedObjectError(key, 'corrupt', err.message);
      }
      throw err;
    }
    if (!kind) return doc as T;
    const parsed = SCHEMAS[kind].safeParse(doc);
    if (!parsed.success)
      throw new DamagedObjectError(key, 'corrupt', `not a valid ${kind} object: ${issues(parsed.error)}`);
    return parsed.data as T;
  }

  /** Writes a disk's manifest; returns its key. */
  async writeDiskManifest(m: DiskManifest): Promise<string> {
    if (m.chunks.length > MAX_DISK_CHUNKS) {
      throw new RepositoryInputError(
        `disk ${m.target} of ${m.domain} has ${m.chunks.length} chunks, more than a manifest may name (${MAX_DISK_CHUNKS}): use larger chunks`,
      );
    }
    const key = this.diskManifestKey(m.group, m.snapshotId, m.domain, m.target);
    await this.writeSealedJson(key, m);
    return key;
  }

  /** Writes a VM's manifest (after its disks'); returns its key. */
  async writeVmManifest(m: VmManifest): Promise<string> {
    const key = this.vmManifestKey(m.group, m.snapshotId, m.domain);
    await this.writeSealedJson(key, m);
    return key;
  }

  /**
   * Writes the group manifest, which makes the point exist: call it last, after every VM and disk manifest and
   * every chunk they name is stored. Writing it twice with the same content is harmless.
   */
  async writeGroupManifest(m: GroupManifest): Promise<string> {
    const key = this.groupManifestKey(m.group, m.snapshotId);
    const lock = this.pointRetainUntil();
    if (lock !== undefined && !m.retainUntil) m = { ...m, retainUntil: new Date(lock).toISOString() };
    await this.writeSealedJson(key, m, m.retainUntil ? Date.parse(m.retainUntil) : undefined);
    return key;
  }

  /** Object Lock: the date (ms) a point whose group manifest is written now is locked until; else `undefined`. */
  pointRetainUntil(): number | undefined {
    return this.objectLock ? manifestRetainUntil(this.objectLock, this.now()) : undefined;
  }

  async readGroupManifest(group: string, snapshotId: string): Promise<GroupManifest> {
    const m = await this.readSealedJson<GroupManifest>(this.groupManifestKey(group, snapshotId));
    if (!m) throw new PointNotFoundError(group, snapshotId);
    return m;
  }

  /** A manifest named by a group or VM manifest. @throws DamagedObjectError when missing or damaged */
  async readManifestAt<T extends VmManifest | DiskManifest>(key: string): Promise<T> {
    const m = await this.readSealedJson<T>(key);
    if (!m) throw new DamagedObjectError(key, 'missing');
    return m;
  }

  async readVmManifest(group: string, snapshotId: string, domain: string): Promise<VmManifest> {
    return this.readManifestAt<VmManifest>(this.vmManifestKey(group, snapshotId, domain));
  }

  async readDiskManifest(group: string, snapshotId: string, domain: string, target: string): Promise<DiskManifest> {
    return this.readManifestAt<DiskManifest>(this.diskManifestKey(group, snapshotId, domain, target));
  }

  /** Whether a point exists (its group manifest does). */
  async hasPoint(group: string, snapshotId: string): Promise<boolean> {
    return this.store.exists(this.groupManifestKey(group, snapshotId));
  }

  async writeVerification(group: string, snapshotId: string, rec: VerificationRecord): Promise<void> {
    await this.writeSealedJson(this.verificationKey(group, snapshotId), rec);
  }

  /**
   * Every point (group manifest) in the repository, or of one group; sorted by group, then snapshot time.
   * Objects of points without a group manifest (an export in progress or interrupted) are not points. A point
   * whose group manifest cannot be read is left out ({@link listPointsReport} names it).
   */
  async listPoints(opts: { group?: string } = {}): Promise<PointSummary[]> {
    return (await this.listPointsReport(opts)).points;
  }

  /**
   * {@link listPoints}, and the points whose group manifest is damaged (too large, does not open, not a valid
   * manifest), each with what is wrong: one damaged object never hides the others. A damaged verification or
   * drill record only leaves that record out.
   */
  async listPointsReport(opts: { group?: string } = {}): Promise<PointListing> {
    const prefix = opts.group
      ? `${KEYS.pointsPrefix}${nameTag(this.keys, 'group', checkId('group', opts.group))}/`
      : KEYS.pointsPrefix;
    const groups: string[] = [];
    const verified = new Set<string>();
    const drilled = new Set<string>();
    for await (const o of this.store.list(prefix)) {
      if (o.key.split('/').length !== 4) continue;
      if (o.key.endsWith('/group')) groups.push(o.key);
      else if (o.key.endsWith('/verified')) verified.add(o.key.slice(0, -'verified'.length));
      else if (o.key.endsWith(`/${DRILL_RECORD}`)) drilled.add(o.key.slice(0, -DRILL_RECORD.length));
    }
    const points: PointSummary[] = [];
    const damaged: DamagedPoint[] = [];
    const optional = <T>(p: Promise<T | undefined>): Promise<T | undefined> =>
      p.catch((err: unknown) => {
        if (err instanceof DamagedObjectError) return undefined;
        throw err;
      });
    for (const key of groups) {
      const [, groupTag, snapshotId] = key.split('/');
      let m: GroupManifest | undefined;
      try {
        m = await this.readSealedJson<GroupManifest>(key);
      } catch (err) {
        if (!(err instanceof DamagedObjectError)) throw err;
        damaged.push({
          ...(opts.group ? { group: opts.group } : {}),
          groupTag,
          snapshotId,
          manifest: key,
          problem: err.problem,
          detail: err.message,
        });
        continue;
      }
      if (!m) continue; // deleted since the listing
      const base = key.slice(0, -'group'.length);
      const verification = verified.has(base)
        ? await optional(this.readSealedJson<VerificationRecord>(`${base}verified`))
        : undefined;
      const drill = drilled.has(base)
        ? await optional(this.readSealedJson<PointDrillSummary>(`${base}${DRILL_RECORD}`))
        : undefined;
      points.push({
        group: m.group,
        snapshotId: m.snapshotId,
        ...(m.label !== undefined ? { label: m.label } : {}),
        snapshotCreatedAt: m.snapshotCreatedAt,
        exportedAt: m.exportedAt,
        vms: m.vms.map((v) => ({ domain: v.domain, host: v.host, disks: v.disks })),
        stats: m.stats,
        manifest: key,
        ...(verification ? { verification } : {}),
        ...(drill ? { lastDrill: drillSummary(drill) } : {}),
        ...(m.retainUntil ? { retainUntil: m.retainUntil } : {}),
      });
    }
    points.sort(
      (a, b) =>
        a.group.localeCompare(b.group) ||
        a.snapshotCreatedAt.localeCompare(b.snapshotCreatedAt) ||
        a.snapshotId.localeCompare(b.snapshotId),
    );
    damaged.sort((a, b) => a.groupTag.localeCompare(b.groupTag) || a.snapshotId.localeCompare(b.snapshotId));
    return { points, damaged };
  }

  /**
   * Deletes a point: its group manifest first (the point stops existing), then its other manifests. Chunks stay
   * until a sweep finds them unreferenced.
   */
  async deletePoint(group: string, snapshotId: string): Promise<void> {
    const prefix = this.pointPrefix(group, snapshotId);
    this.lock?.assertHeld();
    await this.purge(`${prefix}group`);
    if (this.objectLock) {
      for await (const v of this.locking.listVersions(prefix)) {
        this.lock?.assertHeld();
        await this.locking.deleteVersion(v.key, v.versionId);
      }
      return;
    }
    for await (const o of this.store.list(prefix)) {
      this.lock?.assertHeld();
      await this.store.delete(o.key);
    }
  }

  // ---- reading a disk back ----

  /**
   * The chunks of a disk in order, read `concurrency` at a time ahead of the consumer; zero chunks are yielded as
   * zero buffers without reading anything.
   * @throws DamagedObjectError on the first missing or damaged chunk
   */
  async *readDisk(m: DiskManifest, opts: { concurrency?: number } = {}): AsyncGenerator<DiskChunk> {
    const concurrency = Math.max(1, opts.concurrency ?? 4);
    const inFlight: Promise<DiskChunk>[] = [];
    const fetch = (index: number): Promise<DiskChunk> => {
      const offset = index * m.chunkSize;
      const length = Math.min(m.chunkSize, m.virtualSize - offset);
      const id = m.chunks[index];
      if (id === null) return Promise.resolve({ index, offset, id, data: Buffer.alloc(length) });
      return this.readChunk(id).then((data) => {
        if (data.length !== length) {
          throw new DamagedObjectError(
            Repository.chunkKey(id),
            'corrupt',
            `holds ${data.length} bytes, expected ${length}`,
          );
        }
        return { index, offset, id, data };
      });
    };
    let next = 0;
    try {
      while (next < m.chunks.length || inFlight.length > 0) {
        while (next < m.chunks.length && inFlight.length < concurrency) {
          const p = fetch(next++);
          p.catch(() => undefined); // handled when awaited in order
          inFlight.push(p);
        }
        yield await (inFlight.shift() as Promise<DiskChunk>);
      }
    } finally {
      await Promise.allSettled(inFlight);
    }
  }

  /** The disk's guest-visible content (raw) as a byte stream. */
  diskStream(m: DiskManifest, opts: { concurrency?: number } = {}): Readable {
    const chunks = this.readDisk(m, opts);
    return Readable.from(
      (async function* () {
        for await (const c of chunks) yield c.data;
      })(),
      { objectMode: false },
    );
  }

  /**
   * Writes the disk's content as a raw, sparse image file at `file` (created or truncated to the virtual size;
   * zero chunks are left as holes). `concurrency` chunks are fetched at once and each is written at its offset as
   * soon as it is opened (in no particular order).
   */
  async writeDiskImage(m: DiskManifest, file: string, opts: WriteDiskOptions = {}): Promise<void> {
    const fh = await openFile(file, 'w');
    try {
      await fh.truncate(m.virtualSize);
      await this.writeChunksInto(fh, m, (index) => index * m.chunkSize, opts);
    } finally {
      await fh.close();
    }
  }

  /**
   * Writes the disk's content as a qcow2 image at `file` directly (./qcow2-image.ts: the metadata laid out from the
   * manifest first, then each data chunk written once at its place as soon as it is opened), the same image
   * `qemu-img convert -O qcow2` of the raw content would read back, without the raw file in between.
   * @throws Error when the repository's chunk size is not a whole number of 64 KiB clusters ({@link qcow2Writable})
   */
  async writeDiskQcow2(m: DiskManifest, file: string, opts: WriteDiskOptions = {}): Promise<void> {
    const layout = planQcow2(m);
    const fh = await openFile(file, 'w');
    try {
      await fh.truncate(layout.fileSize);
      for (const part of layout.metadata) await fh.write(part.data, 0, part.data.length, part.offset);
      await this.writeChunksInto(fh, m, (index) => layout.chunkOffset.get(index) as number, opts);
    } finally {
      await fh.close();
    }
  }

  /** Fetches the disk's data chunks, `concurrency` at once, and writes each (its zero clusters as holes) at `offsetOf`. */
  private async writeChunksInto(
    fh: FileHandle,
    m: DiskManifest,
    offsetOf: (index: number) => number,
    opts: WriteDiskOptions,
  ): Promise<void> {
    const todo = m.chunks.map((id, i) => (id === null ? -1 : i)).filter((i) => i >= 0);
    let next = 0;
    let done = 0;
    let failed = false;
    const worker = async (): Promise<void> => {
      while (next < todo.length && !failed) {
        const index = todo[next++];
        const id = m.chunks[index] as string;
        const length = Math.min(m.chunkSize, m.virtualSize - index * m.chunkSize);
        const data = await this.readChunk(id).catch((err: unknown) => {
          failed = true;
          throw err;
        });
        if (data.length !== length) {
          failed = true;
          throw wrongLength(Repository.chunkKey(id), data.length, length);
        }
        await writeSparse(fh, data, offsetOf(index));
        releaseChunk(data);
        done += length;
        opts.onProgress?.(done, m.virtualSize);
      }
    };
    const results = await Promise.allSettled(
      Array.from({ length: Math.max(1, opts.concurrency ?? 8) }, () => worker()),
    );
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) throw failure.reason;
    opts.onProgress?.(m.virtualSize, m.virtualSize);
    await fh.sync();
  }
}

/**
 * Gives a chunk's memory back now, once nothing refers to it any more (the caller's promise): its ArrayBuffer is
 * detached and freed (`ArrayBuffer.prototype.transfer(0)`, Node >= 21) instead of waiting for a garbage collection.
 * A restore's plaintext arrives from the seal threads as a fresh 4 MiB ArrayBuffer per chunk, memory outside the JS
 * heap that V8 answers with a full mark-compact of the main thread's heap about every 64 MiB held: 30 per GiB
 * restored, about 0.6 CPU s per GiB on a 2-core machine; freed here, there is one (BENCHMARKS.md, issue 28). Only a
 * buffer that spans its whole ArrayBuffer (a chunk from {@link Repository.readChunk}) is freed; a slice of a shared
 * one is left alone.
 */
export function releaseChunk(data: Buffer): void {
  const ab = data.buffer as ArrayBuffer & { transfer?: (length: number) => ArrayBuffer };
  if (!(ab instanceof ArrayBuffer) || typeof ab.transfer !== 'function') return;
  if (data.byteOffset === 0 && data.byteLength === ab.byteLength) ab.transfer(0);
}

/** Options of {@link Repository.writeDiskImage} and {@link Repository.writeDiskQcow2}. */
export interface WriteDiskOptions {
  /** Chunks fetched at once. @default 8 */
  concurrency?: number;
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/** The listing's fields of a stored drill record (which holds more: evidence, clones, readiness). */
function drillSummary(r: PointDrillSummary): PointDrillSummary {
  return {
    drillId: r.drillId,
    status: r.status,
    startedAt: r.startedAt,
    toHost: r.toHost,
    ...(r.rtoMs !== undefined ? { rtoMs: r.rtoMs } : {}),
    ...(r.restoreMs !== undefined ? { restoreMs: r.restoreMs } : {}),
    ...(r.readyMs !== undefined ? { readyMs: r.readyMs } : {}),
    ...(r.error !== undefined ? { error: r.error } : {}),
  };
}

const ZEROS = Buffer.alloc(1024 * 1024);

/** Whether a buffer holds only zero bytes (memcmp against zeros, a MiB at a time). */
export function isZero(buf: Buffer): boolean {
  for (let off = 0; off < buf.length; off += ZEROS.length) {
    const part = buf.subarray(off, Math.min(off + ZEROS.length, buf.length));
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}

function checkId(what: string, value: string): string {
  if (!SAFE_ID.test(value)) {
    throw new RepositoryInputError(`${what} '${value}' may only hold letters, digits and . _ : - (at most 128)`);
  }
  return value;
}

/**
 * The authenticated fields of a config, in their fixed order (every field but `mac`); format 3 adds the Object Lock
 * settings (so nobody without the key can shorten or drop them).
 */
function configFields(c: Omit<RepositoryConfig, 'mac'>): unknown[] {
  const fields: unknown[] = [
    c.format,
    c.version,
    c.id,
    c.createdAt,
    c.chunkSize,
    c.cipher,
    c.compression,
    c.chunkHash,
    c.keyCheck,
  ];
  if (c.version >= OBJECT_LOCK_FORMAT_VERSION) fields.push(c.objectLock?.mode ?? null, c.objectLock?.days ?? null);
  return fields;
}

/**
 * The bucket of a repository with Object Lock: created with it when missing; an existing one must have Object Lock
 * and versioning. A directory cannot lock objects.
 * @throws RepositoryInputError otherwise (nothing created)
 */
async function prepareLockedBucket(store: ObjectStore, lock: ObjectLockSettings): Promise<void> {
  if (!Number.isInteger(lock.days) || lock.days < 1 || lock.days > 36500) {
    throw new RepositoryInputError(`the object lock period must be a whole number of days from 1 to 36500`);
  }
  if (lock.mode !== 'compliance' && lock.mode !== 'governance') {
    throw new RepositoryInputError(`the lock mode must be compliance or governance, not ${String(lock.mode)}`);
  }
  if (!store.locking) {
    throw new RepositoryInputError(
      `${store.url} cannot lock objects (a directory has no Object Lock): use an S3 bucket with Object Lock`,
    );
  }
  try {
    await store.checkLocation();
  } catch (err) {
    if (!(err instanceof BucketNotFoundError)) throw err;
    await store.locking.createLockedBucket();
    return;
  }
  const state = await store.locking.bucketLock();
  if (!state.objectLock || !state.versioning) {
    throw new RepositoryInputError(
      `the bucket of ${store.url} has ${state.objectLock ? '' : 'no Object Lock'}${!state.objectLock && !state.versioning ? ' and ' : ''}` +
        `${state.versioning ? '' : 'no versioning'}: create it with Object Lock enabled (S3 CreateBucket ` +
        `ObjectLockEnabledForBucket, which turns versioning on), or let 'repo init --object-lock' create it`,
    );
  }
}

/**
 * Parses and bounds-checks a stored config (its mac is checked once the keys are derived).
 * @throws DamagedObjectError when it is not a valid config; RepositoryInputError when its format is newer
 */
function parseConfig(raw: Buffer): RepositoryConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new DamagedObjectError(KEYS.config, 'corrupt', 'not JSON');
  }
  const d = (typeof doc === 'object' && doc !== null ? doc : {}) as Record<string, unknown>;
  if (d.format !== 'groupsnap-repository')
    throw new DamagedObjectError(KEYS.config, 'corrupt', 'not a groupsnap repository');
  if (typeof d.version === 'number' && d.version > OBJECT_LOCK_FORMAT_VERSION) {
    throw new RepositoryInputError(
      `repository format ${d.version} is newer than this groupsnap reads (${OBJECT_LOCK_FORMAT_VERSION})`,
    );
  }
  if (d.mac === undefined) {
    throw new DamagedObjectError(
      KEYS.config,
      'corrupt',
      'it is not authenticated (no mac): made by a groupsnap before config authentication, or stripped; ' +
        'create a new repository and export to it',
    );
  }
  const parsed = RepositoryConfigSchema.safeParse(doc);
  if (!parsed.success) throw new DamagedObjectError(KEYS.config, 'corrupt', `invalid: ${issues(parsed.error)}`);
  if (parsed.data.version >= OBJECT_LOCK_FORMAT_VERSION !== (parsed.data.objectLock !== undefined)) {
    throw new DamagedObjectError(KEYS.config, 'corrupt', 'its format and its Object Lock settings disagree');
  }
  return parsed.data;
}

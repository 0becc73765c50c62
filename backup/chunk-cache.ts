/**
 * Reading a point's disks chunk by chunk for the NBD server (./nbd-server.ts): offsets map to the disk manifest's
 * fixed chunks (`chunks[i]`, `null` = zeros); chunks are fetched and opened (the repository's seal pool) once, kept
 * in a least-recently-used cache bounded in bytes and shared by every disk (chunks are named by content, so two
 * disks that share one share its entry), fetched once however many requests want them (single flight), and read
 * ahead when a disk is read in order, with a bound on fetches in flight.
 *
 * A store that cannot be reached (network errors, the S3 server stopped, 5xx, throttling) never fails a request:
 * the fetch is retried with backoff until it succeeds, and the requests wait. A chunk that is missing or fails
 * authentication (damage) fails the requests that need it (EIO), and only those.
 */
import { DamagedObjectError } from './errors';
import type { NbdAllocation, NbdExtent } from './nbd-server';
import { chunkRuns, type DiskManifest } from './manifest';
import { releaseChunk, Repository } from './repository';

/** What the cache reads chunks with (a `Repository`, or a test's). */
export interface ChunkSource {
  readChunk(id: string): Promise<Buffer>;
}

export interface ChunkCacheOptions {
  /** Bytes of opened chunks kept. @default 256 MiB */
  maxBytes?: number;
  /** Fetches in flight at once (demand and read-ahead together). @default 8 */
  maxFetches?: number;
  /** First and largest wait between attempts while the store is unreachable (ms). @default 200, 5000 */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Told when the store becomes unreachable (with the error) or reachable again. */
  onStoreState?: (reachable: boolean, error?: string) => void;
  /** Told of every change worth a status update. */
  onChange?: () => void;
}

interface Entry {
  id: string;
  /** The opened chunk once fetched. */
  data?: Buffer;
  /** The fetch while it runs. */
  pending?: Promise<Buffer>;
  /** The fetch failed at least once because the store was away: the requests waiting on it are held. */
  held: boolean;
  /** Waiting requests (for the held count). */
  waiters: number;
  /** Fetched ahead of any request, and not read yet. */
  readAhead: boolean;
  /** Its plaintext length. */
  length: number;
  /** Replies being written that refer to its data ({@link ChunkCache.acquire} not yet released). */
  pins: number;
  /** Its data was handed out without a pin ({@link ChunkCache.get}): never freed early, the GC frees it. */
  shared: boolean;
  /** Dropped from the cache while pinned: its data is freed when the last pin goes. */
  evicted: boolean;
}

/** An opened chunk held for a reply being written: `release` once nothing refers to `data` any more. */
export interface HeldChunk {
  data: Buffer;
  release: () => void;
}

/** Counters of the cache (totals since start). */
export interface ChunkCacheStats {
  bytes: number;
  maxBytes: number;
  chunks: number;
  fetches: number;
  fetchesInFlight: number;
  bytesFetched: number;
  hits: number;
  misses: number;
  readAheadFetches: number;
  retries: number;
  storeReachable: boolean;
  lastStoreError?: string;
}

/** Where the bytes a fetch brought in are counted (an export's stats). */
export interface FetchCounter {
  bytesFetched: number;
}

/** The chunks a fetch's failure says are damaged, not unreachable. */
const isDamage = (err: unknown) => err instanceof DamagedObjectError;

/** A bounded LRU cache of opened chunks with single-flight fetches, a fetch bound and retry while the store is away. */
export class ChunkCache {
  /** Insertion order is recency order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Entry>();
  private bytes = 0;
  private inFlight = 0;
  /** Demand fetches waiting for a fetch slot (served before any read-ahead). */
  private readonly queue: (() => void)[] = [];
  private reachable = true;
  private lastError: string | undefined;
  private closed = false;
  private readonly stats = { fetches: 0, bytesFetched: 0, hits: 0, misses: 0, readAheadFetches: 0, retries: 0 };
  readonly maxBytes: number;
  readonly maxFetches: number;

  constructor(
    private readonly source: ChunkSource,
    private readonly opts: ChunkCacheOptions = {},
  ) {
    this.maxBytes = opts.maxBytes ?? 256 * 1024 * 1024;
    this.maxFetches = Math.max(1, opts.maxFetches ?? 8);
  }

  /** Stops retrying: waiting requests fail. */
  close(): void {
    this.closed = true;
    for (const go of this.queue.splice(0)) go();
  }

  get storeReachable(): boolean {
    return this.reachable;
  }

  /** Requests waiting on a fetch while the store is unreachable (or on a fetch it has failed). */
  get heldRequests(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.pending && (e.held || !this.reachable)) n += e.waiters;
    return n;
  }

  snapshot(): ChunkCacheStats {
    return {
      bytes: this.bytes,
      maxBytes: this.maxBytes,
      chunks: this.entries.size,
      fetchesInFlight: this.inFlight,
      ...this.stats,
      storeReachable: this.reachable,
      ...(this.lastError ? { lastStoreError: this.lastError } : {}),
    };
  }

  /**
   * The opened chunk `id` of `expectedLength` bytes: from the cache, or fetched (once, whoever asks; the bytes
   * fetched are counted in `fetchedBy` of the one that started the fetch).
   */
  async get(id: string, expectedLength: number, fetchedBy?: FetchCounter): Promise<Buffer> {
    return (await this.lookup(id, expectedLength, fetchedBy, 'share')).data;
  }

  /**
   * {@link get}, pinned: the chunk's memory is not freed before `release` (called once the reply that refers to it
   * is written). Evicted meanwhile, it is freed at the last release instead of waiting for a garbage collection
   * (a fresh 4 MiB ArrayBuffer per chunk, memory outside the JS heap that V8 answers with full mark-compacts).
   */
  async acquire(id: string, expectedLength: number, fetchedBy?: FetchCounter): Promise<HeldChunk> {
    const { data, entry } = await this.lookup(id, expectedLength, fetchedBy, 'pin');
    let released = false;
    return {
      data,
      release: () => {
        if (released) return;
        released = true;
        if (--entry.pins === 0 && entry.evicted && !entry.shared) releaseChunk(data);
      },
    };
  }

  /**
   * The chunk and its entry, pinned or marked shared before anything else can run (an eviction between the lookup
   * and the pin would free the memory handed out).
   */
  private async lookup(id: string, expectedLength: number, fetchedBy: FetchCounter | undefined, hold: 'pin' | 'share') {
    const held = (e: Entry) => {
      if (hold === 'pin') e.pins++;
      else e.shared = true;
      return e;
    };
    let e = this.entries.get(id);
    if (e?.data) {
      this.stats.hits++;
      e.readAhead = false;
      this.touch(e);
      return { data: e.data, entry: held(e) };
    }
    this.stats.misses++;
    if (!e) e = this.start(id, expectedLength, false, fetchedBy);
    else e.readAhead = false;
    e.waiters++;
    try {
      const data = await (e.pending as Promise<Buffer>);
      return { data, entry: held(e) };
    } finally {
      e.waiters--;
    }
  }

  /** Starts fetching `id` ahead of any request when a fetch slot is free and it is neither cached nor fetched. */
  prefetch(id: string, expectedLength: number, fetchedBy?: FetchCounter): void {
    if (this.closed || this.entries.has(id) || this.inFlight >= this.maxFetches || this.queue.length > 0) return;
    // Chunks read ahead and not read yet never fill more than half the cache.
    if (this.readAheadBytes() + expectedLength > this.maxBytes / 2) return;
    this.stats.readAheadFetches++;
    const e = this.start(id, expectedLength, true, fetchedBy);
    (e.pending as Promise<Buffer>).catch(() => undefined);
  }

  private readAheadBytes(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.readAhead) n += e.length;
    return n;
  }

  private start(id: string, expectedLength: number, readAhead: boolean, fetchedBy?: FetchCounter): Entry {
    const e: Entry = {
      id,
      held: false,
      waiters: 0,
      readAhead,
      length: expectedLength,
      pins: 0,
      shared: false,
      evicted: false,
    };
    this.entries.set(id, e);
    e.pending = this.fetch(e, expectedLength, readAhead).then(
      (data) => {
        e.pending = undefined;
        e.held = false;
        if (fetchedBy) fetchedBy.bytesFetched += data.length;
        if (this.entries.get(id) === e) {
          e.data = data;
          this.bytes += data.length;
          this.evict();
        }
        this.opts.onChange?.();
        return data;
      },
      (err: unknown) => {
        e.pending = undefined;
        if (this.entries.get(id) === e) this.entries.delete(id);
        this.opts.onChange?.();
        throw err;
      },
    );
    return e;
  }

  /** One chunk, retried with backoff for as long as the store cannot be reached. */
  private async fetch(e: Entry, expectedLength: number, readAhead: boolean): Promise<Buffer> {
    await this.slot(readAhead);
    try {
      let wait = this.opts.retryMinMs ?? 200;
      for (;;) {
        try {
          this.stats.fetches++;
          const data = await this.source.readChunk(e.id);
          if (data.length !== expectedLength)
            throw new DamagedObjectError(
              Repository.chunkKey(e.id),
              'corrupt',
              `holds ${data.length} bytes, expected ${expectedLength}`,
            );
          this.stats.bytesFetched += data.length;
          this.setReachable(true);
          return data;
        } catch (err) {
          if (isDamage(err) || this.closed) throw err;
          // Unreachable (or any other failure a retry may fix): hold the requests and try again.
          this.stats.retries++;
          e.held = true;
          this.setReachable(false, (err as Error).message);
          await new Promise((r) => setTimeout(r, wait));
          wait = Math.min(wait * 2, this.opts.retryMaxMs ?? 5000);
          if (this.closed) throw new Error('chunk cache closed');
        }
      }
    } finally {
      this.inFlight--;
      this.queue.shift()?.();
    }
  }

  /** A fetch slot: demand fetches queue for one, read-ahead only starts when one is free (see prefetch). */
  private async slot(readAhead: boolean): Promise<void> {
    if (readAhead || this.inFlight < this.maxFetches) {
      this.inFlight++;
      return;
    }
    await new Promise<void>((r) => this.queue.push(r));
    this.inFlight++;
  }

  private setReachable(reachable: boolean, error?: string): void {
    if (error) this.lastError = error;
    if (this.reachable === reachable) {
      if (!reachable) this.opts.onChange?.();
      return;
    }
    this.reachable = reachable;
    this.opts.onStoreState?.(reachable, error);
    this.opts.onChange?.();
  }

  private touch(e: Entry): void {
    this.entries.delete(e.id);
    this.entries.set(e.id, e);
  }

  /**
   * Drops least recently used opened chunks until the cache fits (chunks being fetched are never dropped). A dropped
   * chunk's memory is freed now when no reply refers to it, else at its last release.
   */
  private evict(): void {
    for (const e of this.entries.values()) {
      if (this.bytes <= this.maxBytes) return;
      if (!e.data || e.waiters > 0) continue;
      this.entries.delete(e.id);
      this.bytes -= e.data.length;
      e.evicted = true;
      if (e.pins === 0 && !e.shared) releaseChunk(e.data);
    }
  }
}

/**
 * Every value of `held` once all have settled; when one failed, the others' holds are released with `release` and
 * the first failure is thrown (nothing stays pinned for a reply that is never written).
 */
async function allHeld<T>(held: Promise<T>[], release: (value: T) => void): Promise<T[]> {
  const settled = await Promise.allSettled(held);
  const failed = settled.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  const values = settled.flatMap((x) => (x.status === 'fulfilled' ? [x.value] : []));
  if (failed) {
    for (const v of values) release(v);
    throw failed.reason;
  }
  return values;
}

let zeroBuffer = Buffer.alloc(0);

/** `length` zero bytes, from one shared buffer (never written to): a read of a zero chunk allocates nothing. */
function zeros(length: number): Buffer {
  if (zeroBuffer.length < length) zeroBuffer = Buffer.alloc(Math.max(length, 4 * 1024 * 1024));
  return zeroBuffer.subarray(0, length);
}

/** Counters of one disk export. */
export interface DiskExportStats {
  requests: number;
  bytesServed: number;
  readErrors: number;
  /** NBD BLOCK_STATUS requests answered (from the manifest; not reads). */
  blockStatusRequests: number;
}

/**
 * One disk of a point as NBD reads it: `read(offset, length)` over the manifest's chunks through a shared
 * {@link ChunkCache}, reading ahead `readAhead` chunks when the disk is read in order.
 */
export class DiskChunkReader {
  /** Chunk indexes recently read (to tell in-order reading). */
  private readonly recent = new Set<number>();
  readonly stats: DiskExportStats = { requests: 0, bytesServed: 0, readErrors: 0, blockStatusRequests: 0 };

  constructor(
    private readonly manifest: DiskManifest,
    private readonly cache: ChunkCache,
    private readonly readAhead = 8,
    private readonly fetched: FetchCounter = { bytesFetched: 0 },
  ) {}

  get size(): number {
    return this.manifest.virtualSize;
  }

  private chunkLength(index: number): number {
    const m = this.manifest;
    return Math.min(m.chunkSize, m.virtualSize - index * m.chunkSize);
  }

  /** `length` bytes at `offset` (within the disk). @throws DamagedObjectError when a chunk it needs is damaged */
  async read(offset: number, length: number): Promise<Buffer> {
    this.begin(offset, length);
    try {
      const out = await this.range(offset, length);
      this.stats.bytesServed += length;
      return out;
    } catch (err) {
      this.stats.readErrors++;
      throw err;
    }
  }

  /**
   * {@link read} in pieces: the runs of the disk's zero chunks without data (the NBD server sends them as holes),
   * the runs of data chunks read as {@link read} reads them.
   * @throws DamagedObjectError when a chunk it needs is damaged
   */
  async readSparse(offset: number, length: number): Promise<NbdExtent[]> {
    this.begin(offset, length);
    const runs = this.allocation(offset, length);
    try {
      const out = await allHeld(
        runs.map(async (r): Promise<NbdExtent> =>
          r.zero ? { offset: r.offset, length: r.length } : { offset: r.offset, ...(await this.heldRange(r)) },
        ),
        (piece) => piece.release?.(),
      );
      this.stats.bytesServed += length;
      return out;
    } catch (err) {
      this.stats.readErrors++;
      throw err;
    }
  }

  /**
   * The runs of `length` bytes at `offset` in order: those of the manifest's zero chunks (no data in the point:
   * the chunk was all zeros or never written) as `zero`, the others as data. From the manifest alone: nothing is
   * fetched, nothing counted as a read.
   * @throws RangeError when the range is outside the disk
   */
  allocation(offset: number, length: number): NbdAllocation[] {
    const m = this.manifest;
    if (offset < 0 || length < 0 || offset + length > m.virtualSize) throw new RangeError('range outside the disk');
    return chunkRuns(m, offset, length);
  }

  /** {@link allocation} answering an NBD BLOCK_STATUS request: counted in the stats. */
  blockStatus(offset: number, length: number): NbdAllocation[] {
    this.stats.blockStatusRequests++;
    return this.allocation(offset, length);
  }

  /** Checks a read's bounds, counts it and reads ahead when the disk is read in order. */
  private begin(offset: number, length: number): void {
    const m = this.manifest;
    if (offset < 0 || length < 0 || offset + length > m.virtualSize) throw new RangeError('read outside the disk');
    this.stats.requests++;
    const { first, last } = this.span(offset, length);
    this.noteRead(first, last);
  }

  /** The indexes of the first and last chunks a range touches (the first alone for an empty range). */
  private span(offset: number, length: number): { first: number; last: number } {
    const size = this.manifest.chunkSize;
    return { first: Math.floor(offset / size), last: Math.floor((offset + Math.max(length, 1) - 1) / size) };
  }

  /** A range over chunks `first`... as one new buffer: each chunk's part copied in (zero chunks left as zeros). */
  private assemble(offset: number, length: number, first: number, parts: (Buffer | undefined)[]): Buffer {
    const size = this.manifest.chunkSize;
    const out = Buffer.alloc(length);
    parts.forEach((data, k) => {
      const index = first + k;
      const start = Math.max(offset, index * size);
      const end = Math.min(offset + length, index * size + this.chunkLength(index));
      if (data) data.copy(out, start - offset, start - index * size, end - index * size);
    });
    return out;
  }

  /** The bytes of a range within the disk (zero chunks as zeros). */
  private async range(offset: number, length: number): Promise<Buffer> {
    const { first, last } = this.span(offset, length);
    if (first === last) {
      const data = await this.chunk(first);
      const at = offset - first * this.manifest.chunkSize;
      return data ? data.subarray(at, at + length) : zeros(length);
    }
    const parts = await Promise.all(Array.from({ length: last - first + 1 }, (_, k) => this.chunk(first + k)));
    return this.assemble(offset, length, first, parts);
  }

  /**
   * {@link range} for a reply: the bytes, and what frees them once the reply is written (a single chunk's slice
   * holds its chunk pinned in the cache; a range over several chunks is a copy, freed itself).
   */
  private async heldRange(r: { offset: number; length: number }): Promise<Required<Omit<NbdExtent, 'offset'>>> {
    const { offset, length } = r;
    const { first, last } = this.span(offset, length);
    const parts = await allHeld(
      Array.from({ length: last - first + 1 }, async (_, k) => {
        const id = this.manifest.chunks[first + k];
        return id === null ? undefined : this.cache.acquire(id, this.chunkLength(first + k), this.fetched);
      }),
      (part) => part?.release(),
    );
    if (first === last) {
      const only = parts[0];
      const at = offset - first * this.manifest.chunkSize;
      return only
        ? { length, data: only.data.subarray(at, at + length), release: only.release }
        : { length, data: zeros(length), release: () => undefined };
    }
    const out = this.assemble(
      offset,
      length,
      first,
      parts.map((p) => p?.data),
    );
    for (const part of parts) part?.release();
    return { length, data: out, release: () => releaseChunk(out) };
  }

  /** The opened chunk, or `undefined` for a zero chunk. */
  private async chunk(index: number): Promise<Buffer | undefined> {
    const id = this.manifest.chunks[index];
    if (id === null) return undefined;
    return this.cache.get(id, this.chunkLength(index), this.fetched);
  }

  /** Reads ahead past `last` when the chunk before `first` was read recently (the disk is read in order). */
  private noteRead(first: number, last: number): void {
    const inOrder = first === 0 || this.recent.has(first - 1) || this.recent.has(first);
    for (let i = first; i <= last; i++) this.recent.add(i);
    if (this.recent.size > 256) {
      const old = this.recent.values().next().value as number;
      this.recent.delete(old);
    }
    if (!inOrder || this.readAhead <= 0) return;
    const chunks = this.manifest.chunks;
    for (let i = last + 1, n = 0; i < chunks.length && n < this.readAhead; i++, n++) {
      const id = chunks[i];
      if (id !== null) this.cache.prefetch(id, this.chunkLength(i), this.fetched);
    }
  }
}

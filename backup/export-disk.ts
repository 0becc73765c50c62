import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { FORMAT_VERSION, type DiskExportStats, type DiskManifest } from './manifest';
import { ImageReader, imageChain, imageMap, type MapExtent } from './image-reader';
import { chunkNeededUntil } from './object-lock';
import { isZero, type Repository } from './repository';

/** Names of one disk of one VM at one point. */
export interface DiskNames {
  group: string;
  snapshotId: string;
  domain: string;
  target: string;
}

/** An earlier exported point of the same disk whose layer is still below this point's layer in the chain. */
export interface ExportBase {
  snapshotId: string;
  /** The image file that holds the earlier point on this host. */
  image: string;
  manifest: DiskManifest;
}

/** Progress of one disk's export. */
export interface DiskProgress {
  /** Bytes of the chunks this export has to read, and of those done (including those done before a resume). */
  bytesDone: number;
  bytesTotal: number;
  chunksDone: number;
  chunksTotal: number;
  /** Sealed bytes uploaded so far. */
  bytesUploaded: number;
}

export interface ExportDiskOptions {
  repo: Repository;
  names: DiskNames;
  /** The file that holds the point (the snapshot's frozen layer) and its format. */
  image: string;
  format: string;
  /** Format of the disk as the VM used it, recorded in the manifest. @default format */
  sourceFormat?: string;
  base?: ExportBase;
  /** Where to keep progress across a crash (a file in the host's state dir); none: no resume. */
  checkpointFile?: string;
  /** Chunks read, sealed and uploaded at once. @default 6 */
  concurrency?: number;
  /** Bandwidth limit for reading the image, bytes per second. */
  maxBytesPerSecond?: number;
  onProgress?: (p: DiskProgress) => void;
  /** Called while the repository's chunk index loads (every few objects): a sign of life for long listings. */
  onListing?: () => void;
  /** Stops between chunks (the checkpoint keeps what was done). */
  signal?: AbortSignal;
}

export interface ExportDiskResult {
  manifest: DiskManifest;
  /** Object key of the disk manifest. */
  manifestKey: string;
  /** Chunks taken from the checkpoint of an earlier, interrupted attempt (not read again). */
  chunksResumed: number;
}

interface Checkpoint {
  version: number;
  names: DiskNames;
  chunkSize: number;
  virtualSize: number;
  mode: DiskExportStats['mode'];
  base?: string;
  /** Chunk index -> id (or null for zeros) of chunks already stored. */
  done: Record<string, string | null>;
  stats: DiskExportStats;
}

/** Chunk indices touched by extents that satisfy `pred`. */
function chunksTouched(extents: MapExtent[], chunkSize: number, pred: (e: MapExtent) => boolean): Set<number> {
  const out = new Set<number>();
  for (const e of extents) {
    if (!pred(e) || e.length <= 0) continue;
    const first = Math.floor(e.start / chunkSize);
    const last = Math.floor((e.start + e.length - 1) / chunkSize);
    for (let i = first; i <= last; i++) out.add(i);
  }
  return out;
}

/** Adds to `known` those of `ids` (not in it yet) that the store holds, asking 16 at a time. */
async function confirmStored(
  repo: Repository,
  ids: (string | null)[],
  known: { has(id: string): boolean },
  onBatch?: () => void,
): Promise<void> {
  const unsure = ids.filter((id): id is string => id !== null && !known.has(id));
  for (let i = 0; i < unsure.length; i += 16) {
    const batch = unsure.slice(i, i + 16);
    const stored = await Promise.all(batch.map((id) => repo.chunkStored(id)));
    batch.forEach((id, j) => {
      if (stored[j]) repo.noteStored(id);
    });
    onBatch?.();
  }
}

async function loadCheckpoint(file: string | undefined): Promise<Checkpoint | undefined> {
  if (!file) return undefined;
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Checkpoint;
  } catch {
    return undefined;
  }
}

async function saveCheckpoint(file: string, cp: Checkpoint): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeFile(tmp, JSON.stringify(cp));
  await rename(tmp, file);
}

/** One export's working state, shared by its steps. */
interface ExportRun {
  repo: Repository;
  opts: ExportDiskOptions;
  chunkSize: number;
  virtualSize: number;
  /** Chunk index -> id (null: zeros), filled as chunks are known (base, checkpoint) or stored. */
  chunks: (string | null)[];
  /** Chunk indices still to read and store. */
  toRead: Set<number>;
  /** The checkpoint being written (its `stats` is the export's). */
  cp: Checkpoint;
  stats: DiskExportStats;
  /** Byte length of chunk `i` (the last one may be short). */
  lengthOf: (i: number) => number;
  /** Object Lock: the extension of the locks of chunks known from the start (base, checkpoint), running meanwhile. */
  early?: Promise<string[]>;
}

/**
 * Exports one disk at one point into the repository: reads only what changed since `base` (when given and still
 * in the chain) or every allocated extent (first export, or a base merged away), as fixed chunks of the chain read
 * read-only at the point; stores the chunks the repository lacks; writes the disk manifest (every chunk listed: a
 * synthetic full). Progress is checkpointed so a retry after a crash reads and uploads only what is left. The
 * chunks the manifest names that the repository's chunk index lacks are added to it before the manifest is written.
 * Call it holding the repository's export lock (no chunk sweep may run meanwhile).
 */
export async function exportDisk(opts: ExportDiskOptions): Promise<ExportDiskResult> {
  const { repo } = opts;
  const { readerP, chain, extents, known } = await openInputs(opts);
  const chunkSize = repo.chunkSize;
  const virtualSize = chain.virtualSize;
  const chunkCount = Math.ceil(virtualSize / chunkSize);
  const { base, baseDepth } = usableBase(opts.base, chain.files, chunkSize, virtualSize, chunkCount);
  const { toRead, chunks } = chunksToRead(extents, chunkSize, chunkCount, base, baseDepth, known);
  const mode: DiskExportStats['mode'] = base ? 'incremental' : 'full';
  const stats: DiskExportStats = {
    mode,
    ...(base ? { base: base.snapshotId } : {}),
    bytesRead: 0,
    bytesNew: 0,
    bytesUploaded: 0,
    chunksNew: 0,
    chunksData: 0,
  };
  const cp: Checkpoint = {
    version: FORMAT_VERSION,
    names: opts.names,
    chunkSize,
    virtualSize,
    mode,
    ...(base ? { base: base.snapshotId } : {}),
    done: {},
    stats,
  };
  const lengthOf = (i: number): number => Math.min(chunkSize, virtualSize - i * chunkSize);
  const run: ExportRun = { repo, opts, chunkSize, virtualSize, chunks, toRead, cp, stats, lengthOf };
  const chunksResumed = await resumeFromCheckpoint(run, known);
  run.early = extendKnownChunks(run);
  const order = [...toRead].sort((a, b) => a - b);
  const progress = startingProgress(run, order, chunksResumed);
  opts.onProgress?.({ ...progress });

  const reader = await readerP;
  if (order.length === 0) await reader.close();
  else await copyChunks(run, reader, order, progress);
  const { manifest, manifestKey } = await writeManifest(run);
  return { manifest, manifestKey, chunksResumed };
}

/**
 * The chain, its map and the repository's chunk index, with the reader opening meanwhile: they do not depend on each
 * other, so they start at once (on a small incremental export, their latency is most of the time). On a failure the
 * reader is closed.
 */
async function openInputs(opts: ExportDiskOptions) {
  const readerP = ImageReader.open(opts.image, opts.format);
  readerP.catch(() => undefined);
  try {
    const [chain, extents, known] = await Promise.all([
      imageChain(opts.image),
      imageMap(opts.image, opts.format),
      opts.repo.loadChunkIndex({ compact: true, ...(opts.onListing ? { onProgress: opts.onListing } : {}) }),
    ]);
    return { readerP, chain, extents, known };
  } catch (err) {
    await readerP.then((r) => r.close()).catch(() => undefined);
    throw err;
  }
}

/**
 * The base an export may be incremental against: only one still a layer below this point (its depth in `chain`,
 * above 0) and cut the same way (chunk size, virtual size, chunk count); else none (a full export).
 */
export function usableBase(
  given: ExportBase | undefined,
  chain: string[],
  chunkSize: number,
  virtualSize: number,
  chunkCount: number,
): { base?: ExportBase; baseDepth: number } {
  const baseDepth = given ? chain.indexOf(given.image) : -1;
  const usable =
    given &&
    baseDepth > 0 &&
    given.manifest.chunkSize === chunkSize &&
    given.manifest.virtualSize === virtualSize &&
    given.manifest.chunks.length === chunkCount;
  return usable ? { base: given, baseDepth } : { baseDepth };
}

/**
 * The chunks to read: with a base, those its layers above the base touched, and those whose base chunk the repository
 * no longer has (the others are taken from the base's manifest); without, every chunk with data.
 */
function chunksToRead(
  extents: MapExtent[],
  chunkSize: number,
  chunkCount: number,
  base: ExportBase | undefined,
  baseDepth: number,
  known: { has(id: string): boolean },
): { toRead: Set<number>; chunks: (string | null)[] } {
  const toRead = base
    ? chunksTouched(extents, chunkSize, (e) => e.present && e.depth < baseDepth)
    : chunksTouched(extents, chunkSize, (e) => e.data);
  const chunks: (string | null)[] = new Array<string | null>(chunkCount).fill(null);
  // Unchanged chunks come from the base's manifest, as long as the repository still has them.
  if (base) {
    for (let i = 0; i < chunkCount; i++) {
      if (toRead.has(i)) continue;
      const id = base.manifest.chunks[i];
      if (id !== null && !known.has(id)) toRead.add(i);
      else chunks[i] = id;
    }
  }
  return { toRead, chunks };
}

/**
 * Resume: takes what an interrupted attempt of this very export stored (same names and cut), if the repository still
 * has it, out of `toRead` into `chunks` and the checkpoint, with the attempt's counters. Returns the chunks taken.
 */
async function resumeFromCheckpoint(run: ExportRun, known: { has(id: string): boolean }): Promise<number> {
  const { repo, opts, cp, stats } = run;
  const previous = await loadCheckpoint(opts.checkpointFile);
  if (
    !previous ||
    previous.chunkSize !== run.chunkSize ||
    previous.virtualSize !== run.virtualSize ||
    JSON.stringify(previous.names) !== JSON.stringify(opts.names)
  )
    return 0;
  // The interrupted attempt's chunks are not indexed yet (an export indexes its chunks at its end): those the
  // index lacks are asked of the store one by one (a checkpoint's worth; a chunk swept meanwhile is read again).
  await confirmStored(repo, Object.values(previous.done), known, opts.onListing);
  // It may also have stored chunks after its last checkpoint: each new chunk of this attempt is asked for first.
  repo.askStoreForUnknownChunks();
  let chunksResumed = 0;
  for (const [k, id] of Object.entries(previous.done)) {
    const i = Number(k);
    if (!run.toRead.has(i) || (id !== null && !known.has(id))) continue;
    run.chunks[i] = id;
    cp.done[k] = id;
    run.toRead.delete(i);
    chunksResumed++;
  }
  for (const f of ['bytesRead', 'bytesNew', 'bytesUploaded', 'chunksNew'] as const) stats[f] = previous.stats[f];
  return chunksResumed;
}

/** The progress at the start: what is left to read, plus what the checkpoint already did. */
function startingProgress(run: ExportRun, order: number[], chunksResumed: number): DiskProgress {
  let bytesTotal = 0;
  for (const i of order) bytesTotal += run.lengthOf(i);
  let bytesResumed = 0;
  for (const k of Object.keys(run.cp.done)) bytesResumed += run.lengthOf(Number(k));
  return {
    bytesDone: bytesResumed,
    bytesTotal: bytesTotal + bytesResumed,
    chunksDone: chunksResumed,
    chunksTotal: order.length + chunksResumed,
    bytesUploaded: run.stats.bytesUploaded,
  };
}

/**
 * Reads, seals and stores the chunks of `order` with `concurrency` workers (zero chunks are not stored), at most
 * `maxBytesPerSecond`, stopping between chunks on `signal`; saves the checkpoint every 8 chunks or 2 s, and once at
 * the end whatever happened. Closes the reader.
 */
async function copyChunks(run: ExportRun, reader: ImageReader, order: number[], progress: DiskProgress) {
  const { repo, opts, chunks, cp, stats } = run;
  const started = Date.now();
  let readThisRun = 0;
  let lastSave = Date.now();
  let sinceSave = 0;
  let saving: Promise<void> = Promise.resolve();
  try {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < order.length) {
        opts.signal?.throwIfAborted();
        const i = order[next++];
        const len = run.lengthOf(i);
        if (opts.maxBytesPerSecond) {
          readThisRun += len;
          const due = started + (readThisRun / opts.maxBytesPerSecond) * 1000;
          if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
        }
        const data = await reader.read(i * run.chunkSize, len);
        stats.bytesRead += len;
        let id: string | null = null;
        if (!isZero(data)) {
          const put = await repo.putChunk(data, undefined, { detach: true });
          id = put.id;
          if (put.uploaded) {
            stats.chunksNew++;
            stats.bytesNew += len;
            stats.bytesUploaded += put.storedBytes;
          }
        }
        chunks[i] = id;
        cp.done[String(i)] = id;
        progress.bytesDone += len;
        progress.chunksDone++;
        progress.bytesUploaded = stats.bytesUploaded;
        opts.onProgress?.({ ...progress });
        sinceSave++;
        if (opts.checkpointFile && (sinceSave >= 8 || Date.now() - lastSave > 2000)) {
          sinceSave = 0;
          lastSave = Date.now();
          const file = opts.checkpointFile;
          saving = saving.then(() => saveCheckpoint(file, cp));
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 6) }, () => worker()));
  } finally {
    await saving.catch(() => undefined);
    if (opts.checkpointFile) await saveCheckpoint(opts.checkpointFile, cp).catch(() => undefined);
    await reader.close();
  }
}

/**
 * Object Lock: extends, while the chunks are read, the locks of the chunks already known to be part of this point (from
 * the base's manifest or the checkpoint) that end too early, so an incremental export does not wait for them at its
 * end. Settled (never rejecting unobserved); awaited by {@link writeManifest}.
 */
function extendKnownChunks(run: ExportRun): Promise<string[]> | undefined {
  const lock = run.repo.objectLock;
  if (!lock) return undefined;
  const early = run.repo.ensureRetention(run.chunks, chunkNeededUntil(lock, run.repo.now()));
  early.catch(() => undefined);
  return early;
}

/**
 * Writes the disk manifest (every chunk listed), after indexing the chunks it names that the index did not (uploaded
 * now, or found by a listing) so later exports dedup against them without listing the chunks; then drops the
 * checkpoint.
 */
async function writeManifest(run: ExportRun): Promise<{ manifest: DiskManifest; manifestKey: string }> {
  const { repo, opts, chunks, stats } = run;
  stats.chunksData = chunks.filter((c) => c !== null).length;
  const manifest: DiskManifest = {
    version: FORMAT_VERSION,
    ...opts.names,
    sourceFormat: opts.sourceFormat ?? opts.format,
    sourceImage: opts.image,
    virtualSize: run.virtualSize,
    chunkSize: run.chunkSize,
    chunks,
    stats,
  };
  // Object Lock: every chunk the manifest names (uploaded now, found stored, or taken from the base) is locked at
  // least as long as the point will be; those whose known lock ends earlier are extended, then indexed with it.
  const lock = repo.objectLock;
  const needed = lock ? chunkNeededUntil(lock, repo.now()) : undefined;
  const extendedEarly = (await run.early) ?? [];
  const extended = needed !== undefined ? await repo.ensureRetention(chunks, needed, opts.onListing) : [];
  extended.push(...extendedEarly);
  if (needed !== undefined) manifest.chunksRetainUntil = new Date(needed).toISOString();
  await repo.indexChunks([...chunks.filter((id): id is string => id !== null && !repo.isIndexed(id)), ...extended]);
  const manifestKey = await repo.writeDiskManifest(manifest);
  if (opts.checkpointFile) await rm(opts.checkpointFile, { force: true });
  return { manifest, manifestKey };
}

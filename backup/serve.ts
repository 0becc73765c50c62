/**
 * Serving a point's disks over NBD (issue 28): each disk of the spec is an export on a Unix socket of this host,
 * read from the repository through a shared chunk cache (./chunk-cache.ts, ./nbd-server.ts), while a shared read
 * lock on the repository keeps a prune from deleting the point. The server writes its status (a JSON file, 0600)
 * as it changes: whether the store is reachable, how many requests are held waiting for it, bytes served and
 * fetched per export. ./serve-process.ts runs this in a process of its own that outlives the worker.
 */
import { chmodSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { absolutePath, diskTarget, domainName, repoUrl } from '../common/host-requests';
import { ChunkCache, DiskChunkReader, type ChunkCacheStats } from './chunk-cache';
import { readKeyFile } from './crypto';
import {
  DamagedObjectError,
  PERMANENT_REPOSITORY_ERRORS,
  PointNotFoundError,
  RepositoryError,
  StoreAccessDeniedError,
} from './errors';
import { RepositoryBusyError, RepositoryLock } from './locks';
import { NbdServer, type NbdExport } from './nbd-server';
import { Repository } from './repository';

/** Longest Unix socket path (sun_path holds 108 bytes with its terminating NUL). */
export const MAX_SOCKET_PATH = 107;
export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;
const MiB = 1024 * 1024;

const safeId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, {
  message: 'letters, digits and . _ : - (at most 128)',
});

/** One disk served: which disk of the point, on which socket, under which export name. */
export const ServeExportSchema = z.object({
  domain: domainName,
  target: diskTarget,
  socket: absolutePath.refine((p) => Buffer.byteLength(p) <= MAX_SOCKET_PATH, {
    message: `a Unix socket path of at most ${MAX_SOCKET_PATH} bytes`,
  }),
  exportName: z
    .string()
    .min(1)
    .max(256)
    .regex(/^[A-Za-z0-9._:@-]+$/, { message: 'letters, digits and . _ : @ -' }),
});

/**
 * What a server serves (the JSON spec file of the process form). `dir` is the server's own private directory:
 * `spec.json`, `serve.pid`, `status.json` and `serve.log` live there.
 */
export const ServeSpecSchema = z
  .object({
    version: z.literal(1),
    repo: repoUrl,
    keyFile: absolutePath,
    group: safeId,
    snapshotId: safeId,
    exports: z.array(ServeExportSchema).min(1).max(256),
    dir: absolutePath,
    /** Bytes of opened chunks cached, shared by every export. @default 256 MiB */
    cacheBytes: z
      .number()
      .int()
      .min(16 * MiB)
      .max(64 * 1024 * MiB)
      .optional(),
    /** Chunks read ahead of an export read in order. @default 8 */
    readAhead: z.number().int().min(0).max(256).optional(),
    /**
     * Offer block status (`base:allocation`: the point's zero chunks as holes, so a block pull or a copy skips
     * them). `false` serves as the server did before it had block status (no metadata context offered), for
     * side-by-side measurements (bench/hydrate.ts), as nbdkit's `noextents` filter does. @default true
     */
    blockStatus: z.boolean().optional(),
    /** Chunk fetches in flight at once. @default 8 */
    maxFetches: z.number().int().min(1).max(64).optional(),
    /** Who holds the read lock (the host id). */
    owner: z.string().min(1).max(200).optional(),
  })
  .superRefine((s, ctx) => {
    const names = new Set<string>();
    for (const e of s.exports) {
      if (names.has(`${e.socket}\0${e.exportName}`))
        ctx.addIssue({ code: 'custom', message: `export ${e.exportName} twice on ${e.socket}` });
      names.add(`${e.socket}\0${e.exportName}`);
    }
  });

export type ServeSpec = z.infer<typeof ServeSpecSchema>;
export type ServeExport = z.infer<typeof ServeExportSchema>;

/** The files of a server's directory. */
export const serveFiles = (dir: string) => ({
  spec: join(dir, 'spec.json'),
  pid: join(dir, 'serve.pid'),
  status: join(dir, 'status.json'),
  log: join(dir, 'serve.log'),
});

/** One export in the status file. */
export interface ServeExportStatus {
  name: string;
  domain: string;
  target: string;
  socket: string;
  size: number;
  connections: number;
  requests: number;
  bytesServed: number;
  bytesFetched: number;
  readErrors: number;
  /** BLOCK_STATUS requests answered (`base:allocation`). */
  blockStatusRequests: number;
}

/** The status file (`<dir>/status.json`, 0600), rewritten whole (atomically) as it changes. */
export interface ServeStatus {
  version: 1;
  pid: number;
  state: 'starting' | 'serving' | 'stopped' | 'failed';
  error?: string;
  startedAt: string;
  updatedAt: string;
  repo: string;
  group: string;
  snapshotId: string;
  /** False while chunk fetches fail for a reason a retry may fix (the store is away): requests are held. */
  storeReachable: boolean;
  lastStoreError?: string;
  /** Requests waiting for the store right now. */
  heldRequests: number;
  /** Whether the repository's shared read lock is held (false: read-only credentials, or lost while the store is away and being taken again). */
  lockHeld: boolean;
  bytesServed: number;
  bytesFetched: number;
  cache: Omit<ChunkCacheStats, 'storeReachable' | 'lastStoreError'>;
  exports: ServeExportStatus[];
}

/** The error a server start fails with that a retry cannot fix (bad spec, no such point, damaged manifests). */
export class ServeInputError extends Error {
  override readonly name = 'ServeInputError';
}

export interface ServeOptions {
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** Stops the start (while it waits for the store) and the server. */
  signal?: AbortSignal;
  /** Write the status file (`<dir>/status.json`). @default true */
  statusFile?: boolean;
  /** Repository open options (tests: a store with fault injection). */
  openRepository?: (url: string, key: Buffer) => Promise<Repository>;
}

/** A running server: its status, and how to stop it. */
export interface RunningServe {
  status(): ServeStatus;
  /** Stops serving (connections end), releases the lock, writes the final status. */
  close(): Promise<void>;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

/**
 * Failures at start that waiting will not fix: bad input, damage, a prune, and no S3 credentials at all (the
 * host's configuration, not an outage). Anything else is retried while the store is away.
 */
const permanent = (err: unknown) =>
  (err instanceof Error && err.message.includes('CredentialsProviderError')) ||
  err instanceof DamagedObjectError ||
  err instanceof ServeInputError ||
  err instanceof RepositoryBusyError ||
  (err instanceof RepositoryError && (PERMANENT_REPOSITORY_ERRORS as readonly string[]).includes(err.name));

/** `fn`, retried with backoff while it fails for a reason a retry may fix (the store is away at start). */
async function retrying<T>(what: string, opts: ServeOptions, fn: () => Promise<T>): Promise<T> {
  let wait = 200;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (permanent(err) || opts.signal?.aborted) throw err;
      opts.log?.(`${what}: the store is not reachable, retrying`, { error: (err as Error).message });
      await sleep(wait, opts.signal);
      wait = Math.min(wait * 2, 5000);
    }
  }
}

/** The point's disk manifests of the spec's exports, checked against the group manifest. */
async function readManifests(repo: Repository, spec: ServeSpec) {
  const group = await repo.readGroupManifest(spec.group, spec.snapshotId).catch((err: unknown) => {
    if (err instanceof PointNotFoundError) throw new ServeInputError(err.message);
    throw err;
  });
  return Promise.all(
    spec.exports.map(async (e) => {
      const vm = group.vms.find((v) => v.domain === e.domain);
      if (!vm)
        throw new ServeInputError(
          `point ${spec.snapshotId} of group ${spec.group} has no VM ${e.domain} (it has ${group.vms.map((v) => v.domain).join(', ')})`,
        );
      if (!vm.disks.some((d) => d.target === e.target))
        throw new ServeInputError(
          `VM ${e.domain} of point ${spec.snapshotId} has no disk ${e.target} (it has ${vm.disks.map((d) => d.target).join(', ')})`,
        );
      return repo.readDiskManifest(spec.group, spec.snapshotId, e.domain, e.target);
    }),
  );
}

/** Writes `status` to `file` (0600, atomically). */
export function writeStatusFile(file: string, status: ServeStatus): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify(status, null, 2) + '\n', { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/** The shared read lock, taken again whenever it is lost (its refresh failed while the store was away). */
class ReadLockKeeper {
  private lock: RepositoryLock | undefined;
  private stopped = false;
  held = false;

  constructor(
    private readonly repo: Repository,
    private readonly owner: string | undefined,
    private readonly log: NonNullable<ServeOptions['log']>,
    private readonly changed: () => void,
  ) {}

  /** Takes the lock (read-only credentials: serves without one). @throws RepositoryBusyError while a prune runs */
  async take(): Promise<void> {
    try {
      this.lock = await RepositoryLock.acquire(this.repo, 'read', this.owner);
    } catch (err) {
      if (!(err instanceof StoreAccessDeniedError)) throw err;
      this.log('serving without a repository lock (read-only store access)', { why: err.message });
      return;
    }
    this.held = true;
    this.changed();
    this.lock.signal.addEventListener('abort', () => void this.retake(), { once: true });
  }

  private async retake(): Promise<void> {
    this.held = false;
    this.changed();
    this.log('repository lock lost, taking it again', { why: String(this.lock?.signal.reason) });
    for (let wait = 1000; !this.stopped; wait = Math.min(wait * 2, 30_000)) {
      await new Promise((r) => setTimeout(r, wait).unref());
      if (this.stopped) return;
      try {
        await this.take();
        this.log('repository lock taken again');
        return;
      } catch (err) {
        this.log('cannot take the repository lock yet', { error: (err as Error).message });
      }
    }
  }

  async release(): Promise<void> {
    this.stopped = true;
    await this.lock?.release().catch(() => undefined);
  }
}

/**
 * Serves the spec's exports until closed. Waits (retrying) while the store cannot be reached at start.
 * @throws ServeInputError (no such point, VM or disk), RepositoryBusyError (a prune runs), repository errors that a
 * retry cannot fix (bad key, no repository, damaged manifests)
 */
export async function runServe(spec: ServeSpec, opts: ServeOptions = {}): Promise<RunningServe> {
  const log = opts.log ?? (() => {});
  const files = serveFiles(spec.dir);
  const startedAt = new Date().toISOString();
  let state: ServeStatus['state'] = 'starting';
  let error: string | undefined;
  const key = readKeyFile(spec.keyFile);
  const open = opts.openRepository ?? ((url: string, k: Buffer) => Repository.open(url, k));
  const repo = await retrying('opening the repository', opts, () => open(spec.repo, key));
  let servers: NbdServer[] = [];
  const connections = new Map<string, number>();
  let writer: StatusWriter | undefined;
  const fetched = new Map<string, { bytesFetched: number }>();
  const cache = new ChunkCache(repo, {
    maxBytes: spec.cacheBytes ?? DEFAULT_CACHE_BYTES,
    maxFetches: spec.maxFetches ?? 8,
    onStoreState: (reachable, err) => {
      log(reachable ? 'the store is reachable again' : 'the store is not reachable: requests are held', {
        ...(err ? { error: err } : {}),
      });
      writer?.now();
    },
    onChange: () => writer?.soon(),
  });
  const locks = new ReadLockKeeper(repo, spec.owner, log, () => writer?.soon());
  let readers: DiskChunkReader[] = [];
  const status = (): ServeStatus => {
    const c = cache.snapshot();
    const exportStats = spec.exports.map((e, i) => ({
      name: e.exportName,
      domain: e.domain,
      target: e.target,
      socket: e.socket,
      size: readers[i]?.size ?? 0,
      connections: connections.get(`${e.socket}\0${e.exportName}`) ?? 0,
      requests: readers[i]?.stats.requests ?? 0,
      bytesServed: readers[i]?.stats.bytesServed ?? 0,
      bytesFetched: fetched.get(`${e.domain}\0${e.target}`)?.bytesFetched ?? 0,
      readErrors: readers[i]?.stats.readErrors ?? 0,
      blockStatusRequests: readers[i]?.stats.blockStatusRequests ?? 0,
    }));
    const { storeReachable, lastStoreError, ...cacheStats } = c;
    return {
      version: 1,
      pid: process.pid,
      state,
      ...(error ? { error } : {}),
      startedAt,
      updatedAt: new Date().toISOString(),
      repo: spec.repo,
      group: spec.group,
      snapshotId: spec.snapshotId,
      storeReachable,
      ...(lastStoreError ? { lastStoreError } : {}),
      heldRequests: cache.heldRequests,
      lockHeld: locks.held,
      bytesServed: exportStats.reduce((s, e) => s + e.bytesServed, 0),
      bytesFetched: c.bytesFetched,
      cache: cacheStats,
      exports: exportStats,
    };
  };
  if (opts.statusFile !== false) writer = new StatusWriter(files.status, status);
  writer?.now();
  const close = async () => {
    if (state === 'stopped') return;
    state = 'stopped';
    cache.close();
    await Promise.all(servers.map((s) => s.close()));
    await locks.release();
    repo.close();
    writer?.stop();
  };
  try {
    await retrying('locking the repository', opts, () => locks.take());
    const manifests = await retrying('reading the manifests', opts, () => readManifests(repo, spec));
    readers = manifests.map((m, i) => {
      const stats = { bytesFetched: 0 };
      fetched.set(`${spec.exports[i].domain}\0${spec.exports[i].target}`, stats);
      return new DiskChunkReader(m, cache, spec.readAhead ?? 8, stats);
    });
    servers = await listenAll(
      spec,
      readers,
      connections,
      () => writer?.soon(),
      () => writer?.now(),
    );
    state = 'serving';
    writer?.now();
    log('serving', { exports: spec.exports.map((e) => `${e.exportName} on ${e.socket}`) });
  } catch (err) {
    error = (err as Error).message;
    await close().catch(() => undefined);
    state = 'failed';
    writer?.now();
    throw err;
  }
  return { status, close };
}

/** One NBD server per socket of the spec, with the exports that name it. */
async function listenAll(
  spec: ServeSpec,
  readers: DiskChunkReader[],
  connections: Map<string, number>,
  changed: () => void,
  failed: () => void = changed,
): Promise<NbdServer[]> {
  const bySocket = new Map<string, NbdExport[]>();
  spec.exports.forEach((e, i) => {
    const r = readers[i];
    const exp: NbdExport = {
      name: e.exportName,
      size: r.size,
      description: `${spec.group}/${spec.snapshotId} ${e.domain} ${e.target} (read-only)`,
      // A failed read (a damaged chunk) is reported at once, not with the next throttled update.
      read: (offset, length) =>
        r.read(offset, length).catch((err: unknown) => {
          failed();
          throw err;
        }),
      // Zero chunks become holes of a structured reply: no zeros cross the socket.
      readSparse: (offset, length) =>
        r.readSparse(offset, length).catch((err: unknown) => {
          failed();
          throw err;
        }),
      // Block status from the manifest: zero chunks are holes, so a client (a block pull) can skip them.
      ...(spec.blockStatus === false
        ? {}
        : { allocation: (offset: number, length: number) => r.blockStatus(offset, length) }),
    };
    bySocket.set(e.socket, [...(bySocket.get(e.socket) ?? []), exp]);
  });
  const servers: NbdServer[] = [];
  try {
    for (const [socket, list] of bySocket) {
      servers.push(
        await NbdServer.listen(socket, list, {
          connection: (name, isOpen) => {
            if (name === undefined) return;
            const k = `${socket}\0${name}`;
            connections.set(k, (connections.get(k) ?? 0) + (isOpen ? 1 : -1));
            changed();
          },
          request: () => changed(),
        }),
      );
    }
  } catch (err) {
    await Promise.all(servers.map((s) => s.close()));
    if ((err as Error).message.includes('already listens')) throw new ServeInputError((err as Error).message);
    throw err;
  }
  return servers;
}

/** Writes the status file on change: at once for a state change, else at most every 250 ms. */
class StatusWriter {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly file: string,
    private readonly status: () => ServeStatus,
  ) {}

  now(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    try {
      writeStatusFile(this.file, this.status());
    } catch {
      // The directory was removed: nothing to report to.
    }
  }

  soon(): void {
    if (this.timer || this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.now();
    }, 250);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    this.now();
  }
}

/** Checks a spec (from a file or a caller). @throws ServeInputError naming every problem */
export function parseServeSpec(doc: unknown): ServeSpec {
  const parsed = ServeSpecSchema.safeParse(doc);
  if (!parsed.success)
    throw new ServeInputError(
      `invalid serve spec: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
    );
  if (dirname(parsed.data.dir) === parsed.data.dir) throw new ServeInputError('invalid serve spec: dir is /');
  return parsed.data;
}

/**
 * What a reader of a groupsnap repository accepts: the bounds and schemas of its documents (their types are in
 * common/repository-manifest.ts, re-exported here).
 */

import { z } from 'zod';
import type { DiskManifest } from '../common/repository-manifest';

export * from '../common/repository-manifest';

// ---- bounds and schemas of what a reader accepts (docs/repository-format.md, "Bounds") ----

/** Smallest and largest chunk size a repository may have. */
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;
/** Most chunks one disk manifest may name (16 TiB at 4 MiB chunks; JSON of ~280 MB). */
export const MAX_DISK_CHUNKS = 4 * 1024 * 1024;
/** Largest domain XML a VM manifest may hold. */
export const MAX_DOMAIN_XML = 4 * 1024 * 1024;

/**
 * Largest plaintext of each kind of object (sealed objects are at most {@link SEAL_OVERHEAD} bytes more: content is
 * only stored compressed when that makes it smaller). A reader refuses a larger object before reading it whole.
 */
export const MAX_OBJECT_BYTES = {
  config: 64 * 1024,
  lock: 64 * 1024,
  group: 16 * 1024 * 1024,
  vm: MAX_DOMAIN_XML + 4 * 1024 * 1024,
  disk: MAX_DISK_CHUNKS * 70 + 1024 * 1024,
  verified: 64 * 1024,
  drill: 4 * 1024 * 1024,
} as const;

const str = (max = 4096) => z.string().max(max);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const chunkId = z.string().regex(/^[0-9a-f]{64}$/);
const version = z.number().int().min(1).max(1000);

export const RepositoryConfigSchema = z.object({
  format: z.literal('groupsnap-repository'),
  version,
  id: z.string().regex(/^[0-9a-f]{32}$/),
  createdAt: str(64),
  chunkSize: z.number().int().min(MIN_CHUNK_SIZE).max(MAX_CHUNK_SIZE),
  cipher: z.literal('aes-256-gcm'),
  compression: z.literal('deflate-raw'),
  chunkHash: z.literal('hmac-sha256'),
  keyCheck: z.string().regex(/^[0-9a-f]{64}$/),
  mac: z.string().regex(/^[0-9a-f]{64}$/),
  objectLock: z
    .object({ mode: z.enum(['compliance', 'governance']), days: z.number().int().min(1).max(36500) })
    .optional(),
});

const diskStats = z.object({
  mode: z.enum(['incremental', 'full']),
  base: str(256).optional(),
  bytesRead: count,
  bytesNew: count,
  bytesUploaded: count,
  chunksNew: count,
  chunksData: count,
});

export const DiskManifestSchema = z
  .object({
    version,
    group: str(128),
    snapshotId: str(128),
    domain: str(256),
    target: str(64),
    sourceFormat: str(64),
    sourceImage: str(),
    virtualSize: count,
    chunkSize: z.number().int().min(MIN_CHUNK_SIZE).max(MAX_CHUNK_SIZE),
    chunks: z.array(chunkId.nullable()).max(MAX_DISK_CHUNKS),
    stats: diskStats,
    chunksRetainUntil: str(64).optional(),
  })
  .refine((m) => m.chunks.length === Math.ceil(m.virtualSize / m.chunkSize), {
    message: 'chunk count does not match the virtual size',
  });

export const VmManifestSchema = z.object({
  version,
  group: str(128),
  snapshotId: str(128),
  domain: str(256),
  host: str(256),
  domainXml: str(MAX_DOMAIN_XML),
  disks: z
    .array(
      z.object({
        target: str(64),
        manifest: str(1024),
        virtualSize: count,
        sourceFormat: str(64),
        sourceImage: str(),
        stats: diskStats,
      }),
    )
    .max(4096),
});

export const GroupManifestSchema = z.object({
  version,
  group: str(128),
  snapshotId: str(128),
  label: str().optional(),
  snapshotCreatedAt: str(64),
  exportedAt: str(64),
  vms: z
    .array(
      z.object({
        domain: str(256),
        host: str(256),
        manifest: str(1024),
        disks: z.array(z.object({ target: str(64), virtualSize: count })).max(4096),
      }),
    )
    .max(4096),
  stats: z.object({
    logicalBytes: count,
    bytesRead: count,
    bytesNew: count,
    bytesUploaded: count,
    chunksNew: count,
    chunksData: count,
  }),
  retainUntil: str(64).optional(),
});

export const VerificationRecordSchema = z.object({
  version,
  verifiedAt: str(64),
  readData: z.boolean(),
  ok: z.boolean(),
  problems: count,
});

/** The fields of a drill record a listing shows; the rest (evidence, VMs) is kept as stored. */
export const DrillRecordSchema = z.looseObject({
  drillId: str(256),
  status: z.enum(['pass', 'fail']),
  startedAt: str(64),
  toHost: str(256),
  rtoMs: count.optional(),
  restoreMs: count.optional(),
  readyMs: count.optional(),
  error: str(64 * 1024).optional(),
});

/** A lock object's body (plain JSON). */
export const LockBodySchema = z.looseObject({
  kind: z.enum(['export', 'read', 'prune']),
  owner: str(256),
  token: str(64).optional(),
});

/** A byte range of a disk. */
export interface DiskRange {
  offset: number;
  length: number;
}

/**
 * The runs of `length` bytes at `offset` (within the disk; not checked here) in order: those of `m`'s chunks without
 * data (all zeros or never written) as `zero`, the others as data. From the manifest alone.
 */
export function chunkRuns(
  m: Pick<DiskManifest, 'chunkSize' | 'chunks'>,
  offset: number,
  length: number,
): (DiskRange & { zero: boolean })[] {
  const runs: (DiskRange & { zero: boolean })[] = [];
  for (let at = offset; at < offset + length;) {
    const index = Math.floor(at / m.chunkSize);
    const end = Math.min(offset + length, (index + 1) * m.chunkSize);
    const zero = m.chunks[index] === null;
    const prev = runs[runs.length - 1];
    if (prev && prev.zero === zero) prev.length += end - at;
    else runs.push({ offset: at, length: end - at, zero });
    at = end;
  }
  return runs;
}

/**
 * The byte ranges of the disk that `m` holds as zeros (its chunks without data: all zeros or never written), merged,
 * in order, within the virtual size. An instant restore marks them in its overlays, so that neither the guest's
 * reads nor the hydration ask the repository for them.
 */
export function zeroRanges(m: Pick<DiskManifest, 'virtualSize' | 'chunkSize' | 'chunks'>): DiskRange[] {
  return chunkRuns(m, 0, m.virtualSize)
    .filter((r) => r.zero)
    .map(({ offset, length }) => ({ offset, length }));
}

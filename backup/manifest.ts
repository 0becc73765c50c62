/**
 * Manifest types of a groupsnap repository (format version 2; see docs/repository-format.md). Every manifest is
 * stored sealed (compressed + AES-256-GCM) as JSON. A point is a synthetic full backup: each disk manifest lists
 * every chunk of the disk, whatever export first uploaded it.
 */

import { z } from 'zod';

/**
 * 2: `config` authenticated (`mac`) and the chunk index (`index/`). groupsnap of format 1 refuses a newer format, so
 * it can neither prune past the index nor trust an unauthenticated config; this one refuses a config without `mac`.
 */
export const FORMAT_VERSION = 2;

/** The repository's `config` object: plain JSON, no secrets, authenticated by `mac`. */
export interface RepositoryConfig {
  format: 'groupsnap-repository';
  version: number;
  /** Random id: the HKDF salt of every derived key. */
  id: string;
  createdAt: string;
  /** Size of every chunk but a disk's last, in bytes. */
  chunkSize: number;
  cipher: 'aes-256-gcm';
  compression: 'deflate-raw';
  /** Keyed hash naming chunks. */
  chunkHash: 'hmac-sha256';
  /** HMAC-SHA256 of a constant under a key derived from the user's key: tells a wrong key before anything else. */
  keyCheck: string;
  /** HMAC-SHA256 (hex) of every other field under the derived `config mac` key: a changed config is refused. */
  mac: string;
}

/**
 * One disk of one VM at one point: its content as a list of fixed-size chunks at offsets `i * chunkSize`.
 * `chunks[i]` is a chunk id, or `null` for a chunk that reads as zeros (never stored).
 */
export interface DiskManifest {
  version: number;
  group: string;
  snapshotId: string;
  domain: string;
  /** Disk target in the domain XML (`vda`). */
  target: string;
  /** Format of the disk as the VM saw it (`qcow2`, `raw`): the chunks hold its guest-visible content (raw). */
  sourceFormat: string;
  /** The image file that held the point on its host, for reference. */
  sourceImage: string;
  /** Guest-visible size in bytes; the last chunk may be shorter than `chunkSize`. */
  virtualSize: number;
  chunkSize: number;
  chunks: (string | null)[];
  /** How this disk was exported. */
  stats: DiskExportStats;
}

export interface DiskExportStats {
  /** `incremental`: only what changed since `base` was read; `full`: every allocated extent was read. */
  mode: 'incremental' | 'full';
  /** Snapshot id of the earlier point this one was read against (incremental). */
  base?: string;
  /** Bytes read from the image chain. */
  bytesRead: number;
  /** Plaintext bytes of chunks this export uploaded (new to the repository). */
  bytesNew: number;
  /** Stored (sealed) bytes this export uploaded. */
  bytesUploaded: number;
  chunksNew: number;
  /** Chunks that are not zero. */
  chunksData: number;
}

/** One VM at one point: its definition and its disks. */
export interface VmManifest {
  version: number;
  group: string;
  snapshotId: string;
  domain: string;
  /** Host whose worker exported it (where the VM lived). */
  host: string;
  /** The domain XML at export time (inactive definition), for a restore elsewhere. */
  domainXml: string;
  disks: VmDiskEntry[];
}

export interface VmDiskEntry {
  target: string;
  /** Object key of the disk's manifest, relative to the repository root. */
  manifest: string;
  virtualSize: number;
  sourceFormat: string;
  sourceImage: string;
  stats: DiskExportStats;
}

/** One recovery point of a group: written last; a point without it does not exist. */
export interface GroupManifest {
  version: number;
  group: string;
  snapshotId: string;
  label?: string;
  /** When the group snapshot was taken (from its id or catalog). */
  snapshotCreatedAt: string;
  /** When this manifest was written. */
  exportedAt: string;
  vms: GroupVmEntry[];
  stats: PointStats;
}

export interface GroupVmEntry {
  domain: string;
  host: string;
  /** Object key of the VM's manifest. */
  manifest: string;
  disks: { target: string; virtualSize: number }[];
}

export interface PointStats {
  /** Sum of the disks' virtual sizes. */
  logicalBytes: number;
  bytesRead: number;
  /** Plaintext bytes new in this point (uploaded by its export). */
  bytesNew: number;
  bytesUploaded: number;
  chunksNew: number;
  chunksData: number;
}

/** Written by `repo verify` beside a point's group manifest. */
export interface VerificationRecord {
  version: number;
  verifiedAt: string;
  readData: boolean;
  ok: boolean;
  problems: number;
}

/** Sums disk stats into point stats. */
export function sumStats(disks: { virtualSize: number; stats: DiskExportStats }[]): PointStats {
  const total: PointStats = {
    logicalBytes: 0,
    bytesRead: 0,
    bytesNew: 0,
    bytesUploaded: 0,
    chunksNew: 0,
    chunksData: 0,
  };
  for (const d of disks) {
    total.logicalBytes += d.virtualSize;
    total.bytesRead += d.stats.bytesRead;
    total.bytesNew += d.stats.bytesNew;
    total.bytesUploaded += d.stats.bytesUploaded;
    total.chunksNew += d.stats.chunksNew;
    total.chunksData += d.stats.chunksData;
  }
  return total;
}

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

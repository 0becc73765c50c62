/**
 * The documents of a groupsnap repository (format version 2; see docs/repository-format.md): pure types, shared by
 * the repository code (backup/), the export workflow and the client. Every manifest is stored sealed (compressed +
 * AES-256-GCM) as JSON. A point is a synthetic full backup: each disk manifest lists every chunk of the disk,
 * whatever export first uploaded it.
 */

/**
 * 2: `config` authenticated (`mac`) and the chunk index (`index/`). groupsnap of format 1 refuses a newer format, so
 * it can neither prune past the index nor trust an unauthenticated config; this one refuses a config without `mac`.
 */
export const FORMAT_VERSION = 2;

/**
 * 3: a repository with Object Lock (`config.objectLock`, authenticated; index objects dated). A groupsnap of format 2
 * refuses it as newer, so it never writes into it without locks nor prunes past them; unlocked repositories stay 2.
 */
export const OBJECT_LOCK_FORMAT_VERSION = 3;

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
  /** Object Lock (format 3): every point's objects are locked `days` days from its export, in `mode`. */
  objectLock?: { mode: 'compliance' | 'governance'; days: number };
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
  /** Object Lock: every chunk named here is locked until at least this date (ISO 8601). */
  chunksRetainUntil?: string;
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
  /** Object Lock: the point (its manifests and every chunk it names) is locked until this date (ISO 8601). */
  retainUntil?: string;
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

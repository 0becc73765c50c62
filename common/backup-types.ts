/**
 * The contract between the export workflow, the host's export activities, the client and the CLI. Pure types and
 * names (imported by workflows). The repository key never appears here: each host reads it from its key file.
 */
import type { DiskExportStats, GroupVmEntry, PointStats, VmDiskEntry } from './repository-manifest';
import { FAILURES } from './failures';
import type { VmRef } from './types';

export type { DiskExportStats, GroupVmEntry, PointStats, VmDiskEntry };

/** Environment variables standing for `--repo` and `--key-file`. */
export const REPO_ENV = 'GROUPSNAP_REPO';
export const REPO_KEY_FILE_ENV = 'GROUPSNAP_REPO_KEY_FILE';

/** Failure type: the host's worker has no key file for repositories. */
export const REPO_KEY_MISSING = FAILURES.repoKeyMissing.type;
/** Failure type of an export that failed (its details hold the partial {@link ExportResult}). */
export const EXPORT_FAILED = FAILURES.exportFailed.type;

/** Export of one group snapshot to a repository. */
export interface ExportInput {
  group: string;
  snapshotId: string;
  /** Repository URL (`s3://bucket/prefix`, `file:///path`); the key comes from each host's key file. */
  repository: string;
  /** VMs to export; default: every VM whose catalog records the snapshot, on every registered host. */
  vms?: VmRef[];
  /** Read bandwidth limit per disk, bytes per second. */
  maxBytesPerSecond?: number;
  /** Disks exported at once across the group. @default 4 */
  parallelDisks?: number;
}

/** What one host activity exports: one disk. */
export interface ExportDiskRequest {
  repository: string;
  group: string;
  snapshotId: string;
  domain: string;
  target: string;
  maxBytesPerSecond?: number;
}

export interface ExportDiskReport {
  domain: string;
  target: string;
  manifestKey: string;
  virtualSize: number;
  sourceFormat: string;
  sourceImage: string;
  stats: DiskExportStats;
  /** Chunks an earlier, interrupted attempt had already stored (not read again). */
  chunksResumed: number;
}

export interface WriteVmManifestRequest {
  repository: string;
  group: string;
  snapshotId: string;
  domain: string;
  disks: VmDiskEntry[];
}

export interface WriteGroupManifestRequest {
  repository: string;
  group: string;
  snapshotId: string;
  label?: string;
  snapshotCreatedAt: string;
  vms: GroupVmEntry[];
  stats: PointStats;
}

/** Live progress of one disk, reported by its activity to the workflow (signal `exportProgress`). */
export interface DiskProgressReport {
  domain: string;
  target: string;
  bytesDone: number;
  bytesTotal: number;
  bytesUploaded: number;
}

export interface ExportResult {
  workflowId: string;
  group: string;
  snapshotId: string;
  repository: string;
  status: 'completed' | 'failed';
  vms: { domain: string; host: string; disks: (ExportDiskReport | { target: string; error: string })[] }[];
  /** Totals of the point (when completed). */
  stats?: PointStats & {
    /** Bytes of data chunks the point lists over bytes this export uploaded new (>= 1; higher is better). */
    dedupRatio: number;
  };
  durationMs: number;
  error?: string;
}

/**
 * Short, stable tag of a repository URL for workflow ids (FNV-1a, pure: usable in workflows). Two exports of one
 * point to one repository share a workflow id, so the second joins the first.
 */
export function repositoryTag(url: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < url.length; i++) {
    h ^= url.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

/** Workflow id of the export of one point to one repository. */
export function exportWorkflowId(group: string, snapshotId: string, repository: string): string {
  return `export/${group}/${snapshotId}/${repositoryTag(repository)}`;
}

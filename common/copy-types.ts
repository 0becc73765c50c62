/**
 * The contract of the copy of a group's points into a second repository (`backup/copy.ts`) as a workflow: its
 * input, progress and result, its task queue and workflow id. Pure (imported by workflows). Neither key nor
 * credentials appear here: the copy worker reads them from its own files.
 */
import { FAILURES } from './failures';
import { repositoryTag } from './backup-types';

/**
 * Task queue of the copy activities: served by `groupsnap copy-worker` on the admin side, a machine that holds
 * the source's key and read access and the copy's credentials, never by the hypervisor hosts (a host that is taken
 * over must not reach the copy).
 */
export const COPY_TASK_QUEUE = 'groupsnap-copy';

/** Failure type of a copy that failed (its details hold the {@link CopyPointResult}). */
export const COPY_FAILED = FAILURES.copyFailed.type;

/** Signal the copy activity sends its workflow with its progress (shown in the Temporal UI's current details). */
export const COPY_PROGRESS_SIGNAL = 'copyProgress';

export interface CopyPointInput {
  group: string;
  snapshotId: string;
  /** The repository the point is in. */
  from: string;
  /** The copy (created when absent). */
  to: string;
  /** Chunks read back from the copy and authenticated. @default 'sample' */
  verify?: 'sample' | 'all';
}

export interface CopyProgressReport {
  chunksDone: number;
  chunksTotal: number;
  chunksUploaded: number;
  bytesUploaded: number;
}

export interface CopyPointResult {
  workflowId: string;
  group: string;
  snapshotId: string;
  from: string;
  to: string;
  status: 'completed' | 'failed';
  /** `copied` now, or `present` in the copy already. */
  point?: 'copied' | 'present';
  resealed?: boolean;
  chunks?: number;
  chunksUploaded?: number;
  bytesUploaded?: number;
  chunksVerified?: number;
  verify?: 'sample' | 'all';
  durationMs: number;
  error?: string;
}

/** Workflow id of the copy of one point to one repository (a second request joins the first). */
export function copyWorkflowId(group: string, snapshotId: string, to: string): string {
  return `copy/${group}/${snapshotId}/${repositoryTag(to)}`;
}

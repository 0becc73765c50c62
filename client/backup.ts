/**
 * Off-host backups from TypeScript: start or join the export of a group snapshot (a Temporal workflow whose
 * activities run on the VMs' hosts, which hold the repository key), and the repository operations that run where
 * the key is (init, list, verify, prune: no Temporal needed).
 */
import {
  WorkflowFailedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  type Client,
  type WorkflowHandle,
  type WorkflowHandleWithFirstExecutionRunId,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { readKeyFile } from '../backup/crypto';
import { RepositoryInputError } from '../backup/errors';
import { pruneRepository, type PruneOptions, type PruneResult } from '../backup/prune';
import { Repository, type PointListing, type PointSummary } from '../backup/repository';
import { parseRepositoryUrl } from '../backup/store';
import { verifyRepository, type VerifyOptions, type VerifyResult } from '../backup/verify';
import {
  EXPORT_FAILED,
  exportWorkflowId,
  type DiskProgressReport,
  type ExportInput,
  type ExportResult,
} from '../common/backup-types';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { BadInputError } from '../common/failures';
import { assertSafeName } from '../common/validation';
import type { exportGroupSnapshot as exportWorkflow } from '../workflows';

export type {
  PointListing,
  ExportInput,
  ExportResult,
  DiskProgressReport,
  PointSummary,
  PruneOptions,
  PruneResult,
  VerifyOptions,
  VerifyResult,
};
export { exportWorkflowId };

export type ExportHandle = WorkflowHandle<typeof exportWorkflow>;

/** An export failed; `result` says which disks were exported and what failed (the point was not written). */
export class ExportFailedError extends Error {
  override readonly name = 'ExportFailedError';
  constructor(
    message: string,
    readonly result: ExportResult | undefined,
  ) {
    super(message);
  }
}

/** Checks an export request before anything starts. @throws BadInputError */
export function normalizeExportInput(input: ExportInput): ExportInput {
  assertSafeName('group name', input.group);
  assertSafeName('snapshot id', input.snapshotId);
  try {
    parseRepositoryUrl(input.repository);
  } catch (err) {
    if (err instanceof RepositoryInputError) throw new BadInputError(err.message);
    throw err;
  }
  if (
    input.maxBytesPerSecond !== undefined &&
    !(Number.isInteger(input.maxBytesPerSecond) && input.maxBytesPerSecond > 0)
  )
    throw new BadInputError('maxBytesPerSecond must be a positive integer');
  if (input.parallelDisks !== undefined && !(Number.isInteger(input.parallelDisks) && input.parallelDisks > 0))
    throw new BadInputError('parallelDisks must be a positive integer');
  return input;
}

/**
 * Starts the export of a group snapshot, or joins the one already running for the same point and repository (two
 * requests never export a point twice at once; a finished export may be run again and adds nothing new).
 */
export async function startExport(
  client: Client,
  input: ExportInput,
): Promise<WorkflowHandleWithFirstExecutionRunId<typeof exportWorkflow>> {
  normalizeExportInput(input);
  return client.workflow.start('exportGroupSnapshot', {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: exportWorkflowId(input.group, input.snapshotId, input.repository),
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
    workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
    args: [input],
    typedSearchAttributes: [
      { key: GroupsnapGroup, value: input.group },
      { key: GroupsnapSnapshotId, value: input.snapshotId },
    ],
    staticSummary: `Export snapshot ${input.snapshotId} of group ${input.group} to ${input.repository}`,
  });
}

/** The result of an export, or its failure as {@link ExportFailedError} / {@link BadInputError}. */
export async function exportResult(handle: ExportHandle): Promise<ExportResult> {
  try {
    return await handle.result();
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      let cause: unknown = err.cause;
      while (cause instanceof Error && !(cause instanceof ApplicationFailure) && cause.cause) cause = cause.cause;
      if (cause instanceof ApplicationFailure) {
        if (cause.type === 'GroupsnapBadInput') throw new BadInputError(cause.message);
        if (cause.type === EXPORT_FAILED)
          throw new ExportFailedError(cause.message, cause.details?.[0] as ExportResult);
      }
      throw new ExportFailedError((cause as Error | undefined)?.message ?? err.message, undefined);
    }
    throw err;
  }
}

/** Exports a group snapshot and waits for it (see {@link startExport}). */
export async function exportGroupSnapshot(client: Client, input: ExportInput): Promise<ExportResult> {
  return exportResult(await startExport(client, input));
}

/** Live per-disk progress of a running export. */
export async function exportProgress(handle: ExportHandle): Promise<DiskProgressReport[]> {
  return handle.query<DiskProgressReport[]>('exportProgress');
}

/** Opens a repository with a key file (32 bytes, raw or base64). */
export function openRepository(url: string, keyFile: string): Promise<Repository> {
  return Repository.open(url, readKeyFile(keyFile));
}

/** Creates a repository; returns its config (chunk size, id). */
export async function initRepository(
  url: string,
  keyFile: string,
  opts: { chunkSize?: number; objectLock?: { days: number; mode: 'compliance' | 'governance' } } = {},
) {
  const repo = await Repository.init(url, readKeyFile(keyFile), opts);
  repo.close();
  return repo.config;
}

async function withRepository<T>(url: string, keyFile: string, fn: (repo: Repository) => Promise<T>): Promise<T> {
  const repo = await openRepository(url, keyFile);
  try {
    return await fn(repo);
  } finally {
    repo.close();
  }
}

/** Every point in the repository (or of one group), oldest first. */
export function listRepositoryPoints(
  url: string,
  keyFile: string,
  opts: { group?: string } = {},
): Promise<PointSummary[]> {
  return withRepository(url, keyFile, (repo) => repo.listPoints(opts));
}

/** {@link listRepositoryPoints}, and the points whose group manifest is damaged (what `repo list` marks). */
export function listRepositoryReport(
  url: string,
  keyFile: string,
  opts: { group?: string } = {},
): Promise<PointListing> {
  return withRepository(url, keyFile, (repo) => repo.listPointsReport(opts));
}

/** Checks every point's manifests and chunks (with `readData`, every chunk's content). */
export function verifyRepositoryAt(url: string, keyFile: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  return withRepository(url, keyFile, (repo) => verifyRepository(repo, opts));
}

/** Off-host retention and chunk sweep. */
export function pruneRepositoryAt(url: string, keyFile: string, opts: PruneOptions = {}): Promise<PruneResult> {
  return withRepository(url, keyFile, (repo) => pruneRepository(repo, opts));
}

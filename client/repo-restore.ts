/** Typed client for restores from the off-host repository onto another host (workflow `restoreFromRepo`). */
import { randomBytes } from 'node:crypto';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { readKeyFile } from '../backup/crypto';
import { PointNotFoundError, RepositoryError, TransientStoreError } from '../backup/errors';
import { Repository } from '../backup/repository';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import {
  normalizeRepoRestoreInput,
  repoRestoreWorkflowId,
  type RepoRestoreInput,
  type RepoRestoreResult,
} from '../common/repo-restore';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { BadInputError } from '../common/failures';
import { hostsWithoutWorker } from './index';
import { settle } from './settle';

export type { RepoRestoreInput, RepoRestoreResult } from '../common/repo-restore';

export interface RepoRestoreOptions {
  /**
   * A key file readable here: the point is checked before the workflow starts (wrong key, unknown point: bad
   * input at once). The target host's worker reads its own key file; the key never passes through Temporal.
   */
  keyFile?: string;
}

/** Checks the request (and, with a key file, that the point exists) and starts the restore workflow. */
export async function startRestoreFromRepo(
  client: Client,
  input: RepoRestoreInput,
  options: RepoRestoreOptions = {},
): Promise<WorkflowHandle> {
  const normalized = normalizeRepoRestoreInput(input);
  if (options.keyFile) await checkPoint(normalized.repo, options.keyFile, normalized.group, normalized.snapshotId);
  const missing = await hostsWithoutWorker(client, [normalized.toHost]);
  if (missing.length) throw new BadInputError(`no worker serves host ${normalized.toHost}`);
  const restoreId = normalized.restoreId ?? `rr-${randomBytes(4).toString('hex')}`;
  return client.workflow.start('restoreFromRepo', {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: repoRestoreWorkflowId(normalized.group, restoreId),
    args: [{ ...input, restoreId }],
    typedSearchAttributes: [
      { key: GroupsnapGroup, value: normalized.group },
      { key: GroupsnapSnapshotId, value: normalized.snapshotId },
    ],
    staticSummary:
      `Restore ${normalized.group} ${normalized.snapshotId} from ${normalized.repo} on ${normalized.toHost} ` +
      (normalized.mode === 'clone' ? '(as clones)' : '(as the original VMs)'),
  });
}

/**
 * Restores a group point from the repository onto `toHost`, all VMs or none. A failed restore is rolled back and
 * returned with `status: 'failed'`.
 * @throws BadInputError when the request is invalid, the point is unknown, the target lacks space or names are
 * taken (nothing was written then)
 */
export async function restoreFromRepo(
  client: Client,
  input: RepoRestoreInput,
  options: RepoRestoreOptions = {},
): Promise<RepoRestoreResult> {
  const handle = await startRestoreFromRepo(client, input, options);
  return settle(handle.result() as Promise<RepoRestoreResult>);
}

async function checkPoint(url: string, keyFile: string, group: string, snapshotId: string): Promise<void> {
  let repo: Repository | undefined;
  try {
    repo = await Repository.open(url, readKeyFile(keyFile));
    await repo.readGroupManifest(group, snapshotId);
  } catch (err) {
    // A store that is down or busy is not bad input (exit 1, retry later); the rest a retry cannot fix.
    if (err instanceof PointNotFoundError) throw new BadInputError(err.message);
    if (err instanceof RepositoryError && !(err instanceof TransientStoreError) && err.name !== 'RepositoryBusyError')
      throw new BadInputError(err.message);
    throw err;
  } finally {
    repo?.close();
  }
}

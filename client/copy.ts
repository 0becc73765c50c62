/**
 * A second copy of a repository's points (`backup/copy.ts`), from TypeScript: runs here, with both keys and both
 * repositories' credentials (the target's from `GROUPSNAP_S3_CREDENTIALS_FILE`, backup/credentials.ts).
 */
import {
  WorkflowFailedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { copyRepository, openCopyTarget, type CopyOptions, type CopyResult } from '../backup/copy';
import { RepositoryInputError } from '../backup/errors';
import { parseRepositoryUrl } from '../backup/store';
import { COPY_FAILED, copyWorkflowId, type CopyPointInput, type CopyPointResult } from '../common/copy-types';
import { BadInputError } from '../common/failures';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { assertSafeName } from '../common/validation';
import { readKeyFile } from '../backup/crypto';
import { Repository } from '../backup/repository';

export type { CopyOptions, CopyResult, CopyPointInput, CopyPointResult };

export interface CopyAtOptions extends CopyOptions {
  /** The target's key file; none: the source's key (the target is then a replica of the source). */
  toKeyFile?: string;
}

/**
 * Copies points of the repository at `from` into the one at `to` (created when absent). Returns what was copied,
 * and whether the target was created now.
 */
export async function copyRepositoryAt(
  from: string,
  to: string,
  keyFile: string,
  opts: CopyAtOptions = {},
): Promise<CopyResult & { created: boolean }> {
  const key = readKeyFile(keyFile);
  const toKey = opts.toKeyFile ? readKeyFile(opts.toKeyFile) : undefined;
  const source = await Repository.open(from, key);
  try {
    const { repo: target, created } = await openCopyTarget(source, key, to, toKey);
    try {
      return { ...(await copyRepository(source, target, opts)), created };
    } finally {
      target.close();
    }
  } finally {
    source.close();
  }
}

/**
 * Starts the copy of one exported point to a second repository as a workflow (`copyGroupPoint`, run by the copy
 * worker), or joins the one running for the same point and copy; returns its handle.
 */
export async function startCopy(client: Client, input: CopyPointInput) {
  assertSafeName('group name', input.group);
  assertSafeName('snapshot id', input.snapshotId);
  for (const u of [input.from, input.to]) {
    try {
      parseRepositoryUrl(u);
    } catch (err) {
      if (err instanceof RepositoryInputError) throw new BadInputError(err.message);
      throw err;
    }
  }
  return client.workflow.start('copyGroupPoint', {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: copyWorkflowId(input.group, input.snapshotId, input.to),
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
    workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
    args: [input],
    typedSearchAttributes: [
      { key: GroupsnapGroup, value: input.group },
      { key: GroupsnapSnapshotId, value: input.snapshotId },
    ],
    staticSummary: `Copy snapshot ${input.snapshotId} of group ${input.group} to ${input.to}`,
  });
}

/** The result of a copy workflow; a failed copy's result (with its error) is returned, not thrown. */
export async function copyResult(handle: WorkflowHandle): Promise<CopyPointResult> {
  try {
    return (await handle.result()) as CopyPointResult;
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      let cause: unknown = err.cause;
      while (cause instanceof Error && !(cause instanceof ApplicationFailure) && cause.cause) cause = cause.cause;
      if (cause instanceof ApplicationFailure) {
        if (cause.type === 'GroupsnapBadInput') throw new BadInputError(cause.message);
        if (cause.type === COPY_FAILED && cause.details?.[0]) return cause.details[0] as CopyPointResult;
      }
    }
    throw err;
  }
}

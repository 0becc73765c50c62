/**
 * Nexus operations of groupsnap's service for the off-host repository: `exportGroupSnapshot` (asynchronous, backed by
 * the export workflow), `listRepository` and `verifyRepository` (synchronous). The repository key never travels with a request: the
 * export's hosts read their own key file, and the listing reads the key file of the worker serving the operation
 * (`GROUPSNAP_REPO_KEY_FILE`).
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowIdReusePolicy } from '@temporalio/client';
import { startWorkflow, WorkflowRunOperationHandler } from '@temporalio/nexus';
import * as nexus from 'nexus-rpc';
import { listRepositoryPoints, normalizeExportInput, verifyRepositoryAt } from '../client/backup';
import type { VerifyResult } from '../backup/verify';
import type { NexusListRepositoryInput, NexusRepositoryPoints, NexusVerifyRepositoryInput } from '../client/nexus';
import { exportWorkflowId, REPO_KEY_FILE_ENV, type ExportInput, type ExportResult } from '../common/backup-types';
import { BadInputError, failure } from '../common/failures';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { assertSafeName } from '../common/validation';
import type { exportGroupSnapshot } from '../workflows';

function badRequest(message: string): nexus.HandlerError {
  return new nexus.HandlerError('BAD_REQUEST', message, {
    cause: failure('badInput', message),
    retryableOverride: false,
  });
}

function requestObject(input: unknown, operation: string): Record<string, unknown> {
  if (typeof input !== 'object' || input === null || Array.isArray(input))
    throw badRequest(`${operation} takes an object, got ${JSON.stringify(input)}`);
  return input as Record<string, unknown>;
}

export const exportOperation = new WorkflowRunOperationHandler<ExportInput, ExportResult>(async (ctx, input) => {
  requestObject(input, 'exportGroupSnapshot');
  try {
    normalizeExportInput(input);
  } catch (err) {
    if (err instanceof BadInputError) throw badRequest(err.message);
    throw err;
  }
  try {
    return await startWorkflow<typeof exportGroupSnapshot>(ctx, 'exportGroupSnapshot', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: exportWorkflowId(input.group, input.snapshotId, input.repository),
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      args: [input],
      typedSearchAttributes: [
        { key: GroupsnapGroup, value: input.group },
        { key: GroupsnapSnapshotId, value: input.snapshotId },
      ],
      staticSummary: `Export snapshot ${input.snapshotId} of group ${input.group}, asked through Nexus`,
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError)
      throw badRequest(`an export of ${input.snapshotId} of group ${input.group} to that repository is running`);
    throw err;
  }
});

/** The repository URL, group and key file of a synchronous repository request, or BAD_REQUEST. */
function repositoryRequest(input: unknown, operation: string): { repository: string; group?: string; keyFile: string } {
  const req = requestObject(input, operation);
  if (typeof req.repository !== 'string' || !/^(s3|file):\/\//.test(req.repository))
    throw badRequest(`repository must be an s3:// or file:// URL, not ${JSON.stringify(req.repository)}`);
  if (req.group !== undefined) {
    try {
      assertSafeName('group name', req.group as string);
    } catch (err) {
      throw badRequest((err as Error).message);
    }
  }
  const keyFile = process.env[REPO_KEY_FILE_ENV];
  if (!keyFile) throw badRequest(`the worker serving groupsnap's Nexus service has no ${REPO_KEY_FILE_ENV}`);
  return { repository: req.repository, ...(req.group !== undefined ? { group: req.group as string } : {}), keyFile };
}

async function asBadRequest<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof BadInputError) throw badRequest(err.message);
    throw err;
  }
}

export async function listRepository(
  _ctx: nexus.StartOperationContext,
  input: NexusListRepositoryInput,
): Promise<NexusRepositoryPoints> {
  const { repository, group, keyFile } = repositoryRequest(input, 'listRepository');
  const points = await asBadRequest(() => listRepositoryPoints(repository, keyFile, group ? { group } : {}));
  return { repository, points };
}

/** Checks every point's manifests and chunks exist (with `readData`, every chunk's content: may take long). */
export async function verifyRepository(
  _ctx: nexus.StartOperationContext,
  input: NexusVerifyRepositoryInput,
): Promise<VerifyResult> {
  const { repository, group, keyFile } = repositoryRequest(input, 'verifyRepository');
  const readData = (input as { readData?: unknown }).readData === true;
  return asBadRequest(() => verifyRepositoryAt(repository, keyFile, { ...(group ? { group } : {}), readData }));
}

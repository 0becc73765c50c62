/** Restore of a group to one of its snapshots, as clones or in place. */
import { Client } from '@temporalio/client';
import {
  assertRestoreConfirmed,
  normalizeRestoreInput,
  restoreWorkflowId,
  type RestoreInput,
  type RestoreResult,
} from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { GroupsnapGroup } from '../common/search-attributes';
import { settle, shortId } from './settle';

/**
 * Restores a group to a snapshot, as clones beside the originals or in place (discarding the VMs' current state,
 * which is kept on disk). All VMs or none: a failure is rolled back and returned with `status: 'failed'`.
 */
export async function restoreGroup(client: Client, input: RestoreInput): Promise<RestoreResult> {
  const normalized = normalizeRestoreInput(input);
  assertRestoreConfirmed(normalized);
  const restoreId = normalized.restoreId ?? `rs-${shortId()}`;
  return settle(
    client.workflow.execute('restoreGroup', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: restoreWorkflowId(normalized.group, normalized.snapshotId, restoreId),
      args: [{ ...normalized, restoreId }],
      typedSearchAttributes: [{ key: GroupsnapGroup, value: normalized.group }],
      staticSummary: `Restore group ${normalized.group} to ${normalized.snapshotId} (${normalized.mode === 'clone' ? 'as clones' : 'in place'})`,
    }) as Promise<RestoreResult>,
  );
}

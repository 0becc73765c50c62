/** Snapshots of a named group: take one now, list them, delete one. */
import { Client, WorkflowNotFoundError } from '@temporalio/client';
import {
  deleteSnapshotWorkflowId,
  groupSnapshotsIn,
  groupWorkflowId,
  type DeleteSnapshotResult,
  type GroupRunResult,
  type GroupSnapshotListing,
  type SnapshotNowOptions,
} from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { GroupsnapGroup } from '../common/search-attributes';
import { BadInputError } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { inventory } from './hosts';
import { settle, shortId } from './settle';

/**
 * "Snapshot now" on a named group: an Update on the group's entity workflow that returns the outcome of the group
 * snapshot; concurrent requests for the same group join the one in flight. A failed-and-compensated snapshot is a
 * result with `snapshot.status: 'failed'`.
 * @throws BadInputError for an unknown group, bad options, or a selector that matches no VM.
 */
export async function snapshotNamedGroup(
  client: Client,
  group: string,
  options: SnapshotNowOptions = {},
): Promise<GroupRunResult> {
  assertSafeName('group name', group);
  try {
    return await settle(
      client.workflow
        .getHandle(groupWorkflowId(group))
        .executeUpdate<GroupRunResult, [SnapshotNowOptions]>('snapshotNow', { args: [options] }),
    );
  } catch (err) {
    // No entity, or a deleted (completed) one.
    if (err instanceof WorkflowNotFoundError) throw new BadInputError(`unknown group ${JSON.stringify(group)}`);
    throw err;
  }
}

/** The group's snapshots, newest first, as recorded on its VMs. */
export async function listGroupSnapshots(client: Client, group: string): Promise<GroupSnapshotListing[]> {
  assertSafeName('group name', group);
  return groupSnapshotsIn(await inventory(client), group);
}

/**
 * Deletes one group snapshot on every VM (online block commit). A partial failure returns `status: 'failed'` with
 * the per-VM outcome; run it again to retry.
 * @throws BadInputError for an unknown snapshot, or one a clone or in-place restore is built on.
 */
export async function deleteGroupSnapshot(
  client: Client,
  group: string,
  snapshotId: string,
): Promise<DeleteSnapshotResult> {
  assertSafeName('group name', group);
  assertSafeName('snapshot id', snapshotId);
  return settle(
    client.workflow.execute('deleteGroupSnapshot', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: `${deleteSnapshotWorkflowId(group, snapshotId)}/${shortId()}`,
      args: [{ group, snapshotId }],
      typedSearchAttributes: [{ key: GroupsnapGroup, value: group }],
      staticSummary: `Delete snapshot ${snapshotId} of group ${group}`,
    }) as Promise<DeleteSnapshotResult>,
  );
}

/**
 * Typed client functions for pinned snapshots and for the clone / in-place restore records that keep snapshots from
 * being deleted.
 */
import { randomBytes } from 'node:crypto';
import { ApplicationFailure, Client, WorkflowFailedError } from '@temporalio/client';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import {
  checkPinInput,
  checkReleaseInput,
  restoreRecordsIn,
  type PinGroupSnapshotResult,
  type ReleaseRestoreRecordsInput,
  type ReleaseRestoreRecordsResult,
  type RestoreRecordListing,
} from '../common/pins';
import { GroupsnapGroup } from '../common/search-attributes';
import { BAD_INPUT, BadInputError } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { inventory } from './hosts';

export type { PinGroupSnapshotResult, ReleaseRestoreRecordsInput, ReleaseRestoreRecordsResult, RestoreRecordListing };

async function run<T>(
  client: Client,
  workflowType: string,
  id: string,
  args: unknown[],
  summary: string,
  group?: string,
) {
  try {
    return (await client.workflow.execute(workflowType, {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: `${id}/${randomBytes(4).toString('hex')}`,
      args,
      staticSummary: summary,
      ...(group ? { typedSearchAttributes: [{ key: GroupsnapGroup, value: group }] } : {}),
    })) as T;
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause)
        if (e instanceof ApplicationFailure && e.type === BAD_INPUT) throw new BadInputError(e.message);
    }
    throw err;
  }
}

/**
 * Pins a group snapshot on every VM that holds it: retention keeps it (whatever its policy) and deleting it is
 * refused until it is unpinned.
 * @throws BadInputError for an unsafe name or an unknown snapshot; nothing is changed then.
 */
export function pinGroupSnapshot(client: Client, group: string, snapshotId: string): Promise<PinGroupSnapshotResult> {
  return setPinned(client, group, snapshotId, true);
}

/** Unpins a group snapshot: retention and deletion treat it like any other again. */
export function unpinGroupSnapshot(client: Client, group: string, snapshotId: string): Promise<PinGroupSnapshotResult> {
  return setPinned(client, group, snapshotId, false);
}

async function setPinned(client: Client, group: string, snapshotId: string, pinned: boolean) {
  checkPinInput({ group, snapshotId, pinned });
  return run<PinGroupSnapshotResult>(
    client,
    'pinGroupSnapshot',
    `snapshot-${pinned ? 'pin' : 'unpin'}/${group}/${snapshotId}`,
    [{ group, snapshotId, pinned }],
    `${pinned ? 'Pin' : 'Unpin'} snapshot ${snapshotId} of group ${group}`,
    group,
  );
}

/**
 * Every clone and in-place restore record on the registered hosts (of `group`'s snapshots only, when given), with
 * the snapshots each keeps from being deleted.
 */
export async function listRestoreRecords(client: Client, group?: string): Promise<RestoreRecordListing[]> {
  if (group !== undefined) assertSafeName('group name', group);
  return restoreRecordsIn(await inventory(client), group);
}

/**
 * Releases clone and in-place restore records by clone name or restore id (optionally only on some VMs): a clone is
 * removed (powered off, undefined, its overlays deleted); an in-place restore becomes final (no undo; its discarded
 * layers that nothing else uses are deleted). The snapshots they were built on can then be deleted.
 * @throws BadInputError for unsafe input or an id no record has; nothing is changed then.
 */
export async function releaseRestoreRecords(
  client: Client,
  input: ReleaseRestoreRecordsInput,
): Promise<ReleaseRestoreRecordsResult> {
  checkReleaseInput(input);
  return run<ReleaseRestoreRecordsResult>(
    client,
    'releaseRestoreRecords',
    'restore-release',
    [input],
    `Release ${input.ids.join(', ')}`,
  );
}

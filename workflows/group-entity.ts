import {
  allHandlersFinished,
  ApplicationFailure,
  condition,
  continueAsNew,
  defineQuery,
  defineUpdate,
  executeChild,
  ParentClosePolicy,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import {
  groupRunWorkflowId,
  type GroupDefinition,
  type GroupRunResult,
  type SnapshotNowOptions,
} from '../common/groups';
import { GroupsnapGroup } from '../common/search-attributes';
import { assertSnapshotOptions } from '../common/validation';
import { groupSnapshotRun } from './group-run';
import { snapshotIdNow } from './snapshot-id';
import { checked, errorMessage, rootType, failure, failureOfType } from '../common/failures';
import { SNAPSHOT_FAILED } from './group-snapshot';

export const definitionQuery = defineQuery<GroupDefinition>('definition');
/**
 * Takes a group snapshot now and returns its outcome (a failed-and-compensated snapshot is a result with
 * `snapshot.status: 'failed'`, not an error). Requests that arrive while a snapshot of the group runs join it.
 */
export const snapshotNowUpdate = defineUpdate<GroupRunResult, [SnapshotNowOptions]>('snapshotNow');
/** Ends the group (its snapshots stay in the VMs' catalogs). Refused while a snapshot runs. */
export const deleteGroupUpdate = defineUpdate<void, []>('deleteGroup');

const badInput = (message: string) => failure('badInput', message);

/**
 * A software-defined group (workflow id `group/<name>`): holds its definition durably where every host and client
 * can reach it, and serialises "snapshot now" requests so concurrent ones coalesce into one group snapshot.
 */
export async function groupEntity(state: { definition: GroupDefinition }): Promise<{ deleted: boolean }> {
  const definition = state.definition;
  let deleted = false;
  let inFlight: Promise<GroupRunResult> | undefined;
  upsertSearchAttributes([{ key: GroupsnapGroup, value: definition.name }]);

  setHandler(definitionQuery, () => definition);
  setHandler(
    snapshotNowUpdate,
    async (options) => {
      if (!inFlight) {
        const snapshotId = options.snapshotId ?? snapshotIdNow();
        inFlight = executeChild(groupSnapshotRun, {
          workflowId: groupRunWorkflowId(definition.name, snapshotId),
          staticSummary: `Snapshot of group ${definition.name} (${options.trigger ?? 'api'}): resolve members, snapshot`,
          args: [{ ...options, snapshotId, group: definition.name, definition, trigger: options.trigger ?? 'api' }],
          parentClosePolicy: ParentClosePolicy.ABANDON,
        });
        const clear = () => (inFlight = undefined);
        inFlight.then(clear, clear);
      }
      try {
        return await inFlight;
      } catch (err) {
        const cause = (err as { cause?: unknown }).cause;
        if (cause instanceof ApplicationFailure && cause.type === SNAPSHOT_FAILED && cause.details?.[0])
          return cause.details[0] as GroupRunResult;
        const type = rootType(err);
        throw failureOfType(type, errorMessage(err), 'runFailed');
      }
    },
    {
      validator: (options) => {
        if (deleted) throw badInput(`group ${definition.name} is being deleted`);
        const { label, snapshotId, maxFreezeMs, quiesce } = options;
        checked(() => assertSnapshotOptions({ label, snapshotId, maxFreezeMs, quiesce }));
      },
    },
  );
  setHandler(
    deleteGroupUpdate,
    () => {
      deleted = true;
    },
    {
      validator: () => {
        if (inFlight) throw badInput(`a snapshot of group ${definition.name} is running: delete it afterwards`);
      },
    },
  );

  await condition(() => deleted || workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > 5_000);
  await condition(() => allHandlersFinished() && !inFlight);
  if (deleted) return { deleted: true };
  return continueAsNew<typeof groupEntity>({ definition });
}

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
  normalizeGroupDefinition,
  type GroupDefinition,
  type GroupRunResult,
  type SnapshotNowOptions,
} from '../common/groups';
import type { RecoveryPlan } from '../common/plans';
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

/** The group's recovery plans (common/plans.ts), by name. */
export const plansQuery = defineQuery<RecoveryPlan[]>('plans');
/**
 * Stores a recovery plan with the group (replacing one of the same name); returns whether it is new. The client
 * checks the plan against its schema first (common/plan-schema.ts), and a run checks it again when it reads it.
 */
export const applyPlanUpdate = defineUpdate<{ created: boolean }, [RecoveryPlan]>('applyPlan');
export const deletePlanUpdate = defineUpdate<void, [string]>('deletePlan');
/**
 * Replaces the group's definition (same name), e.g. by a committed failover: the group is now the recovered VMs.
 * Its plans stay. Refused while a snapshot runs.
 */
export const redefineGroupUpdate = defineUpdate<GroupDefinition, [GroupDefinition]>('redefineGroup');

const badInput = (message: string) => failure('badInput', message);

/** The entity's durable state, carried over continue-as-new. */
export interface GroupEntityState {
  definition: GroupDefinition;
  plans?: Record<string, RecoveryPlan>;
}

/**
 * A software-defined group (workflow id `group/<name>`): holds its definition durably where every host and client
 * can reach it, and serialises "snapshot now" requests so concurrent ones coalesce into one group snapshot.
 */
export async function groupEntity(state: GroupEntityState): Promise<{ deleted: boolean }> {
  let definition = state.definition;
  // No prototype: a plan's name is only ever a key.
  const plans = Object.assign(Object.create(null) as Record<string, RecoveryPlan>, state.plans ?? {});
  let deleted = false;
  let inFlight: Promise<GroupRunResult> | undefined;
  upsertSearchAttributes([{ key: GroupsnapGroup, value: definition.name }]);

  setHandler(definitionQuery, () => definition);
  setPlanHandlers(
    () => definition,
    plans,
    () => deleted,
  );
  setHandler(
    redefineGroupUpdate,
    (def) => {
      definition = { ...normalizeGroupDefinition(def), createdAt: definition.createdAt ?? def.createdAt };
      return definition;
    },
    {
      validator: (def) => {
        if (deleted) throw badInput(`group ${definition.name} is being deleted`);
        if (inFlight) throw badInput(`a snapshot of group ${definition.name} is running: redefine it afterwards`);
        const checkedDef = checked(() => normalizeGroupDefinition(def));
        if (checkedDef.name !== definition.name)
          throw badInput(`group ${definition.name} cannot be renamed to ${checkedDef.name}`);
      },
    },
  );
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
  return continueAsNew<typeof groupEntity>({ definition, plans });
}

/** The handlers of the group's recovery plans over `plans` (the entity's state). */
function setPlanHandlers(
  definition: () => GroupDefinition,
  plans: Record<string, RecoveryPlan>,
  deleted: () => boolean,
): void {
  setHandler(plansQuery, () => Object.values(plans).sort((a, b) => a.name.localeCompare(b.name)));
  setHandler(
    applyPlanUpdate,
    (plan) => {
      const created = !Object.hasOwn(plans, plan.name);
      plans[plan.name] = plan;
      return { created };
    },
    {
      validator: (plan) => {
        if (deleted()) throw badInput(`group ${definition().name} is being deleted`);
        if (!plan || typeof plan !== 'object' || typeof plan.name !== 'string' || !Array.isArray(plan.tiers))
          throw badInput('not a recovery plan');
        if (plan.group !== definition().name)
          throw badInput(`plan ${plan.name} is for group ${plan.group}, not ${definition().name}`);
      },
    },
  );
  setHandler(
    deletePlanUpdate,
    (name) => {
      delete plans[name];
    },
    {
      validator: (name) => {
        if (!Object.hasOwn(plans, name))
          throw badInput(`group ${definition().name} has no plan ${JSON.stringify(name)}`);
      },
    },
  );
}

import { Context } from '@temporalio/activity';
import {
  ScheduleAlreadyRunning,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
} from '@temporalio/client';
import {
  groupWorkflowId,
  HOST_REGISTRY_WORKFLOW_ID,
  normalizeGroupDefinition,
  selectorText,
  type GroupDefinition,
  type GroupRunInput,
  type RegisteredHost,
} from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { parsePlan, planDocument } from '../common/plan-schema';
import type { RecoveryPlan } from '../common/plans';
import { scheduleIdFor } from '../common/schedule-spec';
import { GroupsnapGroup } from '../common/search-attributes';
import { BadInputError, failure } from '../common/failures';
import { createRetentionActivities } from './retention-activities';

/**
 * Activities of the control plane, run by the workflow worker on the shared queue: they read the durable state kept
 * in groupsnap's entity workflows (the host registry, the groups) through the worker's Temporal client.
 */
export function createControlActivities() {
  return {
    ...createRetentionActivities(),
    /** Hosts whose worker registered in this namespace (empty before the first worker started). */
    async registeredHosts(): Promise<RegisteredHost[]> {
      const handle = Context.current().client.workflow.getHandle(HOST_REGISTRY_WORKFLOW_ID);
      try {
        return await handle.query<RegisteredHost[]>('hosts');
      } catch (err) {
        if (err instanceof WorkflowNotFoundError) return [];
        throw err;
      }
    },

    /** A group's definition, from its entity workflow. @throws BAD_INPUT for an unknown (or deleted) group. */
    async readGroup(name: string): Promise<GroupDefinition> {
      const handle = Context.current().client.workflow.getHandle(groupWorkflowId(name));
      try {
        const desc = await handle.describe();
        if (desc.status.name !== 'RUNNING') throw new WorkflowNotFoundError('deleted', handle.workflowId, undefined);
        return await handle.query<GroupDefinition>('definition');
      } catch (err) {
        if (err instanceof WorkflowNotFoundError) throw failure('badInput', `unknown group ${JSON.stringify(name)}`);
        throw err;
      }
    },

    /**
     * A group's stored recovery plan, checked against the plan schema again (it is a run's input).
     * @throws BAD_INPUT for an unknown group or plan, or a plan the schema refuses
     */
    async readPlan(req: { group: string; name: string }): Promise<RecoveryPlan> {
      const handle = Context.current().client.workflow.getHandle(groupWorkflowId(req.group));
      let plans: RecoveryPlan[];
      try {
        const desc = await handle.describe();
        if (desc.status.name !== 'RUNNING') throw new WorkflowNotFoundError('deleted', handle.workflowId, undefined);
        plans = await handle.query<RecoveryPlan[]>('plans');
      } catch (err) {
        if (err instanceof WorkflowNotFoundError)
          throw failure('badInput', `unknown group ${JSON.stringify(req.group)}`);
        throw err;
      }
      const stored = plans.find((p) => p.name === req.name);
      if (!stored) throw failure('badInput', `group ${req.group} has no plan ${JSON.stringify(req.name)}`);
      try {
        return parsePlan(planDocument(stored));
      } catch (err) {
        // A stored plan that is not one (any shape can be stored by an update) is bad input too.
        throw failure('badInput', err instanceof BadInputError ? err.message : `plan ${req.name}: not a valid plan`);
      }
    },

    /**
     * The group defined as `def` (a committed failover's recovered VMs): its entity redefined, keeping its plans, or
     * created when it is gone.
     */
    async defineGroupAs(def: GroupDefinition): Promise<GroupDefinition> {
      const client = Context.current().client;
      const definition = normalizeGroupDefinition(def);
      const handle = client.workflow.getHandle(groupWorkflowId(definition.name));
      try {
        const desc = await handle.describe();
        if (desc.status.name === 'RUNNING')
          return await handle.executeUpdate<GroupDefinition, [GroupDefinition]>('redefineGroup', {
            args: [definition],
          });
      } catch (err) {
        if (!(err instanceof WorkflowNotFoundError)) throw err;
      }
      const created = { ...definition, createdAt: new Date().toISOString() };
      try {
        await client.workflow.start('groupEntity', {
          taskQueue: WORKFLOW_TASK_QUEUE,
          workflowId: groupWorkflowId(created.name),
          args: [{ definition: created }],
          typedSearchAttributes: [{ key: GroupsnapGroup, value: created.name }],
          staticSummary: `Group ${created.name}: ${selectorText(created.selector)}`,
        });
      } catch (err) {
        // Started by an earlier attempt of this activity: redefined on the retry.
        if (err instanceof WorkflowExecutionAlreadyStartedError) throw new Error('group entity started meanwhile');
        throw err;
      }
      return created;
    },

    /** The group's snapshot schedule (`groupsnap-schedule/<group>`) on `cron`, unless it has one already. */
    async ensureGroupSchedule(req: { group: string; cron: string; timezone: string }): Promise<boolean> {
      const input: GroupRunInput = { group: req.group, trigger: 'schedule' };
      try {
        await Context.current().client.schedule.create({
          scheduleId: scheduleIdFor(req.group),
          spec: { cronExpressions: [req.cron], timezone: req.timezone },
          action: {
            type: 'startWorkflow',
            workflowType: 'groupSnapshotRun',
            workflowId: `group-run/${req.group}/scheduled`,
            taskQueue: WORKFLOW_TASK_QUEUE,
            args: [input],
            typedSearchAttributes: [{ key: GroupsnapGroup, value: req.group }],
            staticSummary: `Scheduled snapshot of group ${req.group} (set up by a committed failover)`,
          },
          memo: { group: req.group, cron: [req.cron], timezone: req.timezone, retention: null },
        });
        return true;
      } catch (err) {
        if (err instanceof ScheduleAlreadyRunning) return false;
        throw err;
      }
    },
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;

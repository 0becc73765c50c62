/**
 * Recovery plans (common/plans.ts): stored with their group (its entity workflow `group/<name>`), applied from YAML
 * or a definition, and run by `recoverGroup` (failover or test), committed or rolled back.
 */
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import {
  ScheduleAlreadyRunning,
  ScheduleOverlapPolicy,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { parse as parseYaml } from 'yaml';
import { groupWorkflowId } from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { parsePlan } from '../common/plan-schema';
import {
  hostOf,
  normalizeRecoverInput,
  recoverScheduleId,
  recoverWorkflowId,
  type RecoverInput,
  type RecoverProgress,
  type RecoverResult,
  type RecoverState,
  type RecoveryPlan,
} from '../common/plans';
import { validateCron, validateTimezone } from '../common/schedule-spec';
import { GroupsnapGroup } from '../common/search-attributes';
import { BadInputError } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { getGroup, listGroups } from './groups';
import { hostsWithoutWorker } from './index';
import { settle } from './settle';

export type * from '../common/plans';
export { parsePlan, planDocument } from '../common/plan-schema';

/** A plan file (YAML, or JSON, which is YAML too) checked against the plan schema. @throws BadInputError */
export function readPlanFile(path: string): RecoveryPlan {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new BadInputError(`cannot read plan file ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { maxAliasCount: 100 });
  } catch (err) {
    throw new BadInputError(`plan file ${path} is not YAML: ${(err as Error).message}`);
  }
  return parsePlan(doc);
}

/**
 * Checks a plan (a document or a parsed plan) and stores it with its group, replacing one of the same name.
 * @throws BadInputError naming every problem, for an unknown group, or a plan name another group uses
 */
export async function applyPlan(client: Client, doc: unknown): Promise<{ plan: RecoveryPlan; created: boolean }> {
  const plan = parsePlan(doc);
  await getGroup(client, plan.group);
  const other = (await listPlans(client)).find((p) => p.name === plan.name && p.group !== plan.group);
  if (other) throw new BadInputError(`plan name ${plan.name} is taken by group ${other.group}`);
  const r = await settle(
    client.workflow
      .getHandle(groupWorkflowId(plan.group))
      .executeUpdate<{ created: boolean }, [RecoveryPlan]>('applyPlan', { args: [plan] }),
  );
  return { plan, created: r.created };
}

/** Every stored plan of every group, by name. */
export async function listPlans(client: Client): Promise<RecoveryPlan[]> {
  const groups = await listGroups(client);
  const lists = await Promise.all(
    groups.map((g) =>
      client.workflow
        .getHandle(groupWorkflowId(g.name))
        .query<RecoveryPlan[]>('plans')
        .catch((err: unknown) => {
          if (err instanceof WorkflowNotFoundError) return [];
          throw err;
        }),
    ),
  );
  return lists.flat().sort((a, b) => a.name.localeCompare(b.name));
}

/** @throws BadInputError for an unknown plan */
export async function getPlan(client: Client, name: string): Promise<RecoveryPlan> {
  assertSafeName('plan name', name);
  const plan = (await listPlans(client)).find((p) => p.name === name);
  if (!plan) throw new BadInputError(`unknown plan ${JSON.stringify(name)}`);
  return plan;
}

export async function deletePlan(client: Client, name: string): Promise<void> {
  const plan = await getPlan(client, name);
  await settle(client.workflow.getHandle(groupWorkflowId(plan.group)).executeUpdate('deletePlan', { args: [name] }));
}

export interface RecoverOptions {
  /** A point id, or `latest`. @default 'latest' */
  point?: string;
  mode: RecoverInput['mode'];
  /** @default generated */
  runId?: string;
}

/**
 * Starts a recovery by the plan `name`: every recovery host of the plan must have a worker.
 * @throws BadInputError for an unknown plan, a bad option or a recovery host without a worker (nothing started)
 */
export async function startRecovery(client: Client, name: string, options: RecoverOptions): Promise<WorkflowHandle> {
  assertSafeName('plan name', name);
  normalizeRecoverInput({ group: 'g', plan: name, ...options });
  const plan = await getPlan(client, name);
  const hosts = [...new Set(plan.tiers.flatMap((t) => t.vms.map((v) => hostOf(plan, v.vm))))];
  const missing = await hostsWithoutWorker(client, hosts);
  if (missing.length) throw new BadInputError(`no worker serves recovery host(s) ${missing.join(', ')}`);
  const runId = options.runId ?? `rc-${randomBytes(4).toString('hex')}`;
  const input: RecoverInput = { group: plan.group, plan: name, mode: options.mode, point: options.point, runId };
  return client.workflow.start('recoverGroup', {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: recoverWorkflowId(runId),
    args: [input],
    typedSearchAttributes: [{ key: GroupsnapGroup, value: plan.group }],
    staticSummary: `${options.mode === 'test' ? 'Test' : 'Failover'} recovery of ${plan.group} by plan ${name} (${
      options.point ?? 'latest'
    }): ${plan.tiers.length} tiers on ${hosts.join(', ')}`,
  });
}

/** The run's result (a failover's once committed or rolled back); bad input as BadInputError. */
export function recoveryResult(handle: WorkflowHandle): Promise<RecoverResult> {
  return settle(handle.result() as Promise<RecoverResult>);
}

/** Runs a recovery to its end (a failover waits for commit, rollback or its decision timeout). */
export async function recover(client: Client, name: string, options: RecoverOptions): Promise<RecoverResult> {
  return recoveryResult(await startRecovery(client, name, options));
}

/** The run's progress now: tiers, VMs, states, times to ready. */
export function recoveryProgress(client: Client, runId: string): Promise<RecoverProgress> {
  assertSafeName('run id', runId);
  return client.workflow.getHandle(recoverWorkflowId(runId)).query<RecoverProgress>('recoverProgress');
}

/**
 * Commits or rolls back a failover waiting for its decision (a stopped one: rollback only); returns the run's
 * result once that is done. @throws BadInputError when the run is not waiting for it
 */
export async function decideRecovery(
  client: Client,
  runId: string,
  decision: 'commit' | 'rollback',
): Promise<RecoverResult> {
  assertSafeName('run id', runId);
  const handle = client.workflow.getHandle(recoverWorkflowId(runId));
  await settle(handle.executeUpdate<RecoverState, []>(decision, { args: [] })).catch((err: unknown) => {
    if (err instanceof WorkflowNotFoundError) throw new BadInputError(`unknown recovery run ${runId}`);
    throw err;
  });
  return recoveryResult(handle);
}

/** Test runs of the plan on a cron schedule (`groupsnap-recover-test/<group>/<plan>`), each of the latest point. */
export async function createRecoveryTestSchedule(
  client: Client,
  name: string,
  options: { cron: string; timezone?: string },
): Promise<string> {
  validateCron(options.cron);
  validateTimezone(options.timezone ?? 'UTC');
  const plan = await getPlan(client, name);
  const scheduleId = recoverScheduleId(plan.group, name);
  const input: RecoverInput = { group: plan.group, plan: name, mode: 'test', point: 'latest' };
  try {
    await client.schedule.create({
      scheduleId,
      spec: { cronExpressions: [options.cron], timezone: options.timezone ?? 'UTC' },
      action: {
        type: 'startWorkflow',
        workflowType: 'recoverGroup',
        workflowId: recoverWorkflowId(`scheduled-${plan.group}-${name}`),
        taskQueue: WORKFLOW_TASK_QUEUE,
        args: [input],
        typedSearchAttributes: [{ key: GroupsnapGroup, value: plan.group }],
        staticSummary: `Scheduled test recovery of ${plan.group} by plan ${name}`,
      },
      policies: { overlap: ScheduleOverlapPolicy.SKIP },
    });
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning)
      throw new BadInputError(`plan ${name} already has a test schedule (${scheduleId})`);
    throw err;
  }
  return scheduleId;
}

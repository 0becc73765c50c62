/** Typed client for DR drills (workflow `drillGroup`): run one now, schedule them, read the last one. */
import { randomBytes } from 'node:crypto';
import { ScheduleAlreadyRunning, ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import {
  drillScheduleId,
  drillWorkflowId,
  normalizeDrillInput,
  type DrillInput,
  type DrillResult,
} from '../common/drill';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { validateCron, validateTimezone } from '../common/schedule-spec';
import { GroupsnapGroup } from '../common/search-attributes';
import { BadInputError } from '../common/failures';
import { settle } from './settle';
import { hostsWithoutWorker } from './index';

export type { DrillInput, DrillResult, DrillRecord } from '../common/drill';

/**
 * Runs a drill and returns its result (`status: 'pass' | 'fail'`); the clones are gone when it returns.
 * @throws BadInputError for an invalid request, an unknown point or a target without a worker
 */
export async function runDrill(client: Client, input: DrillInput): Promise<DrillResult> {
  const n = normalizeDrillInput(input);
  if ((await hostsWithoutWorker(client, [n.toHost])).length)
    throw new BadInputError(`no worker serves host ${n.toHost}`);
  const drillId = n.drillId ?? `dr-${randomBytes(4).toString('hex')}`;
  return settle(
    client.workflow.execute('drillGroup', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: drillWorkflowId(n.group, drillId),
      args: [{ ...input, drillId }],
      typedSearchAttributes: [{ key: GroupsnapGroup, value: n.group }],
      staticSummary: `DR drill of ${n.group} (${n.point}) on ${n.toHost}`,
    }) as Promise<DrillResult>,
  );
}

/** Drills the group's latest point on a cron schedule (a Temporal Schedule `groupsnap-drill/<group>`). */
export async function createDrillSchedule(
  client: Client,
  input: Omit<DrillInput, 'drillId' | 'point'>,
  options: { cron: string; timezone?: string; paused?: boolean },
): Promise<string> {
  const n = normalizeDrillInput(input);
  validateCron(options.cron);
  validateTimezone(options.timezone ?? 'UTC');
  const scheduleId = drillScheduleId(n.group);
  try {
    await client.schedule.create({
      scheduleId,
      spec: { cronExpressions: [options.cron], timezone: options.timezone ?? 'UTC' },
      action: {
        type: 'startWorkflow',
        workflowType: 'drillGroup',
        workflowId: `groupsnap/drill/${n.group}/scheduled`,
        taskQueue: WORKFLOW_TASK_QUEUE,
        args: [{ ...input, point: 'latest' }],
        typedSearchAttributes: [{ key: GroupsnapGroup, value: n.group }],
        staticSummary: `Scheduled DR drill of ${n.group} on ${n.toHost}`,
      },
      policies: { overlap: ScheduleOverlapPolicy.SKIP },
      state: { paused: options.paused ?? false },
    });
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning)
      throw new BadInputError(`group ${n.group} already has a drill schedule (${scheduleId})`);
    throw err;
  }
  return scheduleId;
}

/** The newest finished drill of a group (from Temporal's visibility), or undefined. */
export async function lastDrill(client: Client, group: string): Promise<DrillResult | undefined> {
  for await (const wf of client.workflow.list({
    query: `WorkflowType = 'drillGroup' AND GroupsnapGroup = '${group}' AND ExecutionStatus = 'Completed'`,
  })) {
    return (await client.workflow.getHandle(wf.workflowId, wf.runId).result()) as DrillResult;
  }
  return undefined;
}

/**
 * Handlers of groupsnap's Nexus service (contract: client/nexus.ts), run by groupsnap's workflow worker (registered
 * by the workflows plugin, worker/plugins.ts). Every request is checked before anything starts: bad input and an
 * unknown group fail the operation at once, not retried, with a message that says what was wrong.
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowIdReusePolicy } from '@temporalio/client';
import { getClient, startWorkflow, WorkflowRunOperationHandler } from '@temporalio/nexus';
import * as nexus from 'nexus-rpc';
import { getGroup } from '../client/groups';
import { listGroupSnapshots } from '../client/snapshots';
import {
  groupsnapNexusService,
  type NexusGroupSnapshots,
  type NexusListGroupSnapshotsInput,
  type NexusRestoreGroupInput,
  type NexusSnapshotGroupInput,
} from '../client/nexus';
import {
  groupRunWorkflowId,
  assertRestoreConfirmed,
  normalizeRestoreInput,
  restoreWorkflowId,
  type GroupRunInput,
  type GroupRunResult,
  type RestoreResult,
} from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { exportOperation, listRepository, verifyRepository } from './nexus-backup';
import { restoreFromRepoOperation } from './nexus-repo-restore';
import { GroupsnapGroup } from '../common/search-attributes';
import { BadInputError, failure } from '../common/failures';
import { assertSafeName, checkSnapshotOptions, problemList } from '../common/validation';
import type { groupSnapshotRun, restoreGroup } from '../workflows';

/** A non-retryable `BAD_REQUEST` that carries the message (and groupsnap's bad-input failure type) to the caller. */
function badRequest(message: string): nexus.HandlerError {
  return new nexus.HandlerError('BAD_REQUEST', message, {
    cause: failure('badInput', message),
    retryableOverride: false,
  });
}

/** Runs the checks, turning a {@link BadInputError} into a {@link badRequest}. */
async function checked<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof BadInputError) throw badRequest(err.message);
    throw err;
  }
}

/** Input arrives as JSON from another team's code: check its shape, not only its values. */
function requireObject(input: unknown, operation: string): asserts input is Record<string, unknown> {
  if (typeof input !== 'object' || input === null || Array.isArray(input))
    throw new BadInputError(`${operation} takes an object, got ${JSON.stringify(input)}`);
}

function requireGroupName(input: Record<string, unknown>): string {
  if (typeof input.group !== 'string') throw new BadInputError(`give the group's name as 'group' (a string)`);
  assertSafeName('group name', input.group);
  return input.group;
}

/** @throws BadInputError for an unknown group: its entity workflow `group/<name>` is not running. */
async function requireGroup(group: string): Promise<void> {
  await getGroup(getClient(), group);
}

function checkSnapshotInput(input: NexusSnapshotGroupInput): void {
  requireObject(input, 'snapshotGroup');
  const { problems, check } = problemList();
  check(() => requireGroupName(input as unknown as Record<string, unknown>));
  const { label, snapshotId, maxFreezeMs, quiesce, resumeWhen } = input;
  checkSnapshotOptions({ label, snapshotId, maxFreezeMs, quiesce, resumeWhen }, problems);
  const known = new Set(['group', 'label', 'snapshotId', 'maxFreezeMs', 'quiesce', 'resumeWhen']);
  const unknown = Object.keys(input).filter((k) => !known.has(k));
  if (unknown.length > 0) problems.push(`unknown option ${unknown.join(', ')} (known: ${[...known].join(', ')})`);
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
}

const snapshotGroup = new WorkflowRunOperationHandler<NexusSnapshotGroupInput, GroupRunResult>(async (ctx, input) => {
  await checked(async () => {
    checkSnapshotInput(input);
    await requireGroup(input.group);
  });
  const { group, snapshotId } = input;
  const args: GroupRunInput = {
    group,
    trigger: 'nexus',
    ...(input.label !== undefined ? { label: input.label } : {}),
    ...(snapshotId !== undefined ? { snapshotId } : {}),
    ...(input.maxFreezeMs !== undefined ? { maxFreezeMs: input.maxFreezeMs } : {}),
    ...(input.quiesce !== undefined ? { quiesce: input.quiesce } : {}),
    ...(input.resumeWhen !== undefined ? { resumeWhen: input.resumeWhen } : {}),
  };
  try {
    return await startWorkflow<typeof groupSnapshotRun>(ctx, 'groupSnapshotRun', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      // A retried start request (same request id) finds the run it started; the run chooses the snapshot id.
      workflowId:
        snapshotId !== undefined ? groupRunWorkflowId(group, snapshotId) : `group-run/${group}/nexus-${ctx.requestId}`,
      // A snapshot id is never taken twice.
      workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      args: [args],
      typedSearchAttributes: [{ key: GroupsnapGroup, value: group }],
      staticSummary: `Snapshot of group ${group}${input.label ? ` (${input.label})` : ''}, asked through Nexus`,
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError)
      throw badRequest(`snapshot ${JSON.stringify(snapshotId)} of group ${group} was already taken or is running`);
    throw err;
  }
});

async function listSnapshots(_ctx: nexus.StartOperationContext, input: NexusListGroupSnapshotsInput) {
  const group = await checked(async () => {
    requireObject(input, 'listGroupSnapshots');
    const name = requireGroupName(input as unknown as Record<string, unknown>);
    await requireGroup(name);
    return name;
  });
  const snapshots = await checked(() => listGroupSnapshots(getClient(), group));
  return { group, snapshots } satisfies NexusGroupSnapshots;
}

const restore = new WorkflowRunOperationHandler<NexusRestoreGroupInput, RestoreResult>(async (ctx, input) => {
  const normalized = await checked(async () => {
    requireObject(input, 'restoreGroup');
    const n = normalizeRestoreInput(input);
    assertRestoreConfirmed(n);
    await requireGroup(n.group);
    return n;
  });
  const restoreId = normalized.restoreId ?? `rs-${ctx.requestId.replace(/-/g, '').slice(0, 8)}`;
  const { group, snapshotId, mode } = normalized;
  try {
    return await startWorkflow<typeof restoreGroup>(ctx, 'restoreGroup', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: restoreWorkflowId(group, snapshotId, restoreId),
      workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      args: [{ ...normalized, restoreId }],
      typedSearchAttributes: [{ key: GroupsnapGroup, value: group }],
      staticSummary: `Restore group ${group} to ${snapshotId} (${mode === 'clone' ? 'as clones' : 'in place'}), asked through Nexus`,
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError)
      throw badRequest(`restore ${JSON.stringify(restoreId)} of group ${group} was already run or is running`);
    throw err;
  }
});

/** groupsnap's Nexus service handler: register it on the worker of the `groupsnap` task queue. */
export function groupsnapNexusServiceHandler() {
  return nexus.serviceHandler(groupsnapNexusService, {
    snapshotGroup,
    listGroupSnapshots: listSnapshots,
    restoreGroup: restore,
    restoreFromRepo: restoreFromRepoOperation,
    exportGroupSnapshot: exportOperation,
    listRepository,
    verifyRepository,
  });
}

/**
 * The typed client library for groups, tags, schedules, snapshot listing and deletion, and restore: what the CLI
 * uses, for other services to use the same way.
 */
import { randomBytes } from 'node:crypto';
import {
  Client,
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type ScheduleDescription,
} from '@temporalio/client';
import type { RegisteredHost } from '../activities/control-activities';
import {
  deleteSnapshotWorkflowId,
  groupSnapshotsIn,
  groupWorkflowId,
  HOST_REGISTRY_WORKFLOW_ID,
  normalizeGroupDefinition,
  assertRestoreConfirmed,
  normalizeRestoreInput,
  resolveMembers,
  restoreWorkflowId,
  selectorText,
  type DeleteSnapshotResult,
  type GroupDefinition,
  type GroupRunInput,
  type GroupRunResult,
  type GroupSnapshotListing,
  type Inventory,
  type RestoreInput,
  type RestoreResult,
  type SnapshotNowOptions,
} from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { describeRetention, normalizeRetention, type RetentionPolicy } from '../common/retention';
import {
  parseDuration,
  parseOverlap,
  scheduleIdFor,
  validateCron,
  validateTimezone,
  type OverlapName,
} from '../common/schedule-spec';
import { GroupsnapGroup } from '../common/search-attributes';
import type { VmRef } from '../common/types';
import { BAD_INPUT, BadInputError, resultOf, rootFailure } from '../common/failures';
import { assertSafeName, assertSnapshotOptions } from '../common/validation';

export type {
  DeleteSnapshotResult,
  GroupDefinition,
  GroupRunResult,
  GroupSnapshotListing,
  Inventory,
  RestoreInput,
  RestoreResult,
  RegisteredHost,
  RetentionPolicy,
  OverlapName,
  SnapshotNowOptions,
};

/**
 * Turns a workflow or update failure into what callers handle: a BadInputError for bad input (nothing changed),
 * the result in the failure's details for a failed-and-handled run, else the error itself.
 */
export async function settle<T>(run: Promise<T>): Promise<T> {
  try {
    return await run;
  } catch (err) {
    if (err instanceof WorkflowFailedError || err instanceof WorkflowUpdateFailedError) {
      const failure = rootFailure(err);
      if (failure?.type === BAD_INPUT) throw new BadInputError(failure.message);
      const result = resultOf<T>(err);
      if (result !== undefined) return result;
    }
    throw err;
  }
}

function shortId(): string {
  return randomBytes(4).toString('hex');
}

/** Runs one of groupsnap's short administrative workflows and returns its result. */
function execute<T>(client: Client, workflowType: string, idPrefix: string, args: unknown[], summary: string) {
  return settle(
    client.workflow.execute(workflowType, {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: `${idPrefix}/${shortId()}`,
      args,
      staticSummary: summary,
    }) as Promise<T>,
  );
}

// ---- groups ----

/**
 * Creates a named group (its entity workflow `group/<name>`).
 * @throws BadInputError for an invalid definition or an existing group; nothing is created then.
 */
export async function createGroup(client: Client, def: GroupDefinition): Promise<GroupDefinition> {
  const definition = { ...normalizeGroupDefinition(def), createdAt: new Date().toISOString() };
  try {
    await client.workflow.start('groupEntity', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: groupWorkflowId(definition.name),
      args: [{ definition }],
      typedSearchAttributes: [{ key: GroupsnapGroup, value: definition.name }],
      staticSummary: `Group ${definition.name}: ${selectorText(definition.selector)}`,
      staticDetails: definition.description,
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError)
      throw new BadInputError(`group ${JSON.stringify(definition.name)} already exists`);
    throw err;
  }
  return definition;
}

/** @throws BadInputError for an unknown (or deleted) group. */
export async function getGroup(client: Client, name: string): Promise<GroupDefinition> {
  assertSafeName('group name', name);
  const handle = client.workflow.getHandle(groupWorkflowId(name));
  try {
    const desc = await handle.describe();
    if (desc.status.name === 'RUNNING') return await handle.query<GroupDefinition>('definition');
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
  }
  throw new BadInputError(`unknown group ${JSON.stringify(name)}`);
}

/** Every group of the namespace, by name. */
export async function listGroups(client: Client): Promise<GroupDefinition[]> {
  const names: string[] = [];
  for await (const wf of client.workflow.list({
    query: `WorkflowType = 'groupEntity' AND ExecutionStatus = 'Running'`,
  }))
    if (wf.workflowId.startsWith('group/')) names.push(wf.workflowId.slice('group/'.length));
  const defs = await Promise.all(
    [...new Set(names)].map((n) => client.workflow.getHandle(groupWorkflowId(n)).query<GroupDefinition>('definition')),
  );
  return defs.sort((a, b) => a.name.localeCompare(b.name));
}

/** What every registered host has: VMs, tags and catalogs. */
export function inventory(client: Client, hosts?: string[]): Promise<Inventory> {
  return execute<Inventory>(client, 'groupsnapInventory', 'inventory', [{ hosts }], 'groupsnap inventory');
}

/** A group and its members as they resolve now (a tag selector asks every registered host). */
export async function showGroup(
  client: Client,
  name: string,
): Promise<{ definition: GroupDefinition; members: VmRef[]; unreachable: Inventory['unreachable'] }> {
  const definition = await getGroup(client, name);
  if ('vms' in definition.selector) return { definition, members: definition.selector.vms, unreachable: [] };
  const inv = await inventory(client);
  return { definition, members: resolveMembers(definition, inv), unreachable: inv.unreachable };
}

/**
 * Deletes a group definition (its snapshots stay until deleted). A group with a schedule is refused unless
 * `withSchedule`, which deletes the schedule too.
 */
export async function deleteGroup(client: Client, name: string, options: { withSchedule?: boolean } = {}) {
  await getGroup(client, name);
  const schedule = client.schedule.getHandle(scheduleIdFor(name));
  let hasSchedule = true;
  try {
    await schedule.describe();
  } catch (err) {
    if (!(err instanceof ScheduleNotFoundError)) throw err;
    hasSchedule = false;
  }
  if (hasSchedule && !options.withSchedule)
    throw new BadInputError(
      `group ${name} has a schedule (${scheduleIdFor(name)}): delete it first or pass --with-schedule`,
    );
  await settle(client.workflow.getHandle(groupWorkflowId(name)).executeUpdate('deleteGroup', { args: [] }));
  if (hasSchedule) await schedule.delete();
}

// ---- tags and hosts ----

/** Adds and/or removes tags on a VM (at its host). Returns its tags after. */
export async function tagVm(
  client: Client,
  vm: VmRef,
  change: { add?: string[]; remove?: string[] },
): Promise<string[]> {
  assertSafeName('host id', vm.host);
  for (const t of [...(change.add ?? []), ...(change.remove ?? [])]) assertSafeName('tag', t);
  return execute<string[]>(
    client,
    'setVmTags',
    'tag',
    [{ host: vm.host, domain: vm.domain, ...change }],
    `tags of ${vm.domain}@${vm.host}: ${[...(change.add ?? []).map((t) => `+${t}`), ...(change.remove ?? []).map((t) => `-${t}`)].join(' ')}`,
  );
}

export async function listHosts(client: Client): Promise<RegisteredHost[]> {
  try {
    return await client.workflow.getHandle(HOST_REGISTRY_WORKFLOW_ID).query<RegisteredHost[]>('hosts');
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return [];
    throw err;
  }
}

/** Removes a decommissioned host from the registry. @returns false when it was not registered. */
export function forgetHost(client: Client, hostId: string): Promise<boolean> {
  return client.workflow.getHandle(HOST_REGISTRY_WORKFLOW_ID).executeUpdate<boolean, [string]>('forgetHost', {
    args: [hostId],
  });
}

// ---- snapshots of a named group ----

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

// ---- schedules ----

export interface GroupScheduleOptions {
  group: string;
  /** Cron expression(s), as Temporal Schedules accept them. */
  cron: string | string[];
  /** IANA time zone the cron is read in. @default 'UTC' */
  timezone?: string;
  /** What to do when a run is still going at the next time. @default 'skip' */
  overlap?: OverlapName;
  /** How late a missed run may still start (e.g. after the server was down), e.g. '10m'. @default '1m' */
  catchupWindow?: string;
  /** Random delay added to each run, e.g. '30s'. */
  jitter?: string;
  retention?: RetentionPolicy;
  label?: string;
  maxFreezeMs?: number;
  note?: string;
  paused?: boolean;
}

const OVERLAP: Record<OverlapName, ScheduleOverlapPolicy> = {
  skip: ScheduleOverlapPolicy.SKIP,
  'buffer-one': ScheduleOverlapPolicy.BUFFER_ONE,
  'buffer-all': ScheduleOverlapPolicy.BUFFER_ALL,
  'cancel-other': ScheduleOverlapPolicy.CANCEL_OTHER,
  'terminate-other': ScheduleOverlapPolicy.TERMINATE_OTHER,
  'allow-all': ScheduleOverlapPolicy.ALLOW_ALL,
};

/**
 * Creates the group's schedule (`groupsnap-schedule/<group>`): each run snapshots the group and then applies the
 * retention. Everything is validated before anything is created.
 * @throws BadInputError for an unknown group, an invalid cron, time zone, duration or retention, or an existing
 *   schedule.
 */
export async function createGroupSchedule(client: Client, options: GroupScheduleOptions): Promise<string> {
  const crons = Array.isArray(options.cron) ? options.cron : [options.cron];
  if (crons.length === 0) throw new BadInputError('give a cron expression');
  crons.forEach((c) => validateCron(c));
  const timezone = options.timezone ?? 'UTC';
  validateTimezone(timezone);
  const overlap = parseOverlap(options.overlap ?? 'skip');
  const catchupWindow = parseDuration(options.catchupWindow ?? '1m', 'catch-up window');
  const jitter = options.jitter !== undefined ? parseDuration(options.jitter, 'jitter') : undefined;
  const retention = options.retention ? normalizeRetention(options.retention) : undefined;
  assertSnapshotOptions({ label: options.label, maxFreezeMs: options.maxFreezeMs });
  await getGroup(client, options.group);
  const scheduleId = scheduleIdFor(options.group);
  const input: GroupRunInput = {
    group: options.group,
    trigger: 'schedule',
    ...(retention ? { retention, timezone } : {}),
    ...(options.label !== undefined ? { label: options.label } : {}),
    ...(options.maxFreezeMs !== undefined ? { maxFreezeMs: options.maxFreezeMs } : {}),
  };
  try {
    await client.schedule.create({
      scheduleId,
      spec: { cronExpressions: crons, timezone, ...(jitter !== undefined ? { jitter } : {}) },
      action: {
        type: 'startWorkflow',
        workflowType: 'groupSnapshotRun',
        workflowId: `group-run/${options.group}/scheduled`,
        taskQueue: WORKFLOW_TASK_QUEUE,
        args: [input],
        typedSearchAttributes: [{ key: GroupsnapGroup, value: options.group }],
        staticSummary: `Scheduled snapshot of group ${options.group}${retention ? `, keep ${describeRetention(retention)}` : ''}`,
      },
      policies: { overlap: OVERLAP[overlap], catchupWindow },
      state: { paused: options.paused ?? false, ...(options.note ? { note: options.note } : {}) },
      memo: { group: options.group, cron: crons, timezone, retention: retention ?? null },
    });
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning)
      throw new BadInputError(`group ${options.group} already has a schedule (${scheduleId})`);
    throw err;
  }
  return scheduleId;
}

function scheduleHandle(client: Client, group: string) {
  assertSafeName('group name', group);
  return client.schedule.getHandle(scheduleIdFor(group));
}

async function orUnknown<T>(group: string, run: Promise<T>): Promise<T> {
  try {
    return await run;
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) throw new BadInputError(`group ${group} has no schedule`);
    throw err;
  }
}

export function describeGroupSchedule(client: Client, group: string): Promise<ScheduleDescription> {
  return orUnknown(group, scheduleHandle(client, group).describe());
}

/** Every groupsnap schedule of the namespace. */
export async function listGroupSchedules(client: Client): Promise<{ group: string; scheduleId: string }[]> {
  const out: { group: string; scheduleId: string }[] = [];
  const prefix = scheduleIdFor('x').slice(0, -1);
  for await (const s of client.schedule.list())
    if (s.scheduleId.startsWith(prefix))
      out.push({ group: s.scheduleId.slice(prefix.length), scheduleId: s.scheduleId });
  return out.sort((a, b) => a.group.localeCompare(b.group));
}

export function pauseGroupSchedule(client: Client, group: string, note?: string): Promise<void> {
  return orUnknown(group, scheduleHandle(client, group).pause(note));
}

export function unpauseGroupSchedule(client: Client, group: string, note?: string): Promise<void> {
  return orUnknown(group, scheduleHandle(client, group).unpause(note));
}

/** Runs the schedule's action now (overlap policy applies). */
export function triggerGroupSchedule(client: Client, group: string): Promise<void> {
  return orUnknown(group, scheduleHandle(client, group).trigger());
}

/** Takes the runs the schedule would have taken between `start` and `end`. */
export function backfillGroupSchedule(
  client: Client,
  group: string,
  range: { start: Date; end: Date; overlap?: OverlapName },
): Promise<void> {
  if (!(range.start < range.end)) throw new BadInputError('backfill --start must be before --end');
  return orUnknown(
    group,
    scheduleHandle(client, group).backfill({
      start: range.start,
      end: range.end,
      overlap: OVERLAP[parseOverlap(range.overlap ?? 'allow-all')],
    }),
  );
}

export function deleteGroupSchedule(client: Client, group: string): Promise<void> {
  return orUnknown(group, scheduleHandle(client, group).delete());
}

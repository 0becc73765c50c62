/** A group's schedule: snapshots at cron times, each followed by the retention. */
import {
  Client,
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  type ScheduleDescription,
} from '@temporalio/client';
import type { GroupRunInput } from '../common/groups';
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
import { BadInputError } from '../common/failures';
import { assertSafeName, assertSnapshotOptions } from '../common/validation';
import { getGroup } from './groups';

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

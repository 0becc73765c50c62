/** `groupsnap schedule create|list|show|pause|unpause|trigger|delete|backfill`. */
import {
  backfillGroupSchedule,
  createGroupSchedule,
  deleteGroupSchedule,
  describeGroupSchedule,
  listGroupSchedules,
  pauseGroupSchedule,
  triggerGroupSchedule,
  unpauseGroupSchedule,
  type GroupScheduleOptions,
} from '../client/schedules';
import type { RetentionPolicy } from '../common/retention';
import { checkBackfill, checkNames, checkScheduleCreate } from './check-input';
import { withClient, type CommonOptions } from './with-client';

export interface RetentionFlags {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
}

export function retentionFrom(f: RetentionFlags): RetentionPolicy | undefined {
  const p: RetentionPolicy = {
    ...(f.keepLast !== undefined ? { keepLast: f.keepLast } : {}),
    ...(f.keepHourly !== undefined ? { hourly: f.keepHourly } : {}),
    ...(f.keepDaily !== undefined ? { daily: f.keepDaily } : {}),
    ...(f.keepWeekly !== undefined ? { weekly: f.keepWeekly } : {}),
    ...(f.keepMonthly !== undefined ? { monthly: f.keepMonthly } : {}),
  };
  return Object.keys(p).length ? p : undefined;
}

export function scheduleCreate(
  group: string,
  opts: CommonOptions &
    RetentionFlags &
    Omit<GroupScheduleOptions, 'group' | 'retention' | 'catchupWindow' | 'overlap'> & {
      catchup?: string;
      overlap?: string;
    },
) {
  checkScheduleCreate(group, { ...opts, retention: retentionFrom(opts) });
  return withClient(
    opts,
    (c) =>
      createGroupSchedule(c, {
        group,
        cron: opts.cron,
        timezone: opts.timezone,
        overlap: opts.overlap as GroupScheduleOptions['overlap'],
        catchupWindow: opts.catchup,
        jitter: opts.jitter,
        retention: retentionFrom(opts),
        label: opts.label,
        maxFreezeMs: opts.maxFreezeMs,
        note: opts.note,
        paused: opts.paused,
      }).then((scheduleId) => ({ scheduleId })),
    (r) => `created schedule ${r.scheduleId}`,
  );
}

export function scheduleList(opts: CommonOptions) {
  return withClient(opts, listGroupSchedules, (list) =>
    list.length === 0 ? 'no schedules' : list.map((s) => `${s.group}\t${s.scheduleId}`).join('\n'),
  );
}

export function scheduleShow(group: string, opts: CommonOptions) {
  checkNames([['group name', group]]);
  return withClient(
    opts,
    async (c) => {
      const d = await describeGroupSchedule(c, group);
      const memo = (d.memo ?? {}) as { cron?: string[]; retention?: RetentionPolicy };
      return {
        scheduleId: d.scheduleId,
        cron: memo.cron ?? [],
        timezone: d.spec.timezone ?? 'UTC',
        paused: d.state.paused,
        note: d.state.note,
        overlap: d.policies.overlap,
        catchupWindowMs: d.policies.catchupWindow,
        retention: memo.retention ?? null,
        nextRuns: d.info.nextActionTimes.slice(0, 5).map((t) => t.toISOString()),
        recentRuns: d.info.recentActions.slice(-5).map((a) => ({
          scheduledAt: a.scheduledAt.toISOString(),
          workflowId: a.action.workflow.workflowId,
        })),
        runningRuns: d.info.runningActions.map((a) => a.workflow.workflowId),
      };
    },
    (s) =>
      [
        `${s.scheduleId}${s.paused ? ' (paused' + (s.note ? `: ${s.note}` : '') + ')' : ''}`,
        `  cron ${s.cron.join(' | ')} (${s.timezone}), overlap ${s.overlap}`,
        `  retention ${s.retention ? JSON.stringify(s.retention) : 'none'}`,
        `  next: ${s.nextRuns.join(', ') || '-'}`,
        ...s.recentRuns.map((r) => `  ran ${r.scheduledAt}: ${r.workflowId}`),
      ].join('\n'),
  );
}

export function scheduleAction(
  action: 'pause' | 'unpause' | 'trigger' | 'delete',
  group: string,
  opts: CommonOptions & { note?: string },
) {
  checkNames([['group name', group]]);
  return withClient(
    opts,
    async (c) => {
      if (action === 'pause') await pauseGroupSchedule(c, group, opts.note);
      if (action === 'unpause') await unpauseGroupSchedule(c, group, opts.note);
      if (action === 'trigger') await triggerGroupSchedule(c, group);
      if (action === 'delete') await deleteGroupSchedule(c, group);
      return { group, action };
    },
    () => `schedule of ${group}: ${action}${action.endsWith('e') ? 'd' : 'ed'}`,
  );
}

export function scheduleBackfill(
  group: string,
  opts: CommonOptions & { start: string; end: string; overlap?: string },
) {
  checkBackfill(group, opts);
  const start = new Date(opts.start);
  const end = new Date(opts.end);
  return withClient(
    opts,
    async (c) => {
      await backfillGroupSchedule(c, group, { start, end, overlap: opts.overlap as GroupScheduleOptions['overlap'] });
      return { group, start: start.toISOString(), end: end.toISOString() };
    },
    (r) => `backfill of ${group} requested for ${r.start} .. ${r.end}`,
  );
}

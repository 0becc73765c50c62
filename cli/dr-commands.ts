/** CLI commands for groups, tags, hosts, schedules, snapshot listing/deletion and restore. */
import { Client, Connection } from '@temporalio/client';
import {
  backfillGroupSchedule,
  createGroup,
  createGroupSchedule,
  deleteGroup,
  deleteGroupSchedule,
  deleteGroupSnapshot,
  describeGroupSchedule,
  forgetHost,
  listGroups,
  listGroupSchedules,
  listGroupSnapshots,
  listHosts,
  pauseGroupSchedule,
  restoreGroup,
  showGroup,
  snapshotNamedGroup,
  tagVm,
  triggerGroupSchedule,
  unpauseGroupSchedule,
  type GroupScheduleOptions,
  type SnapshotNowOptions,
} from '../client/dr';
import { temporalSettings, type TemporalOverrides } from '../common/config';
import { selectorText, type GroupRunResult, type RestoreMode } from '../common/groups';
import type { RetentionPolicy } from '../common/retention';
import type { ResumeWhen, VmRef } from '../common/types';
import { BadInputError } from '../common/validation';
import {
  checkBackfill,
  checkGroupCreate,
  checkNames,
  checkRestore,
  checkScheduleCreate,
  checkTagVm,
} from './check-input';
import { EXIT } from './commands';
import { formatResult } from './format';

export interface CommonOptions extends TemporalOverrides {
  json?: boolean;
}

/**
 * Connects, runs `fn`, prints its output (JSON with `--json`) and sets the exit code: 0 done, 1 failed,
 * 2 bad input (nothing changed).
 */
export async function withClient<T>(
  opts: CommonOptions,
  fn: (client: Client) => Promise<T>,
  render: (value: T) => string,
  failed: (value: T) => boolean = () => false,
): Promise<void> {
  const { connectionOptions, namespace } = temporalSettings(opts);
  const connection = await Connection.connect(connectionOptions as Parameters<typeof Connection.connect>[0]);
  try {
    const value = await fn(new Client({ connection, namespace }));
    const out = opts.json ? JSON.stringify(value ?? null, null, 2) : render(value);
    if (out) console.log(out);
    process.exitCode = failed(value) ? EXIT.failed : EXIT.ok;
  } catch (err) {
    if (!(err instanceof BadInputError)) throw err;
    if (opts.json) console.log(JSON.stringify({ status: 'rejected', error: err.message }));
    else console.error(`groupsnap: ${err.message}`);
    process.exitCode = EXIT.badInput;
  } finally {
    await connection.close();
  }
}

const vmText = (v: VmRef): string => `${v.domain}@${v.host}`;

// ---- groups ----

export function groupCreate(
  name: string,
  opts: CommonOptions & { vm?: VmRef[]; tag?: string; description?: string; repo?: string; resumeWhen?: ResumeWhen },
) {
  checkGroupCreate(name, opts);
  const selector = opts.tag !== undefined ? { tag: opts.tag } : { vms: opts.vm ?? [] };
  return withClient(
    opts,
    (c) =>
      createGroup(c, {
        name,
        selector,
        description: opts.description,
        ...(opts.repo !== undefined ? { repository: opts.repo } : {}),
        ...(opts.resumeWhen !== undefined ? { resumeWhen: opts.resumeWhen } : {}),
      }),
    (d) =>
      `created group ${d.name}: ${selectorText(d.selector)}` + (d.repository ? `, exported to ${d.repository}` : ''),
  );
}

export function groupList(opts: CommonOptions) {
  return withClient(opts, listGroups, (groups) =>
    groups.length === 0 ? 'no groups' : groups.map((g) => `${g.name}\t${selectorText(g.selector)}`).join('\n'),
  );
}

export function groupShow(name: string, opts: CommonOptions) {
  checkNames([['group name', name]]);
  return withClient(
    opts,
    (c) => showGroup(c, name),
    (g) =>
      [
        `group ${g.definition.name}: ${selectorText(g.definition.selector)}`,
        ...(g.definition.description ? [`  ${g.definition.description}`] : []),
        `members (${g.members.length}):`,
        ...g.members.map((m) => `  ${vmText(m)}`),
        ...g.unreachable.map((u) => `  host ${u.host} did not answer: ${u.error}`),
      ].join('\n'),
  );
}

export function groupDelete(name: string, opts: CommonOptions & { withSchedule?: boolean }) {
  checkNames([['group name', name]]);
  return withClient(
    opts,
    async (c) => {
      await deleteGroup(c, name, { withSchedule: opts.withSchedule });
      return { deleted: name };
    },
    () => `deleted group ${name}${opts.withSchedule ? ' (and its schedule, if any)' : ''}`,
  );
}

// ---- tags and hosts ----

export function tagCommand(vm: VmRef, tags: string[], remove: boolean, opts: CommonOptions) {
  checkTagVm(vm, tags);
  return withClient(
    opts,
    async (c) => ({ vm: vmText(vm), tags: await tagVm(c, vm, remove ? { remove: tags } : { add: tags }) }),
    (r) => `${r.vm}: ${r.tags.length ? r.tags.join(', ') : 'no tags'}`,
  );
}

export function hostList(opts: CommonOptions) {
  return withClient(opts, listHosts, (hosts) =>
    hosts.length === 0
      ? 'no host registered (start `groupsnap worker` on each hypervisor host)'
      : hosts.map((h) => `${h.hostId}\tlast started ${h.lastSeenAt}`).join('\n'),
  );
}

export function hostForget(hostId: string, opts: CommonOptions) {
  checkNames([['host id', hostId]]);
  return withClient(
    opts,
    async (c) => {
      if (!(await forgetHost(c, hostId))) throw new BadInputError(`host ${hostId} is not registered`);
      return { forgotten: hostId };
    },
    () => `host ${hostId} removed from the registry`,
  );
}

// ---- snapshots of a named group ----

export function formatRun(r: GroupRunResult): string {
  const lines = [formatResult(r.snapshot)];
  if (r.retention) {
    lines.push(
      `retention: kept ${r.retention.kept.length}, deleted ${r.retention.deleted.length}` +
        (r.retention.deleted.length ? ` (${r.retention.deleted.join(', ')})` : ''),
    );
    for (const f of r.retention.failed) lines.push(`  not deleted ${f.snapshotId}: ${f.error}`);
  }
  return lines.join('\n');
}

export function snapshotGroupCommand(group: string, options: SnapshotNowOptions, opts: CommonOptions) {
  return withClient(
    opts,
    (c) => snapshotNamedGroup(c, group, { ...options, trigger: 'cli' }),
    formatRun,
    (r) => r.snapshot.status !== 'completed',
  );
}

export function snapshotList(group: string, opts: CommonOptions) {
  checkNames([['group name', group]]);
  return withClient(
    opts,
    (c) => listGroupSnapshots(c, group),
    (list) =>
      list.length === 0
        ? `group ${group} has no snapshots`
        : list
            .map(
              (s) =>
                `${s.snapshotId}\t${s.createdAt}\t${s.vms.length} VM(s)${s.label ? `\t${s.label}` : ''}\n` +
                s.vms.map((v) => `    ${v.domain}@${v.host}: ${v.disks.map((d) => d.target).join(', ')}`).join('\n'),
            )
            .join('\n'),
  );
}

export function snapshotDelete(group: string, snapshotId: string, opts: CommonOptions) {
  checkNames([
    ['group name', group],
    ['snapshot id', snapshotId],
  ]);
  return withClient(
    opts,
    (c) => deleteGroupSnapshot(c, group, snapshotId),
    (r) =>
      [
        `snapshot ${r.snapshotId} of ${r.group}: ${r.status}`,
        ...r.vms.map(
          (v) =>
            `  ${v.domain}@${v.host}: ${v.outcome}${v.error ? ` (${v.error})` : ''}${v.removed.length ? `, removed ${v.removed.length} file(s)` : ''}`,
        ),
      ].join('\n'),
    (r) => r.status !== 'deleted',
  );
}

// ---- restore ----

export function restoreCommand(
  group: string,
  snapshotId: string,
  opts: CommonOptions & { asClone?: boolean; inPlace?: boolean; suffix?: string; yes?: boolean; restoreId?: string },
) {
  if (Boolean(opts.asClone) === Boolean(opts.inPlace))
    throw new BadInputError('give exactly one of --as-clone and --in-place');
  if (opts.inPlace && !opts.yes)
    throw new BadInputError(
      'an in-place restore stops the VMs and discards their current state (kept on disk): confirm with --yes',
    );
  const mode: RestoreMode = opts.asClone ? 'clone' : 'in-place';
  checkRestore({ group, snapshotId, mode, suffix: opts.suffix, restoreId: opts.restoreId });
  return withClient(
    opts,
    (c) =>
      restoreGroup(c, {
        group,
        snapshotId,
        mode,
        suffix: opts.suffix,
        restoreId: opts.restoreId,
        confirmInPlace: opts.yes === true,
      }),
    (r) =>
      [
        `restore ${r.restoreId} of ${r.group} to ${r.snapshotId} (${r.mode}): ${r.status}${r.error ? `: ${r.error}` : ''}`,
        ...r.vms.map(
          (v) =>
            `  ${v.domain}@${v.host}${v.clone ? ` -> ${v.clone}` : ''}${v.state ? ` ${v.state}` : ''}` +
            (v.error ? ` (${v.error})` : '') +
            v.disks
              .map(
                (d) => `\n    ${d.target}: ${d.overlay} over ${d.image}${d.discarded ? `, kept ${d.discarded}` : ''}`,
              )
              .join(''),
        ),
      ].join('\n'),
    (r) => r.status !== 'restored',
  );
}

// ---- schedules ----

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

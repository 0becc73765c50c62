/**
 * What the CLI can check before it connects to anything: names, ids, labels, tags, `--vm` lists, cron, time zones,
 * durations, overlap policies and retention flags. Each check throws a {@link BadInputError} listing every problem
 * (the CLI exits 2 and nothing runs), so bad input is refused the same way whether or not a Temporal server is
 * reachable. The client library and the workflows check the same things again.
 */
import { normalizeGroupDefinition, normalizeRestoreInput, type RestoreInput } from '../common/groups';
import { normalizeRetention, type RetentionPolicy } from '../common/retention';
import { parseDuration, parseOverlap, validateCron, validateTimezone } from '../common/schedule-spec';
import type { GroupSnapshotInput, VmRef } from '../common/types';
import { BadInputError } from '../common/failures';
import {
  assertSafeName,
  checkSnapshotOptions,
  checkVmRefs,
  normalizeSnapshotInput,
  problemList,
} from '../common/validation';

type Problems = ReturnType<typeof problemList>;

function done({ problems }: Problems): void {
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
}

/** Safe names (group names, snapshot ids, labels, host ids, tags, restore ids): `what` -> value, undefined skipped. */
export function checkNames(names: [what: string, value: string | undefined][]): void {
  const p = problemList();
  for (const [what, value] of names) if (value !== undefined) p.check(() => assertSafeName(what, value));
  done(p);
}

/** `snapshot <group>` (a named group) or `snapshot --vm ...` (an ad hoc group). */
export function checkSnapshotTake(
  group: string | undefined,
  input: Omit<GroupSnapshotInput, 'vms'> & { vms?: VmRef[] },
) {
  if (input.vms) {
    normalizeSnapshotInput({ ...input, vms: input.vms, group: group ?? input.group });
    return;
  }
  if (!group) throw new BadInputError('give a group name, or the VMs of an ad hoc group with --vm');
  const p = problemList();
  p.check(() => assertSafeName('group name', group));
  checkSnapshotOptions(input, p.problems);
  done(p);
}

/** `group create <name> (--vm d@h ... | --tag t)`. */
export function checkGroupCreate(
  name: string,
  opts: { vm?: VmRef[]; tag?: string; repo?: string; copyTo?: string },
): void {
  if (opts.vm && opts.tag !== undefined) throw new BadInputError('give either --vm (repeatable) or --tag, not both');
  normalizeGroupDefinition({
    name,
    selector: opts.tag !== undefined ? { tag: opts.tag } : { vms: opts.vm ?? [] },
    ...(opts.repo !== undefined ? { repository: opts.repo } : {}),
    ...(opts.copyTo !== undefined ? { copyTo: opts.copyTo } : {}),
  });
}

/** `tag` / `untag <domain@host> <tags...>`. */
export function checkTagVm(vm: VmRef, tags: string[]): void {
  const p = problemList();
  const vmProblems: string[] = [];
  checkVmRefs([vm], vmProblems);
  p.problems.push(...vmProblems);
  if (tags.length === 0) p.problems.push('give at least one tag');
  for (const t of tags) p.check(() => assertSafeName('tag', t));
  done(p);
}

/** `schedule create <group> ...`: everything the schedule and its retention need, before the group is looked up. */
export function checkScheduleCreate(
  group: string,
  opts: {
    cron: string | string[];
    timezone?: string;
    overlap?: string;
    catchup?: string;
    jitter?: string;
    retention?: RetentionPolicy;
    label?: string;
    maxFreezeMs?: number;
  },
): void {
  const p = problemList();
  p.check(() => assertSafeName('group name', group));
  const crons = Array.isArray(opts.cron) ? opts.cron : [opts.cron];
  if (crons.length === 0) p.problems.push('give a cron expression');
  for (const c of crons) p.check(() => validateCron(c));
  p.check(() => validateTimezone(opts.timezone ?? 'UTC'));
  if (opts.overlap !== undefined) p.check(() => parseOverlap(opts.overlap!));
  if (opts.catchup !== undefined) p.check(() => parseDuration(opts.catchup!, 'catch-up window'));
  if (opts.jitter !== undefined) p.check(() => parseDuration(opts.jitter!, 'jitter'));
  if (opts.retention) p.check(() => normalizeRetention(opts.retention!));
  checkSnapshotOptions({ label: opts.label, maxFreezeMs: opts.maxFreezeMs }, p.problems);
  done(p);
}

/** `schedule backfill <group> --start --end [--overlap]`. */
export function checkBackfill(group: string, opts: { start: string; end: string; overlap?: string }): void {
  const p = problemList();
  p.check(() => assertSafeName('group name', group));
  const start = new Date(opts.start);
  const end = new Date(opts.end);
  if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime()))
    p.problems.push('--start and --end must be ISO times, e.g. 2026-11-24T00:00:00Z');
  else if (!(start < end)) p.problems.push('backfill --start must be before --end');
  if (opts.overlap !== undefined) p.check(() => parseOverlap(opts.overlap!));
  done(p);
}

/** `restore <group> <snapshotId> ...`. */
export function checkRestore(input: RestoreInput): void {
  normalizeRestoreInput(input);
}

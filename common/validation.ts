import {
  DEFAULT_MAX_FREEZE_MS,
  DEFAULT_SHARD_ABOVE_HOSTS,
  DEFAULT_SHARD_HOSTS,
  DEFAULT_UPDATE_BARRIER_MAX_HOSTS,
} from './names';
import {
  QUIESCE_MODES,
  RESUME_WHEN,
  type GroupSnapshotInput,
  type QuiesceMode,
  type ResumeWhen,
  type VmRef,
} from './types';

import { BadInputError } from './failures';

const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/**
 * Checks that `value` can be part of a file name: letters, digits, `.`, `_`, `-`, no leading dot, no `..`,
 * no path separator, at most 100 characters.
 * @throws BadInputError naming `what` and the offending value.
 */
export function assertSafeName(what: string, value: string): void {
  if (!SAFE_NAME.test(value) || value.includes('..')) {
    throw new BadInputError(
      `${what} ${JSON.stringify(value)} is not safe: use 1-100 letters, digits, '.', '_' or '-', ` +
        `starting with a letter or digit, without '..' or path separators`,
    );
  }
}

/**
 * A list of input problems and `check(fn)`, which runs a validation and records its error message instead of
 * throwing, so one call can report every problem at once.
 */
export function problemList(): { problems: string[]; check(fn: () => void): void } {
  const problems: string[] = [];
  return {
    problems,
    check(fn) {
      try {
        fn();
      } catch (err) {
        problems.push((err as Error).message);
      }
    },
  };
}

/**
 * Adds to `problems` what is wrong with a list of group members: empty, a VM without domain or host, an invalid
 * domain name or unsafe host id, a VM listed twice.
 */
export function checkVmRefs(vms: readonly VmRef[], problems: string[]): void {
  if (vms.length === 0) problems.push('the group is empty: give at least one VM');
  const seen = new Set<string>();
  for (const vm of vms) {
    if (!vm.domain || !vm.host) problems.push(`VM ${JSON.stringify(vm)} needs a domain and a host`);
    else if (vm.domain.includes('/') || vm.domain.includes('\0'))
      problems.push(`VM name ${JSON.stringify(vm.domain)} is not valid`);
    else {
      try {
        assertSafeName('host id', vm.host);
      } catch (err) {
        problems.push((err as Error).message);
      }
    }
    const key = `${vm.domain}@${vm.host}`;
    if (seen.has(key)) problems.push(`VM ${key} is listed twice`);
    seen.add(key);
  }
}

export const MIN_MAX_FREEZE_MS = 100;
export const MAX_MAX_FREEZE_MS = 600_000;

/**
 * Adds a problem unless `maxFreezeMs` is a whole number of ms from {@link MIN_MAX_FREEZE_MS} to
 * {@link MAX_MAX_FREEZE_MS}: the one check of a max freeze, by the CLI, client, Nexus handler, workflows and host.
 */
export function checkMaxFreezeMs(maxFreezeMs: unknown, problems: string[]): void {
  if (
    !Number.isInteger(maxFreezeMs) ||
    (maxFreezeMs as number) < MIN_MAX_FREEZE_MS ||
    (maxFreezeMs as number) > MAX_MAX_FREEZE_MS
  )
    problems.push(
      `max freeze must be an integer from ${MIN_MAX_FREEZE_MS} to ${MAX_MAX_FREEZE_MS} ms, got ${maxFreezeMs}`,
    );
}

/** The options of one group snapshot, however it is asked for: ad hoc, on a group, by a schedule, through Nexus. */
export type SnapshotOptions = Omit<GroupSnapshotInput, 'group' | 'vms'>;

/**
 * Adds to `problems` what is wrong with a snapshot's options: the one check of them, made by the CLI, the client,
 * the Nexus handler and the workflows alike. An option left out is not checked (its default is valid).
 */
export function checkSnapshotOptions(options: SnapshotOptions, problems: string[]): void {
  const { label, snapshotId, maxFreezeMs, quiesce, updateBarrierMaxHosts, resumeWhen, shardAboveHosts, shardHosts } =
    options;
  const check = (fn: () => void) => {
    try {
      fn();
    } catch (err) {
      problems.push((err as Error).message);
    }
  };
  if (label !== undefined) check(() => assertSafeName('label', String(label)));
  if (snapshotId !== undefined) check(() => assertSafeName('snapshot id', String(snapshotId)));
  if (maxFreezeMs !== undefined) checkMaxFreezeMs(maxFreezeMs, problems);
  if (quiesce !== undefined && !QUIESCE_MODES.includes(quiesce))
    problems.push(`quiesce must be one of ${QUIESCE_MODES.join(', ')}, got ${quiesce}`);
  if (
    updateBarrierMaxHosts !== undefined &&
    (!Number.isInteger(updateBarrierMaxHosts) || updateBarrierMaxHosts < 0 || updateBarrierMaxHosts > 10_000)
  ) {
    problems.push(`update barrier max hosts must be an integer from 0 to 10000, got ${updateBarrierMaxHosts}`);
  }
  if (resumeWhen !== undefined && !RESUME_WHEN.includes(resumeWhen))
    problems.push(`resume when must be one of ${RESUME_WHEN.join(', ')}, got ${JSON.stringify(resumeWhen)}`);
  if (shardAboveHosts !== undefined && !isIntegerIn(shardAboveHosts, 1, 100_000))
    problems.push(`shard above hosts must be an integer from 1 to 100000, got ${shardAboveHosts}`);
  if (shardHosts !== undefined && !isIntegerIn(shardHosts, 1, 1000))
    problems.push(`shard hosts must be an integer from 1 to 1000, got ${shardHosts}`);
}

function isIntegerIn(x: unknown, min: number, max: number): boolean {
  return Number.isInteger(x) && (x as number) >= min && (x as number) <= max;
}

/** {@link checkSnapshotOptions}, throwing. @throws BadInputError listing every problem found. */
export function assertSnapshotOptions(options: SnapshotOptions): void {
  const problems: string[] = [];
  checkSnapshotOptions(options, problems);
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
}

/** A group snapshot request with every default applied. */
export interface NormalizedSnapshotInput {
  group: string;
  vms: VmRef[];
  label?: string;
  snapshotId?: string;
  maxFreezeMs: number;
  quiesce: QuiesceMode;
  updateBarrierMaxHosts: number;
  resumeWhen: ResumeWhen;
  shardAboveHosts: number;
  shardHosts: number;
  /** Only when `false` (the default is the armed barrier). */
  armedBarrier?: false;
}

/**
 * Checks a group snapshot request and fills in defaults. Pure and deterministic: used by the client before
 * starting anything and again by the workflow.
 * @throws BadInputError listing every problem found.
 */
export function normalizeSnapshotInput(input: GroupSnapshotInput): NormalizedSnapshotInput {
  const { problems, check } = problemList();
  const group = input.group ?? 'adhoc';
  check(() => assertSafeName('group name', group));
  checkSnapshotOptions({ label: input.label, snapshotId: input.snapshotId }, problems);
  const vms = input.vms ?? [];
  checkVmRefs(vms, problems);
  const maxFreezeMs = input.maxFreezeMs ?? DEFAULT_MAX_FREEZE_MS;
  const quiesce = input.quiesce ?? 'none';
  const updateBarrierMaxHosts = input.updateBarrierMaxHosts ?? DEFAULT_UPDATE_BARRIER_MAX_HOSTS;
  const resumeWhen = input.resumeWhen ?? 'group-paused';
  const shardAboveHosts = input.shardAboveHosts ?? DEFAULT_SHARD_ABOVE_HOSTS;
  const shardHosts = input.shardHosts ?? DEFAULT_SHARD_HOSTS;
  if (input.armedBarrier !== undefined && typeof input.armedBarrier !== 'boolean')
    problems.push(`armed barrier must be true or false, got ${JSON.stringify(input.armedBarrier)}`);
  checkSnapshotOptions(
    { maxFreezeMs, quiesce, updateBarrierMaxHosts, resumeWhen, shardAboveHosts, shardHosts },
    problems,
  );
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
  return {
    group,
    vms: vms.map((v) => ({ domain: v.domain, host: v.host })),
    ...(input.label !== undefined ? { label: input.label } : {}),
    ...(input.snapshotId !== undefined ? { snapshotId: input.snapshotId } : {}),
    maxFreezeMs,
    quiesce,
    updateBarrierMaxHosts,
    resumeWhen,
    shardAboveHosts,
    shardHosts,
    ...(input.armedBarrier === false ? { armedBarrier: false as const } : {}),
  };
}

/**
 * Recovery plans: how a group comes back from the repository, tier by tier, each VM checked before the next tier
 * starts, then committed or rolled back (failover) or torn down and recorded (test). Pure types and ids shared by the
 * workflow, the client and the CLI; the plan's schema (zod) is in `plan-schema.ts`, used where plans enter (the
 * client, the CLI, and the control activity that reads a stored plan for a run), never in the workflow bundle.
 */
import type { RepoRestoreResult } from './repo-restore';
import { BadInputError } from './failures';
import { assertSafeName, problemList } from './validation';

/** How a VM is known to be ready on its recovery host. */
export type ReadinessCheck =
  | { kind: 'running'; timeoutMs: number }
  /** A line matching `pattern` (JavaScript regex) in the VM's serial log. */
  | { kind: 'serial'; pattern: string; timeoutMs: number }
  /** `port` of the VM (at `address`, its address on the recovery network) accepts a TCP connection from the host. */
  | { kind: 'tcp'; port: number; address: string; timeoutMs: number }
  /** `command` exits 0 on the recovery host (`sh -c`, a clean environment; the worker's `--allow-drill-checks`). */
  | { kind: 'command'; command: string; timeoutMs: number };

export interface PlanVm {
  /** The VM's name in the group's points. */
  vm: string;
  check: ReadinessCheck;
}

export interface PlanTier {
  name: string;
  vms: PlanVm[];
}

export type RestoreKind = 'full' | 'instant';
export type DecisionPolicy = 'commit' | 'rollback';

export interface RecoveryPlan {
  name: string;
  group: string;
  /** Repository URL the points are restored from. */
  repository: string;
  /** Recovery host of each VM: `vms[vm]`, else `default`. */
  placement: { default?: string; vms: Record<string, string> };
  tiers: PlanTier[];
  /** Networks renamed on the recovery side (failover); a test run uses `network.test` instead. */
  network: {
    map: Record<string, string>;
    /**
     * Test runs: `none` (clones without network interfaces) or a map of each network to an isolated one of the
     * plan's own (no route out: the operator's network definition on the recovery hosts).
     */
    test: 'none' | Record<string, string>;
  };
  /**
   * `full`: every disk rebuilt before its VM starts; `instant`: the VM runs while its data streams in (needs the
   * restore's instant mode on the recovery hosts; passed to the restore as `instant: true`).
   */
  restore: RestoreKind;
  /** Failover: how long the run waits for commit or rollback after the last tier is ready, and what it does then. */
  decision: { timeoutMs: number; onTimeout: DecisionPolicy };
  /** What a commit sets up on the recovery side besides the group definition. */
  commit: {
    /** Export every new point of the group to this repository. @default the group's current repository */
    repository?: string;
    /** Snapshot the group on this cron (a Schedule), when it has none. */
    schedule?: { cron: string; timezone: string };
  };
  description?: string;
}

export type RecoverMode = 'failover' | 'test';

export interface RecoverInput {
  group: string;
  plan: string;
  mode: RecoverMode;
  /** A point id, or `latest`. @default 'latest' */
  point?: string;
  /** @default generated */
  runId?: string;
}

export type VmRecoveryState = 'waiting' | 'restoring' | 'checking' | 'ready' | 'not-ready' | 'failed' | 'removed';

export interface VmProgress {
  vm: string;
  host: string;
  /** Its name on the recovery host (a test run's clones carry the run's suffix). */
  domain: string;
  state: VmRecoveryState;
  /** Tier start -> ready (ms). */
  readyMs?: number;
  reason?: string;
}

export interface TierProgress {
  name: string;
  state: 'waiting' | 'restoring' | 'checking' | 'ready' | 'failed';
  /** Run start -> tier start, and run start -> every VM of the tier ready (ms). */
  startedMs?: number;
  readyMs?: number;
  vms: VmProgress[];
}

export type RecoverState =
  | 'starting'
  | 'recovering'
  | 'awaiting-decision'
  | 'committing'
  | 'rolling-back'
  | 'tearing-down'
  | 'committed'
  | 'rolled-back'
  | 'passed'
  /** Failover: a tier failed; its VMs are left for inspection until `rollback` (or the decision timeout). */
  | 'stopped'
  | 'failed';

export interface RecoverProgress {
  runId: string;
  group: string;
  plan: string;
  mode: RecoverMode;
  snapshotId?: string;
  state: RecoverState;
  tiers: TierProgress[];
  /** Run start -> last tier ready (ms). */
  rtoMs?: number;
  error?: string;
  /** Failover: when the decision's timeout policy applies (ISO). */
  decisionDeadline?: string;
}

export interface RecoverResult extends RecoverProgress {
  /** How the decision was made (failover). */
  decidedBy?: 'update' | 'timeout';
  /** The restores the run made, one per tier and host. */
  restores: RepoRestoreResult[];
  /** Test runs: why the record could not be stored beside the point. */
  recordError?: string;
}

export function recoverWorkflowId(runId: string): string {
  return `groupsnap/recover/${runId}`;
}

export function recoverScheduleId(group: string, plan: string): string {
  return `groupsnap-recover-test/${group}/${plan}`;
}

/** The recovery host of `vm` under `plan`. */
export function hostOf(plan: RecoveryPlan, vm: string): string {
  return plan.placement.vms[vm] ?? plan.placement.default!;
}

/** Checks a recover request. @throws BadInputError naming every problem */
export function normalizeRecoverInput(input: RecoverInput): Required<Omit<RecoverInput, 'runId'>> & RecoverInput {
  const { problems, check } = problemList();
  check(() => assertSafeName('group', input.group));
  check(() => assertSafeName('plan name', input.plan));
  if (input.mode !== 'failover' && input.mode !== 'test')
    problems.push(`mode must be failover or test, not ${JSON.stringify(input.mode)}`);
  const point = input.point ?? 'latest';
  if (point !== 'latest') check(() => assertSafeName('point', point));
  if (input.runId !== undefined) check(() => assertSafeName('run id', input.runId!));
  if (problems.length) throw new BadInputError(problems.join('; '));
  return { ...input, point };
}

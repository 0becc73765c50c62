/**
 * The sharded freeze (docs/adr/0014): a group over `shardAboveHosts` hosts is frozen through shard child workflows of
 * `shardHosts` hosts each. Every shard runs the update barrier of its own hosts (at most `shardHosts` Updates in
 * flight per workflow) and signals the group's workflow once all of them are paused (or one failed); the group's
 * workflow decides the cut once every shard is ready, and signals release (or abort) to every shard, which answers
 * its hosts' waiting Updates. Plan, leases, catalog and compensation stay in the group's workflow
 * (snapshot-phases.ts), so the invariants of the flat barrier hold unchanged: the compensation aborts every shard
 * first, then resumes and undoes on every host.
 */
import {
  CancellationScope,
  type ChildWorkflowHandle,
  condition,
  defineSignal,
  getExternalWorkflowHandle,
  proxyActivities,
  isCancellation,
  log,
  patched,
  setHandler,
  sleep,
  startChild,
  workflowInfo,
} from '@temporalio/workflow';
import { errorMessage, failure } from '../common/failures';
import type { FreezeRequest, FreezeVmReport, PlannedVm } from '../common/host-types';
import {
  groupSnapshotWorkflowId,
  hostTaskQueue,
  SHARD_ARMED_SIGNAL,
  SHARD_DECISION_SIGNAL,
  SHARD_GO_SIGNAL,
  SHARD_REPORT_SIGNAL,
} from '../common/names';
import type { QuiesceMode, ResumeWhen } from '../common/types';
import type { HostActivities } from '../activities/host-activities';
import { ARMED_START_MS, freezeOptions } from './activity-options';
import { adoptFreezeReports, afterFreeze, undoFreeze } from './snapshot-phases';
import { hostArmedUpdate, hostFrozenUpdate, type SnapshotRun } from './snapshot-run';
import { onHostSummary } from './ui';

/** What one shard freezes: its hosts' planned VMs, and the run's freeze settings. */
export interface ShardInput {
  shard: number;
  snapshotId: string;
  maxFreezeMs: number;
  quiesce: QuiesceMode;
  /** The group's run (workflow run id) holding the VMs' leases. */
  leaseOwner: string;
  resumeWhen: ResumeWhen;
  hosts: { host: string; vms: PlannedVm[] }[];
  /** The armed barrier: the shard's hosts pause only once every shard reported them ready (`shardArmed`, `shardGo`). */
  arm?: boolean;
}

/** A host's freeze as its shard saw it: the host's reports, or why its freeze activity failed. */
export interface ShardHostOutcome {
  host: string;
  reports?: FreezeVmReport[];
  error?: string;
}

export interface ShardResult {
  shard: number;
  hosts: ShardHostOutcome[];
}

/** A shard to the group's workflow: every host of the shard is paused (`ready`), or one failed (`ready: false`). */
export const shardReportSignal = defineSignal<[{ shard: number; ready: boolean }]>(SHARD_REPORT_SIGNAL);

/** The group's workflow to a shard: release (`true`) or abort (`false`) its hosts. The first decision counts. */
export const shardDecisionSignal = defineSignal<[boolean]>(SHARD_DECISION_SIGNAL);

/** A shard to the group's workflow (armed barrier): every host of the shard is ready to pause, or one failed. */
export const shardArmedSignal = defineSignal<[{ shard: number; armed: boolean }]>(SHARD_ARMED_SIGNAL);

/** The group's workflow to a shard (armed barrier): every shard is ready, its hosts may pause. */
export const shardGoSignal = defineSignal(SHARD_GO_SIGNAL);

/** Whether this run freezes through shards (groups over `shardAboveHosts` hosts, from the `sharded-barrier` patch). */
export function isSharded(run: SnapshotRun): boolean {
  return run.hosts.length > run.input.shardAboveHosts && patched('sharded-barrier');
}

/** `xs` in consecutive slices of at most `size`. */
export function slices<T>(xs: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += size) out.push(xs.slice(i, i + size));
  return out;
}

/**
 * 3-4, sharded: the freeze window over shard child workflows. Registers the compensation before any shard starts;
 * the group's own deadline bounds reaching the cut, as in the flat freeze.
 */
export async function freezeSharded(run: SnapshotRun): Promise<void> {
  const { hosts, input, snapshotId } = run;
  run.resumeWhen ??= 'group-snapshotted';
  run.release = 'barrier';
  const groups = slices(hosts, input.shardHosts);
  const ready = new Set<number>();
  setHandler(
    shardReportSignal,
    ({ shard, ready: ok }) => {
      if (ok) ready.add(shard);
      else run.barrier = 'abort';
    },
    { description: 'A shard of a sharded freeze reports its hosts paused (ready) or a failure' },
  );
  const armed = new Set<number>();
  setHandler(
    shardArmedSignal,
    ({ shard, armed: ok }) => {
      if (ok) armed.add(shard);
      else run.barrier = 'abort';
    },
    { description: 'A shard of a sharded freeze reports its hosts ready to pause (armed) or a failure' },
  );
  const arm = patched('armed-barrier') && input.armedBarrier !== false;
  run.freezeStartedOn = hosts;
  run.compensations.push(() => undoFreeze(run));
  // From the run's input (not its workflow id, which a replay renames): the group's own id, as the client names it.
  const parentId = groupSnapshotWorkflowId(input.group, snapshotId);
  const starts = groups.map((hs, shard) =>
    startChild(groupSnapshotShard, {
      workflowId: `${parentId}/shard-${shard}`,
      args: [
        {
          shard,
          snapshotId,
          maxFreezeMs: input.maxFreezeMs,
          quiesce: input.quiesce,
          leaseOwner: run.leaseOwner,
          resumeWhen: run.resumeWhen!,
          hosts: hs.map((host) => ({ host, vms: run.plans.get(host)! })),
          ...(arm ? { arm } : {}),
        },
      ],
      staticSummary: `freeze shard ${shard} of ${snapshotId}: ${hs.length} hosts (${hs[0]}..${hs[hs.length - 1]})`,
    }),
  );
  let decided = false;
  const decide = async (release: boolean) => {
    if (decided) return;
    decided = true;
    await signalEveryShard(starts, `deciding (release: ${release})`, (h) => h.signal(shardDecisionSignal, release));
  };
  run.abortShards = () => decide(false);
  const outcomes = starts.map((s) =>
    s
      .then((h) => h.result())
      .then((r) => adoptShard(run, r))
      .catch((err) => {
        run.barrier = 'abort';
        throw err;
      }),
  );
  run.freezesSettled = Promise.allSettled(outcomes);
  const allFrozen = CancellationScope.nonCancellable(() => Promise.all(outcomes));
  allFrozen.catch(() => undefined);
  if (arm) await goWhenArmed(run, starts, () => armed.size === groups.length);
  const barrierPassed = condition(() => ready.size === groups.length || run.barrier === 'abort');
  const deadline = sleep(input.maxFreezeMs, { summary: `freeze deadline (${input.maxFreezeMs} ms)` }).then(
    () => 'deadline' as const,
  );
  if ((await Promise.race([barrierPassed, deadline])) === 'deadline') {
    run.barrier = 'abort';
    throw failure('freezeDeadline', `freeze deadline of ${input.maxFreezeMs} ms passed before every VM was paused`);
  }
  if (run.barrier === 'waiting') run.barrier = 'release';
  await decide(run.barrier === 'release');
  await allFrozen;
  await afterFreeze(run);
}

/**
 * The armed barrier in the group's workflow: once every shard reports its hosts ready, tells every shard to go (the
 * freeze deadline starts after it). Bounded by the shards: a host that cannot start fails its freeze, and its shard
 * reports not armed, which aborts the run.
 */
async function goWhenArmed(run: SnapshotRun, starts: Promise<ShardHandle>[], allArmed: () => boolean): Promise<void> {
  await condition(() => allArmed() || run.barrier === 'abort');
  run.go = run.barrier !== 'abort';
  if (!run.go) return;
  await signalEveryShard(starts, 'telling to go', (h) => h.signal(shardGoSignal));
}

type ShardHandle = ChildWorkflowHandle<typeof groupSnapshotShard>;

/**
 * Sends every shard a signal, all at once and not cancellable; a shard that never started or already ended has no
 * host waiting, so its failure is logged, not thrown.
 */
function signalEveryShard(
  starts: Promise<ShardHandle>[],
  what: string,
  send: (h: ShardHandle) => Promise<void>,
): Promise<unknown> {
  return CancellationScope.nonCancellable(() =>
    Promise.all(
      starts.map((s) => s.then(send).catch((err) => log.warn(`${what} a shard failed`, { error: errorMessage(err) }))),
    ),
  );
}

/** A shard's outcome into the run: each host's reports, or its failure on every VM of the host. */
function adoptShard(run: SnapshotRun, result: ShardResult): void {
  for (const o of result.hosts) {
    if (o.reports) adoptFreezeReports(run, o.host, o.reports);
    if (o.error !== undefined) {
      run.barrier = 'abort';
      for (const domain of run.domains(o.host)) {
        const vm = run.vm(o.host, domain);
        vm.error ??= `freeze failed: ${o.error}`;
      }
    }
  }
}

/**
 * One shard of a sharded freeze (a child of the group's `groupSnapshot`): freezes its hosts with the update
 * barrier, reports to the group's workflow once all are paused or one failed, and answers its hosts with the group's
 * decision. Never fails on a host's failure: it returns every host's outcome for the group's compensation.
 */
export async function groupSnapshotShard(input: ShardInput): Promise<ShardResult> {
  const names = input.hosts.map((h) => h.host);
  const frozen = new Set<string>();
  let barrier: 'waiting' | 'release' | 'abort' = 'waiting';
  let decision: boolean | undefined;
  let failed = false;
  const armed = new Set<string>();
  let go = false;
  setHandler(
    hostArmedUpdate,
    async (h) => {
      armed.add(h);
      await condition(() => go || decision !== undefined);
      return go && decision !== false;
    },
    {
      description: "A host's freeze reports itself ready to pause and waits for the group's go (true) or abort",
      validator: (h) => {
        if (!names.includes(h)) throw new Error(`host ${h} is not part of this shard`);
      },
    },
  );
  setHandler(
    shardGoSignal,
    () => {
      go = true;
    },
    { description: "The group's go: every shard is ready, the hosts may pause" },
  );
  setHandler(
    hostFrozenUpdate,
    async (h) => {
      frozen.add(h);
      await condition(() => barrier !== 'waiting');
      return barrier === 'release';
    },
    {
      description: "A host's freeze reports its VMs paused and waits for the group's release (true) or abort",
      validator: (h) => {
        if (!names.includes(h)) throw new Error(`host ${h} is not part of this shard`);
      },
    },
  );
  setHandler(
    shardDecisionSignal,
    (release) => {
      decision ??= release;
    },
    { description: "The group's decision: release (true) or abort (false)" },
  );
  const release: FreezeRequest['release'] = 'barrier';
  const order = input.resumeWhen === 'group-paused' ? { resumeWhen: input.resumeWhen } : {};
  const outcomes: ShardHostOutcome[] = [];
  // A host's freeze may wait to start as long as the group may stay paused (5 s by default, as in the flat freeze):
  // the plan showed every host's worker alive moments ago, and the group's deadline bounds every pause anyway. Under
  // load a fixed 5 s failed whole 256-host groups whose bound was 60 s (issue 29).
  const freezeVms = (host: string) =>
    proxyActivities<HostActivities>({
      taskQueue: hostTaskQueue(host),
      ...freezeOptions(input.maxFreezeMs, true, input.arm),
      scheduleToStartTimeout: input.arm ? Math.max(input.maxFreezeMs, ARMED_START_MS) : input.maxFreezeMs,
    }).freezeVms;
  const freezes = input.hosts.map(({ host, vms }) =>
    freezeVms(host)
      .executeWithOptions(
        {
          summary: onHostSummary(
            input.quiesce === 'none' ? 'pause + snapshot' : 'quiesce, pause + snapshot',
            vms.map((v) => v.domain),
            host,
          ),
        },
        [
          {
            snapshotId: input.snapshotId,
            vms,
            maxFreezeMs: input.maxFreezeMs,
            release,
            host,
            quiesce: input.quiesce,
            leaseOwner: input.leaseOwner,
            ...order,
            ...(input.arm ? { arm: true as const } : {}),
          },
        ],
      )
      .then(
        (reports) => {
          outcomes.push({ host, reports });
          if (reports.some((r) => r.error)) failed = true;
        },
        (err) => {
          outcomes.push({ host, error: errorMessage(err) });
          failed = true;
        },
      ),
  );
  try {
    if (input.arm)
      await reportArmed(
        input.shard,
        () => armed.size === names.length,
        () => failed,
        () => go || decision !== undefined,
      );
    await reportToGroup(
      input.shard,
      () => frozen.size === names.length,
      () => failed,
      () => decision !== undefined,
    );
  } catch (err) {
    if (!isCancellation(err)) throw err;
    decision = false;
  }
  barrier = decision ? 'release' : 'abort';
  await CancellationScope.nonCancellable(() => Promise.all(freezes));
  return { shard: input.shard, hosts: outcomes };
}

/**
 * The shard's side of the armed barrier: reports armed once every host is ready to pause (or not armed at a failure)
 * and returns once the group said go or decided.
 */
async function reportArmed(
  shard: number,
  allArmed: () => boolean,
  failed: () => boolean,
  heard: () => boolean,
): Promise<void> {
  const group = getExternalWorkflowHandle(workflowInfo().parent!.workflowId);
  await condition(() => allArmed() || failed() || heard());
  if (heard()) return;
  await group.signal(shardArmedSignal, { shard, armed: !failed() });
  await condition(heard);
}

/**
 * The shard's side of the group's barrier: reports ready once every host is paused (or not ready at a failure), a
 * failure after ready too, and returns once the group has decided.
 */
async function reportToGroup(
  shard: number,
  allPaused: () => boolean,
  failed: () => boolean,
  decided: () => boolean,
): Promise<void> {
  const group = getExternalWorkflowHandle(workflowInfo().parent!.workflowId);
  await condition(() => allPaused() || failed() || decided());
  if (decided()) return;
  await group.signal(shardReportSignal, { shard, ready: !failed() });
  if (failed()) return condition(decided);
  await condition(() => failed() || decided());
  if (!decided()) await group.signal(shardReportSignal, { shard, ready: false });
  await condition(decided);
}

import {
  ActivityCancellationType,
  type ActivityOptions,
  ApplicationFailure,
  CancellationScope,
  condition,
  defineQuery,
  defineUpdate,
  isCancellation,
  log,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { FreezeVmReport, HostActivities, PlannedVm, UndoVmReport } from '../activities/host-activities';
import { formatSnapshotId, HOST_FROZEN_UPDATE, hostTaskQueue } from '../common/names';
import {
  GroupsnapGroup,
  GroupsnapMaxFreezeMs,
  GroupsnapSnapshotId,
  GroupsnapVmCount,
} from '../common/search-attributes';
import type {
  GroupSnapshotInput,
  GroupSnapshotResult,
  SnapshotPhase,
  SnapshotProgress,
  VmResult,
} from '../common/types';
import { BAD_INPUT, checked, errorMessage, FAILURE, isBadInput } from '../common/failures';
import { normalizeSnapshotInput } from '../common/validation';
import { recordCompensation, recordRun } from './run-metrics';
import { onHostSummary, progressDetails } from './ui';

/** Failure type of a group snapshot that failed and was compensated; its details hold the result. */
export const SNAPSHOT_FAILED = FAILURE.snapshotFailed;

export const progressQuery = defineQuery<SnapshotProgress>('progress');

/**
 * The cross-host barrier: each host's freeze, once its VMs are paused and snapshotted, calls this update and waits
 * in it; all calls return together, `true` when every host has reported (release) or `false` (abort).
 */
export const hostFrozenUpdate = defineUpdate<boolean, [string]>(HOST_FROZEN_UPDATE);

/** How long a run holds its VM leases; they expire by themselves if the run dies. */
const LOCK_TTL_MS = 15 * 60_000;

/** Activity presets: short and fail-fast before the freeze, bounded inside it, patient for clean-up. */
const PRESETS: Record<'plan' | 'lock' | 'cleanup' | 'thaw', ActivityOptions> = {
  plan: {
    scheduleToStartTimeout: '10s', // nobody polls the host's queue: fail fast
    startToCloseTimeout: '60s',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: [BAD_INPUT] },
  },
  lock: {
    scheduleToStartTimeout: '10s',
    startToCloseTimeout: '10s',
    scheduleToCloseTimeout: '10m', // how long to wait for another snapshot of the same VM
    retry: { initialInterval: '200ms', backoffCoefficient: 1.5, maximumInterval: '5s' },
  },
  cleanup: {
    startToCloseTimeout: '10m',
    heartbeatTimeout: '60s',
    scheduleToCloseTimeout: '1h', // a host that is down now may come back
    retry: { initialInterval: '200ms', backoffCoefficient: 2, maximumInterval: '10s' },
    // A catalog write cancelled with the run ends before compensation undoes its snapshot.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  },
  thaw: {
    startToCloseTimeout: '30s',
    scheduleToCloseTimeout: '1h',
    retry: { initialInterval: '100ms', backoffCoefficient: 2, maximumInterval: '5s' },
  },
};

function host(hostId: string) {
  const taskQueue = hostTaskQueue(hostId);
  return {
    plan: proxyActivities<HostActivities>({ taskQueue, ...PRESETS.plan }),
    lock: proxyActivities<HostActivities>({ taskQueue, ...PRESETS.lock }),
    thaw: proxyActivities<HostActivities>({ taskQueue, ...PRESETS.thaw }),
    cleanup: proxyActivities<HostActivities>({ taskQueue, ...PRESETS.cleanup }),
    freeze: (maxFreezeMs: number) =>
      proxyActivities<HostActivities>({
        taskQueue,
        scheduleToStartTimeout: '5s',
        startToCloseTimeout: maxFreezeMs + 30_000,
        // The freeze heartbeats while it runs: a host that dies mid-freeze is noticed in seconds.
        heartbeatTimeout: '2s',
        // Pausing or snapshotting twice is never right: a failed freeze is compensated, not retried.
        retry: { maximumAttempts: 1 },
        // Compensation must not start while a host is still pausing VMs.
        cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      }),
  };
}

function defaultSnapshotId(): string {
  return formatSnapshotId(new Date(workflowInfo().startTime), uuid4().slice(0, 6));
}

/**
 * A crash-consistent snapshot of a group of VMs spread over hosts, as a saga: plan everything on each host, take
 * the VMs' leases, pause every running VM, snapshot every disk, resume only once all are snapshotted; on any
 * failure or cancellation, resume what this run paused and undo the snapshots it took.
 */
export async function groupSnapshot(rawInput: GroupSnapshotInput): Promise<GroupSnapshotResult> {
  const input = checked(() => normalizeSnapshotInput(rawInput));
  const snapshotId = input.snapshotId ?? defaultSnapshotId();
  // Leases belong to this run, never to a name a caller chose: two runs given the same snapshot id stay apart.
  const leaseOwner = workflowInfo().runId;
  const { group, maxFreezeMs, quiesce } = input;
  const hosts = [...new Set(input.vms.map((v) => v.host))].sort();
  const byHost = new Map(hosts.map((h) => [h, input.vms.filter((v) => v.host === h).map((v) => v.domain)]));
  const vmResults: VmResult[] = input.vms.map((v) => ({
    ...v,
    outcome: 'not-snapshotted',
    pausedByUs: false,
    disks: [],
  }));
  const vmResult = (h: string, domain: string) => vmResults.find((r) => r.host === h && r.domain === domain)!;

  const progress: SnapshotProgress = {
    phase: 'planning',
    snapshotId,
    vms: input.vms.map((v) => ({ ...v, state: 'pending' })),
  };
  setHandler(progressQuery, () => progress, { description: 'Phase of the group snapshot and the state of each VM' });
  /** The live "current details" in the Temporal UI: phase and per-VM progress (and the result once known). */
  const showProgress = (final?: GroupSnapshotResult) => setCurrentDetails(progressDetails(progress, final));
  showProgress();

  let barrier: 'waiting' | 'release' | 'abort' = 'waiting';
  const frozenHosts = new Set<string>();
  setHandler(
    hostFrozenUpdate,
    async (h) => {
      frozenHosts.add(h);
      await condition(() => barrier !== 'waiting');
      return barrier === 'release';
    },
    {
      description: "A host's freeze reports its VMs snapshotted and waits for the group's release (true) or abort",
      validator: (h) => {
        if (!hosts.includes(h)) throw new Error(`host ${h} is not part of this snapshot`);
      },
    },
  );
  const setPhase = (phase: SnapshotPhase) => {
    progress.phase = phase;
    showProgress();
    log.info('group snapshot phase', { snapshotId, phase });
  };
  const markVm = (h: string, domain: string, state: SnapshotProgress['vms'][number]['state']) => {
    const vm = progress.vms.find((v) => v.host === h && v.domain === domain);
    if (vm && vm.state !== state) {
      vm.state = state;
      showProgress();
    }
  };

  upsertSearchAttributes([
    { key: GroupsnapGroup, value: group },
    { key: GroupsnapSnapshotId, value: snapshotId },
    { key: GroupsnapVmCount, value: input.vms.length },
    { key: GroupsnapMaxFreezeMs, value: maxFreezeMs },
  ]);

  const plans = new Map<string, PlannedVm[]>();
  const freezeReports = new Map<string, FreezeVmReport[]>();
  const lockedHosts: string[] = [];
  let createdAt: string | undefined;

  /** Host wall-clock times of each VM's pause and resume, keyed `domain@host`. */
  const times = new Map<string, { pausedAtMs: number; resumedAtMs?: number }>();

  const result = (status: GroupSnapshotResult['status'], error?: string): GroupSnapshotResult => {
    const spans = [...times.values()];
    const ends = spans.map((t) => t.resumedAtMs).filter((t): t is number => t !== undefined);
    const res: GroupSnapshotResult = {
      snapshotId,
      workflowId: workflowInfo().workflowId,
      group,
      ...(input.label !== undefined ? { label: input.label } : {}),
      status,
      ...(createdAt ? { createdAt } : {}),
      groupFreezeMs: ends.length ? round(Math.max(...ends) - Math.min(...spans.map((t) => t.pausedAtMs))) : 0,
      maxVmFreezeMs: Math.max(0, ...vmResults.map((v) => v.freezeMs ?? 0)),
      vms: vmResults,
      ...(error ? { error } : {}),
    };
    showProgress(res);
    return res;
  };

  const applyResume = (
    h: string,
    r: { domain: string; pausedAtMs?: number; resumedAtMs?: number; resumedByGuard?: boolean },
  ) => {
    const vm = vmResult(h, r.domain);
    if (r.pausedAtMs !== undefined)
      times.set(`${r.domain}@${h}`, { pausedAtMs: r.pausedAtMs, resumedAtMs: r.resumedAtMs });
    if (r.pausedAtMs !== undefined && r.resumedAtMs !== undefined) vm.freezeMs = round(r.resumedAtMs - r.pausedAtMs);
    if (r.resumedByGuard) vm.resumedByGuard = true;
  };

  let freezeStartedOn: string[] = [];
  let freezesSettled: Promise<unknown> = Promise.resolve();

  /** Resumes what this run paused on `hostIds` (a no-op for VMs already resumed), then thaws guest filesystems. */
  const thawAll = async (hostIds: string[]): Promise<void> => {
    await Promise.all(
      hostIds.map(async (h) => {
        const quiesced = (freezeReports.get(h) ?? []).filter((r) => r.quiesced).map((r) => r.domain);
        const out = await host(h).thaw.thawVms.executeWithOptions(
          { summary: onHostSummary('resume', byHost.get(h)!, h) },
          [{ snapshotId, domains: byHost.get(h)!, quiesced }],
        );
        for (const r of out) {
          if (r.pausedByUs) {
            // The journal knows even when the freeze report was lost with its worker.
            vmResult(h, r.domain).pausedByUs = true;
            applyResume(h, r);
          }
          if (r.state) vmResult(h, r.domain).state = r.state;
        }
      }),
    );
  };

  /**
   * Saga compensation, run even when the workflow is cancelled: resume at once, let every freeze activity
   * finish (so no host pauses a VM after this), resume again, then undo every overlay this run created.
   * A failing step is logged and the others still run.
   */
  const compensate = async (): Promise<void> => {
    if (freezeStartedOn.length === 0) return;
    await thawAll(freezeStartedOn).catch((err) => log.warn('thaw failed', { error: errorMessage(err) }));
    await freezesSettled;
    await thawAll(freezeStartedOn).catch((err) => log.error('thaw failed', { error: errorMessage(err) }));
    await Promise.all(
      freezeStartedOn.map(async (h) => {
        // Undo is asked for every planned VM of the host: it checks each disk's chain and only touches
        // overlays of this run, so a host whose freeze report was lost is covered too.
        let reports: UndoVmReport[];
        try {
          const domains = plans.get(h)!.map((p) => p.domain);
          reports = await host(h).cleanup.undoSnapshots.executeWithOptions(
            { summary: onHostSummary('undo snapshot of', domains, h) },
            [{ snapshotId, vms: plans.get(h)!.map((p) => ({ domain: p.domain, disks: p.disks })), leaseOwner }],
          );
        } catch (err) {
          for (const p of plans.get(h)!) {
            const vm = vmResult(h, p.domain);
            vm.outcome = 'cleanup-pending';
            vm.cleanupPending = p.disks.map((d) => d.overlay);
            vm.error = `undo failed: ${errorMessage(err)}`;
          }
          return;
        }
        for (const r of reports) {
          const vm = vmResult(h, r.domain);
          vm.disks = plans.get(h)!.find((p) => p.domain === r.domain)!.disks;
          if (r.error) {
            vm.outcome = 'cleanup-pending';
            vm.cleanupPending = r.cleanupPending;
            vm.error = vm.error ? `${vm.error}; undo: ${r.error}` : `undo: ${r.error}`;
          } else {
            vm.outcome = r.hadSnapshot ? 'rolled-back' : 'not-snapshotted';
          }
          if (!r.hadSnapshot && !r.error) vm.disks = [];
          markVm(h, r.domain, r.error ? 'failed' : r.hadSnapshot ? 'rolled-back' : 'resumed');
        }
      }),
    );
  };

  try {
    // 1. Plan on every host in parallel: nothing is changed, every problem is reported before any pause.
    setPhase('planning');
    const planned = await Promise.allSettled(
      hosts.map((h) =>
        host(h).plan.planVms.executeWithOptions({ summary: onHostSummary('plan', byHost.get(h)!, h) }, [
          { snapshotId, domains: byHost.get(h)!, quiesce },
        ]),
      ),
    );
    const planProblems = planned.flatMap((p, i) =>
      p.status === 'rejected' ? [describePlanFailure(hosts[i], p.reason)] : [],
    );
    if (planProblems.length > 0) {
      // Bad input and absent workers are the caller's to fix (exit 2); anything else is a failure of ours.
      const callerFixable = planProblems.every((p) => p.callerFixable);
      throw ApplicationFailure.nonRetryable(
        planProblems.map((p) => p.message).join('; '),
        callerFixable ? BAD_INPUT : 'PlanFailed',
      );
    }
    planned.forEach((p, i) => {
      const vms = (p as PromiseFulfilledResult<PlannedVm[]>).value;
      plans.set(hosts[i], vms);
      for (const vm of vms) {
        Object.assign(vmResult(hosts[i], vm.domain), { uuid: vm.uuid, stateBefore: vm.state });
        markVm(hosts[i], vm.domain, 'planned');
      }
    });

    // 2. Leases, host by host in sorted order so two runs sharing VMs cannot deadlock.
    setPhase('locking');
    for (const h of hosts) {
      lockedHosts.push(h);
      await host(h).lock.acquireLocks.executeWithOptions({ summary: onHostSummary('lease', byHost.get(h)!, h) }, [
        { owner: leaseOwner, domains: byHost.get(h)!, ttlMs: LOCK_TTL_MS },
      ]);
    }
    // 2b. Plan again under the leases: another run may have snapshotted a shared VM while this one waited, and
    // the freeze must put its overlays on the top layers as they are now (it checks them once more itself).
    if (patched('plan-under-lease')) {
      const replanned = await Promise.all(
        hosts.map((h) =>
          host(h).plan.planVms.executeWithOptions({ summary: onHostSummary('plan under lease', byHost.get(h)!, h) }, [
            { snapshotId, domains: byHost.get(h)!, quiesce, leaseOwner },
          ]),
        ),
      );
      replanned.forEach((vms, i) => {
        plans.set(hosts[i], vms);
        for (const vm of vms) Object.assign(vmResult(hosts[i], vm.domain), { uuid: vm.uuid, stateBefore: vm.state });
      });
    }

    // 3. The freeze window: pause + snapshot on every host; resume at once when the group has one host.
    setPhase('freezing');
    const singleHost = hosts.length === 1;
    // Each host waits inside an update, and Temporal caps the updates in flight per workflow: larger groups are
    // released by thawVms activities instead.
    const release = singleHost ? 'local' : hosts.length <= input.updateBarrierMaxHosts ? 'barrier' : 'thaw';
    freezeStartedOn = hosts;
    const freezes = hosts.map((h) =>
      host(h)
        .freeze(maxFreezeMs)
        .freezeVms.executeWithOptions(
          {
            summary: onHostSummary(
              quiesce === 'none' ? 'pause + snapshot' : 'quiesce, pause + snapshot',
              byHost.get(h)!,
              h,
            ),
          },
          [{ snapshotId, vms: plans.get(h)!, maxFreezeMs, release, host: h, quiesce, leaseOwner }],
        )
        .then((reports) => {
          if (reports.some((r) => r.error)) barrier = 'abort';
          freezeReports.set(h, reports);
          for (const r of reports) {
            const vm = vmResult(h, r.domain);
            vm.pausedByUs = r.pausedByUs;
            vm.quiesced = r.quiesced;
            if (r.snapshotted) {
              vm.outcome = 'snapshotted';
              vm.disks = plans.get(h)!.find((p) => p.domain === r.domain)!.disks;
            }
            if (r.error) vm.error = r.error;
            if (r.state) vm.state = r.state;
            markVm(h, r.domain, r.error ? 'failed' : r.snapshotted ? 'snapshotted' : 'paused');
            applyResume(h, r);
          }
          return reports;
        })
        .catch((err) => {
          barrier = 'abort';
          throw err;
        }),
    );
    freezesSettled = Promise.allSettled(freezes);
    const allFrozen = CancellationScope.nonCancellable(() => Promise.all(freezes));
    // Awaited below on the success path; failures are also seen through freezesSettled by compensation.
    allFrozen.catch(() => undefined);
    const deadline = sleep(maxFreezeMs, { summary: `freeze deadline (${maxFreezeMs} ms)` }).then(
      () => 'deadline' as const,
    );
    // 4. The cross-host barrier: release once every host has reported its snapshots. One-host groups resume on
    // their host; with the update barrier, hosts resume as soon as the release reaches them and their freeze
    // activities then complete; otherwise the VMs are resumed by thawVms below.
    const barrierPassed =
      release === 'barrier' ? condition(() => frozenHosts.size === hosts.length || barrier === 'abort') : allFrozen;
    const first = await Promise.race([barrierPassed, deadline]);
    if (first === 'deadline') {
      barrier = 'abort';
      throw ApplicationFailure.nonRetryable(
        `freeze deadline of ${maxFreezeMs} ms passed before every VM was snapshotted`,
        'FreezeDeadline',
      );
    }
    if (barrier === 'waiting') barrier = 'release';
    await allFrozen;
    const failures = vmResults.filter((v) => v.error);
    if (failures.length > 0) {
      throw ApplicationFailure.nonRetryable(
        failures.map((v) => `${v.domain}@${v.host}: ${v.error}`).join('; '),
        'FreezeFailed',
      );
    }
    if (release === 'thaw') await CancellationScope.nonCancellable(() => thawAll(freezeStartedOn));
    // The cut: when the last VM's snapshot completed, on its host's clock.
    const cutMs = Math.max(...[...freezeReports.values()].flat().map((r) => r.snapshottedAtMs ?? 0));
    createdAt = new Date(cutMs).toISOString();

    for (const v of vmResults) if (v.pausedByUs) markVm(v.host, v.domain, 'resumed');
    const brokenCut = vmResults.filter((v) => v.resumedByGuard);
    if (brokenCut.length > 0) {
      throw ApplicationFailure.nonRetryable(
        `the freeze deadline resumed ${brokenCut.map((v) => v.domain).join(', ')} before the group was released`,
        'FreezeDeadline',
      );
    }
    // A cancellation that arrived during the window is honoured now, with compensation.
    if (CancellationScope.current().consideredCancelled) await CancellationScope.current().cancelRequested;

    // 5. Catalog on each VM and beside its images (after the VMs run again).
    setPhase('cataloguing');
    await Promise.all(
      hosts.map((h) =>
        host(h).cleanup.recordCatalog.executeWithOptions(
          { summary: onHostSummary('record catalog of', byHost.get(h)!, h) },
          [
            {
              host: h,
              entry: { snapshotId, group, createdAt: createdAt!, ...(input.label ? { label: input.label } : {}) },
              vms: plans.get(h)!.map((p) => ({ domain: p.domain, uuid: p.uuid, disks: p.disks })),
              leaseOwner,
            },
          ],
        ),
      ),
    );
    setPhase('done');
    const completed = result('completed');
    recordRun('completed', group, completed);
    return completed;
  } catch (err) {
    // Hosts waiting at the barrier resume now; compensation then undoes their snapshots.
    barrier = 'abort';
    if (isBadInput(err)) {
      recordRun('rejected', group);
      throw err;
    }
    setPhase('compensating');
    await CancellationScope.nonCancellable(() => compensate());
    if (freezeStartedOn.length > 0) recordCompensation(group);
    createdAt = undefined;
    const failed = result('failed', errorMessage(err));
    recordRun(isCancellation(err) ? 'cancelled' : 'failed', group, failed);
    if (isCancellation(err)) throw err;
    throw ApplicationFailure.create({
      type: SNAPSHOT_FAILED,
      message: failed.error!,
      nonRetryable: true,
      details: [failed],
    });
  } finally {
    await CancellationScope.nonCancellable(() =>
      Promise.all(
        lockedHosts.map((h) =>
          host(h).cleanup.releaseLocks.executeWithOptions(
            { summary: onHostSummary('release leases of', byHost.get(h)!, h) },
            [{ owner: leaseOwner, domains: byHost.get(h)! }],
          ),
        ),
      ),
    ).catch((err) => log.warn('releasing VM leases failed; they expire by themselves', { error: errorMessage(err) }));
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function describePlanFailure(h: string, reason: unknown): { message: string; callerFixable: boolean } {
  const cause = (reason as { cause?: unknown })?.cause;
  if (cause instanceof ApplicationFailure && cause.type === BAD_INPUT)
    return { message: cause.message, callerFixable: true };
  if ((cause as { timeoutType?: number } | undefined)?.timeoutType !== undefined) {
    return {
      message: `no worker answered for host ${h} (is 'groupsnap worker --host ${h}' running?)`,
      callerFixable: true,
    };
  }
  return { message: `host ${h}: ${errorMessage(cause ?? reason)}`, callerFixable: false };
}

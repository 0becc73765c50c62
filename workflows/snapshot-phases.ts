/**
 * The phases of a group snapshot (plan, lease, freeze, catalog) and its compensation, each over one
 * {@link SnapshotRun}. Read workflows/group-snapshot.ts first: it strings them together.
 */
import { ApplicationFailure, CancellationScope, condition, log, patched, sleep } from '@temporalio/workflow';
import type { FreezeRequest, FreezeVmReport, PlannedVm, UndoVmReport } from '../common/host-types';
import { BAD_INPUT, errorMessage, failure } from '../common/failures';
import { onHost } from './activity-options';
import type { SnapshotRun } from './snapshot-run';
import { onHostSummary } from './ui';

/** How long a run holds its VM leases between steps; the host steps renew them while they run. */
const LEASE_TTL_MS = 15 * 60_000;

/**
 * 1. Plan on every host in parallel: nothing is changed, every problem is reported before any pause. Bad input and
 * absent workers are the caller's to fix (BAD_INPUT, exit 2); anything else is a failure of ours.
 */
export async function plan(run: SnapshotRun): Promise<void> {
  const { snapshotId, hosts } = run;
  const planned = await Promise.allSettled(
    hosts.map((h) =>
      onHost(h).plan.planVms.executeWithOptions({ summary: onHostSummary('plan', run.domains(h), h) }, [
        { snapshotId, domains: run.domains(h), quiesce: run.input.quiesce },
      ]),
    ),
  );
  const problems = planned.flatMap((p, i) =>
    p.status === 'rejected' ? [describePlanFailure(hosts[i], p.reason)] : [],
  );
  if (problems.length > 0) {
    throw failure(
      problems.every((p) => p.callerFixable) ? 'badInput' : 'planFailed',
      problems.map((p) => p.message).join('; '),
    );
  }
  planned.forEach((p, i) => {
    adoptPlans(run, hosts[i], (p as PromiseFulfilledResult<PlannedVm[]>).value);
    for (const vm of run.plans.get(hosts[i])!) run.markVm(hosts[i], vm.domain, 'planned');
  });
}

function adoptPlans(run: SnapshotRun, h: string, vms: PlannedVm[]): void {
  run.plans.set(h, vms);
  for (const vm of vms) Object.assign(run.vm(h, vm.domain), { uuid: vm.uuid, stateBefore: vm.state });
}

/**
 * 2. Leases, host by host in sorted order so two runs sharing VMs cannot deadlock; then plan again under them:
 * another run may have snapshotted a shared VM while this one waited, and the freeze must put its overlays on the
 * top layers as they are now (the freeze checks them once more itself).
 */
export async function lease(run: SnapshotRun): Promise<void> {
  for (const h of run.hosts) {
    run.leasedHosts.push(h);
    await onHost(h).lock.acquireLocks.executeWithOptions({ summary: onHostSummary('lease', run.domains(h), h) }, [
      { owner: run.leaseOwner, domains: run.domains(h), ttlMs: LEASE_TTL_MS },
    ]);
  }
  if (!patched('plan-under-lease')) return;
  // Histories recorded before the `group-paused` order replay with the order they were taken in.
  run.resumeWhen = patched('resume-when-group-paused') ? run.input.resumeWhen : 'group-snapshotted';
  // In the group-paused order every host makes its overlay files now, before any host pauses: removed again by
  // this compensation when the run fails before its freeze (the freeze's own compensation covers it after that).
  const prepare = run.resumeWhen === 'group-paused';
  if (prepare) run.compensations.push(() => removePreparedOverlays(run));
  const replanned = await Promise.all(
    run.hosts.map((h) =>
      onHost(h).plan.planVms.executeWithOptions(
        {
          summary: onHostSummary(
            prepare ? 'plan under lease, make overlays of' : 'plan under lease',
            run.domains(h),
            h,
          ),
        },
        [
          {
            snapshotId: run.snapshotId,
            domains: run.domains(h),
            quiesce: run.input.quiesce,
            leaseOwner: run.leaseOwner,
            ...(prepare ? { prepareOverlays: true } : {}),
          },
        ],
      ),
    ),
  );
  replanned.forEach((vms, i) => adoptPlans(run, run.hosts[i], vms));
}

/**
 * Removes the overlay files made under the leases on hosts whose freeze never started (undo checks each disk's
 * chain and only removes files no disk uses); failures are left in the result as files to clean up.
 */
async function removePreparedOverlays(run: SnapshotRun): Promise<void> {
  await Promise.all(
    run.hosts
      .filter((h) => !run.freezeStartedOn.includes(h) && run.plans.has(h))
      .map(async (h) => {
        const plans = run.plans.get(h)!;
        try {
          await undoOnHost(run, h, onHostSummary('remove prepared overlays of', run.domains(h), h));
        } catch (err) {
          for (const p of plans) {
            const vm = run.vm(h, p.domain);
            vm.cleanupPending = p.disks.map((d) => d.overlay);
            vm.error = `removing prepared overlays failed: ${errorMessage(err)}`;
          }
        }
      }),
  );
}

/** Undoes this run's snapshot on every planned VM of host `h` (only this run's overlays are touched). */
function undoOnHost(run: SnapshotRun, h: string, summary: string): Promise<UndoVmReport[]> {
  const plans = run.plans.get(h)!;
  return onHost(h).cleanup.undoSnapshots.executeWithOptions({ summary }, [
    {
      snapshotId: run.snapshotId,
      vms: plans.map((p) => ({ domain: p.domain, disks: p.disks })),
      leaseOwner: run.leaseOwner,
    },
  ]);
}

/** Releases the leases this run asked for (whatever happened; they would expire by themselves). */
export async function releaseLeases(run: SnapshotRun): Promise<void> {
  await CancellationScope.nonCancellable(() =>
    Promise.all(
      run.leasedHosts.map((h) =>
        onHost(h).cleanup.releaseLocks.executeWithOptions(
          { summary: onHostSummary('release leases of', run.domains(h), h) },
          [{ owner: run.leaseOwner, domains: run.domains(h) }],
        ),
      ),
    ),
  ).catch((err) => log.warn('releasing VM leases failed; they expire by themselves', { error: errorMessage(err) }));
}

/**
 * 3-4. The freeze window and the cross-host barrier: pause + snapshot on every host; a one-host group resumes on its
 * host at once; with the update barrier, hosts resume the moment the last host has reported; above
 * `updateBarrierMaxHosts` hosts (Temporal caps updates in flight per workflow), hosts signal their pauses and
 * `releaseFreeze` activities release them (`group-paused` order), or `thawVms` activities resume them (old order).
 * Registers the compensation (resume, then undo) before the first host may pause.
 */
export async function freeze(run: SnapshotRun): Promise<void> {
  const { hosts, snapshotId, input } = run;
  const { maxFreezeMs, quiesce } = input;
  run.resumeWhen ??= 'group-snapshotted'; // set by the lease phase; runs from before `plan-under-lease` use the old order
  const early = run.resumeWhen === 'group-paused';
  let release: FreezeRequest['release'] =
    hosts.length === 1 ? 'local' : hosts.length <= input.updateBarrierMaxHosts ? 'barrier' : 'thaw';
  if (release === 'thaw' && early && patched('release-on-pause-signal')) release = 'signal';
  run.release = release;
  const order = early ? { resumeWhen: run.resumeWhen } : {};
  run.freezeStartedOn = hosts;
  run.compensations.push(() => undoFreeze(run));
  // A freeze attempt timed out by the server (e.g. it was down when the host completed) is retried, and the retry
  // returns the host's outcome of the first attempt instead of failing the run (activity-options.ts, freezeOptions).
  const retryLost = patched('freeze-retry-finds-outcome');
  // The armed barrier: no host pauses before every host's freeze has started and is ready (docs/adr/0014).
  const arm = release === 'barrier' && patched('armed-barrier') && input.armedBarrier !== false;
  const freezes = hosts.map((h) =>
    onHost(h)
      .freeze(maxFreezeMs, retryLost, arm)
      .freezeVms.executeWithOptions(
        {
          summary: onHostSummary(
            quiesce === 'none' ? 'pause + snapshot' : 'quiesce, pause + snapshot',
            run.domains(h),
            h,
          ),
        },
        [
          {
            snapshotId,
            vms: run.plans.get(h)!,
            maxFreezeMs,
            release,
            host: h,
            quiesce,
            leaseOwner: run.leaseOwner,
            ...order,
            ...(arm ? { arm: true as const } : {}),
          },
        ],
      )
      .then((reports) => adoptFreezeReports(run, h, reports))
      .catch((err) => {
        run.barrier = 'abort';
        throw err;
      }),
  );
  run.freezesSettled = Promise.allSettled(freezes);
  const allFrozen = CancellationScope.nonCancellable(() => Promise.all(freezes));
  // Awaited below on the success path; failures are also seen through freezesSettled by compensation.
  allFrozen.catch(() => undefined);
  if (arm) {
    // Bounded by the freezes themselves: one that cannot start or dies fails, which aborts the run.
    await condition(() => run.armedHosts.size === hosts.length || run.barrier === 'abort');
    run.go = run.barrier !== 'abort';
  }
  const barrierPassed =
    release === 'barrier'
      ? condition(() => run.frozenHosts.size === hosts.length || run.barrier === 'abort')
      : release === 'signal'
        ? condition(() => run.pausedHosts.size === hosts.length || run.barrier === 'abort')
        : allFrozen;
  // The workflow's own bound on reaching the release. A one-host group is released on its host, which bounds each
  // VM's pause itself (deadline timers, reported as resumed by the guard, which fails the run below); its activity
  // also covers VMs already running again, so it is not a freeze to bound. In the group-snapshotted order this
  // holds since the `local-freeze-host-bounded` patch: before it, a Temporal outage longer than the deadline
  // failed a run whose host had snapshotted and resumed every VM in time (issue 29).
  const hostBounded = release === 'local' && (early || patched('local-freeze-host-bounded'));
  const deadline = hostBounded
    ? new Promise<'deadline'>(() => {})
    : sleep(maxFreezeMs, { summary: `freeze deadline (${maxFreezeMs} ms)` }).then(() => 'deadline' as const);
  if ((await Promise.race([barrierPassed, deadline])) === 'deadline') {
    run.barrier = 'abort';
    throw failure('freezeDeadline', `freeze deadline of ${maxFreezeMs} ms passed before every VM was snapshotted`);
  }
  if (run.barrier === 'waiting') run.barrier = 'release';
  // Not awaited before the freezes: a host that died meanwhile fails its freeze at once, its release only later.
  const released = release === 'signal' ? releaseHosts(run, run.barrier === 'release') : Promise.resolve();
  await allFrozen;
  await released;
  await afterFreeze(run);
}

/** A host's freeze reports, into the run's per-VM results and progress. */
export function adoptFreezeReports(run: SnapshotRun, h: string, reports: FreezeVmReport[]): FreezeVmReport[] {
  if (reports.some((r) => r.error)) run.barrier = 'abort';
  run.freezeReports.set(h, reports);
  for (const r of reports) {
    const vm = run.vm(h, r.domain);
    vm.pausedByUs = r.pausedByUs;
    vm.quiesced = r.quiesced;
    if (r.snapshotted) {
      vm.outcome = 'snapshotted';
      vm.disks = run.plans.get(h)!.find((p) => p.domain === r.domain)!.disks;
    }
    if (r.error) vm.error = r.error;
    if (r.state) vm.state = r.state;
    if (r.snapshottedAtMs !== undefined) vm.snapshottedAtMs = r.snapshottedAtMs;
    if (r.pausedByUs) vm.pausedAtMs = r.pauseReturnedAtMs ?? r.pausedAtMs;
    if (r.resumeIssuedAtMs !== undefined) vm.resumeIssuedAtMs = r.resumeIssuedAtMs;
    run.markVm(h, r.domain, r.error ? 'failed' : r.snapshotted ? 'snapshotted' : 'paused');
    run.applyResume(h, r);
  }
  return reports;
}

/**
 * Once every freeze has ended: fails the run on any VM's error, thaws (old order above the update barrier), sets the
 * cut, and fails it when a deadline resumed a VM before the release. Shared by the flat and the sharded freeze.
 */
export async function afterFreeze(run: SnapshotRun): Promise<void> {
  const release = run.release;
  // A cancellation that arrived during the window (the hosts then saw their waits cancelled) ends the run cancelled.
  if (CancellationScope.current().consideredCancelled) await CancellationScope.current().cancelRequested;
  const failures = run.vmResults.filter((v) => v.error);
  if (failures.length > 0) {
    throw failure('freezeFailed', failures.map((v) => `${v.domain}@${v.host}: ${v.error}`).join('; '));
  }
  if (release === 'thaw') await CancellationScope.nonCancellable(() => thawAll(run, run.freezeStartedOn));
  // The cut: in the `group-paused` order, the instant the last VM was paused (each VM's disks are its state at its
  // pause, and none ran again before this instant); in the old order, when the last VM's snapshot completed.
  const reports = [...run.freezeReports.values()].flat();
  const cutMs =
    run.resumeWhen === 'group-paused' && run.allPausedAtMs !== undefined
      ? run.allPausedAtMs
      : Math.max(...reports.map((r) => r.snapshottedAtMs ?? 0));
  run.createdAt = new Date(cutMs).toISOString();
  for (const v of run.vmResults) if (v.pausedByUs) run.markVm(v.host, v.domain, 'resumed');
  const brokenCut = run.vmResults.filter((v) => v.resumedByGuard);
  if (brokenCut.length > 0) {
    throw failure(
      'freezeDeadline',
      `the freeze deadline resumed ${brokenCut.map((v) => v.domain).join(', ')} before the group was released`,
    );
  }
  // A cancellation that arrived during the window is honoured now, with compensation.
  if (CancellationScope.current().consideredCancelled) await CancellationScope.current().cancelRequested;
}

/** 5. Catalog on each VM and beside its images (after the VMs run again); each host checks the chains first. */
export async function catalog(run: SnapshotRun): Promise<void> {
  const { snapshotId, input } = run;
  await Promise.all(
    run.hosts.map((h) =>
      onHost(h).cleanup.recordCatalog.executeWithOptions(
        { summary: onHostSummary('record catalog of', run.domains(h), h) },
        [
          {
            host: h,
            entry: {
              snapshotId,
              group: input.group,
              createdAt: run.createdAt!,
              ...(input.label ? { label: input.label } : {}),
            },
            vms: run.plans.get(h)!.map((p) => ({ domain: p.domain, uuid: p.uuid, disks: p.disks })),
            leaseOwner: run.leaseOwner,
          },
        ],
      ),
    ),
  );
}

/** Runs the registered compensations newest first; a failing one is logged and the others still run. */
export async function compensate(run: SnapshotRun): Promise<void> {
  for (const step of [...run.compensations].reverse()) {
    await step().catch((err) => log.error('compensation step failed', { error: errorMessage(err) }));
  }
}

/**
 * The `signal` barrier's decision, sent to every host whose freeze started: `true` releases the group, `false`
 * aborts it (those hosts resume at once and take no more snapshots). Failures are logged: a host that cannot be
 * reached has a failed freeze (its VMs resume by their deadline), which fails the run.
 */
async function releaseHosts(run: SnapshotRun, release: boolean): Promise<void> {
  await CancellationScope.nonCancellable(() =>
    Promise.all(
      run.freezeStartedOn.map((h) =>
        onHost(h)
          .release(run.input.maxFreezeMs)
          .releaseFreeze.executeWithOptions(
            { summary: onHostSummary(release ? 'release' : 'abort the freeze of', run.domains(h), h) },
            [{ snapshotId: run.snapshotId, leaseOwner: run.leaseOwner, release }],
          )
          .catch((err) => log.warn('releasing a host failed', { host: h, release, error: errorMessage(err) })),
      ),
    ),
  );
}

/** Resumes what this run paused on `hostIds` (a no-op for VMs already resumed), then thaws guest filesystems. */
async function thawAll(run: SnapshotRun, hostIds: string[]): Promise<void> {
  await Promise.all(
    hostIds.map(async (h) => {
      const quiesced = (run.freezeReports.get(h) ?? []).filter((r) => r.quiesced).map((r) => r.domain);
      const out = await onHost(h).thaw.thawVms.executeWithOptions(
        { summary: onHostSummary('resume', run.domains(h), h) },
        [{ snapshotId: run.snapshotId, domains: run.domains(h), quiesced }],
      );
      for (const r of out) {
        if (r.pausedByUs) {
          // The journal knows even when the freeze report was lost with its worker.
          run.vm(h, r.domain).pausedByUs = true;
          run.applyResume(h, r);
        }
        if (r.state) run.vm(h, r.domain).state = r.state;
      }
    }),
  );
}

/**
 * The freeze's compensation, run even when the workflow is cancelled: resume at once, let every freeze activity
 * finish (so no host pauses a VM after this), resume again, then undo every overlay this run created (and its
 * catalog entries). Undo is asked for every planned VM of the host: it checks each disk's chain and only touches
 * overlays of this run, so a host whose freeze report was lost is covered too.
 */
export async function undoFreeze(run: SnapshotRun): Promise<void> {
  if (run.release === 'signal') await releaseHosts(run, false);
  // A sharded freeze: every shard answers its hosts' barrier with an abort (they resume at once).
  if (run.abortShards) await run.abortShards();
  await thawAll(run, run.freezeStartedOn).catch((err) => log.warn('thaw failed', { error: errorMessage(err) }));
  await run.freezesSettled;
  await thawAll(run, run.freezeStartedOn).catch((err) => log.error('thaw failed', { error: errorMessage(err) }));
  await Promise.all(
    run.freezeStartedOn.map(async (h) => {
      const plans = run.plans.get(h)!;
      let reports: UndoVmReport[];
      try {
        reports = await undoOnHost(
          run,
          h,
          onHostSummary(
            'undo snapshot of',
            plans.map((p) => p.domain),
            h,
          ),
        );
      } catch (err) {
        for (const p of plans) {
          const vm = run.vm(h, p.domain);
          vm.outcome = 'cleanup-pending';
          vm.cleanupPending = p.disks.map((d) => d.overlay);
          vm.error = `undo failed: ${errorMessage(err)}`;
        }
        return;
      }
      for (const r of reports) {
        const vm = run.vm(h, r.domain);
        vm.disks = plans.find((p) => p.domain === r.domain)!.disks;
        if (r.error) {
          vm.outcome = 'cleanup-pending';
          vm.cleanupPending = r.cleanupPending;
          vm.error = vm.error ? `${vm.error}; undo: ${r.error}` : `undo: ${r.error}`;
        } else {
          vm.outcome = r.hadSnapshot ? 'rolled-back' : 'not-snapshotted';
        }
        if (!r.hadSnapshot && !r.error) vm.disks = [];
        run.markVm(h, r.domain, r.error ? 'failed' : r.hadSnapshot ? 'rolled-back' : 'resumed');
      }
    }),
  );
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

/**
 * The freeze window on this host: under the run's leases, plan each VM again, quiesce guests (optional), pause every
 * running VM, take each VM's atomic disk-only snapshot, wait for the group's release (at once for a one-host group,
 * else the workflow's cross-host barrier, see barrier.ts) and resume (thaw.ts). Two orders (docs/adr/0006):
 * `group-paused` (each VM resumes once its own snapshot is taken and the group is paused) and `group-snapshotted`
 * (every VM resumes once all are snapshotted). On any failure it resumes at once and reports which snapshots were
 * taken, for the workflow to undo. Every VM's freeze is journalled, with its deadline, before it starts.
 */
import { Context } from '@temporalio/activity';
import type { FreezeRequest, FreezeVmReport, PlannedVm } from '../../common/host-types';
import { QUIESCE_MODES } from '../../common/types';
import { checkMaxFreezeMs } from '../../common/validation';
import { GuestAgentUnavailableError, InvalidStateError } from '../../hypervisor/errors';
import type { FreezeRecord } from '../freeze-journal';
import { heartbeat } from '../heartbeat';
import { checkName, checkOwner, failIf } from '../input-checks';
import { signalPausedAndWait, waitForGo, waitForRelease } from './barrier';
import { message, round, type HostContext } from './context';
import { freezeDeadline, untilDeadline } from './freeze-deadline';
import { checkVmDisks, removeUnusedOverlays } from './overlays';
import { replan } from './plan';
import { closeQuiesceRecords, resumeOurs, thawFilesystems } from './thaw';
import { runKey } from './undo-memory';

/** Marks VM `i` of a freeze failed (its first error is kept). */
type Fail = (i: number, err: unknown) => void;

/** Runs `fn` over `items` with at most `limit` calls in flight, in order of the items. */
async function runBounded<T>(items: T[], limit: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  });
  await Promise.all(lanes);
}

/** Pauses one running VM, journalled (with its deadline) and under a deadline timer before the pause is issued. */
async function pauseOne(ctx: HostContext, vm: PlannedVm, report: FreezeVmReport, req: FreezeRequest): Promise<void> {
  const { journal, timers, hypervisor } = ctx;
  const { snapshotId } = req;
  const pausedAtMs = ctx.now();
  const quiesced = journal.read(snapshotId, vm.domain)?.fsFrozen === true;
  const record = {
    snapshotId,
    domain: vm.domain,
    pausedAtMs,
    deadlineMs: freezeDeadline(ctx, req.maxFreezeMs, pausedAtMs),
    ...(quiesced ? { fsFrozen: true } : {}),
  };
  // Journal and timer first: a crash right after the pause is covered by the guard, a hang by the timer.
  journal.write({ ...record, state: 'pausing' });
  timers.arm({ ...record, state: 'pausing' });
  try {
    await hypervisor.suspend(vm.domain);
  } catch (err) {
    const state = await hypervisor.state(vm.domain).catch(() => undefined);
    if (state === 'paused' && !(err instanceof InvalidStateError)) {
      // The call failed but the pause may have taken effect (e.g. a lost reply): keep it ours and covered.
      journal.write({ ...record, state: 'paused' });
      report.pausedByUs = true;
      report.pausedAtMs = pausedAtMs;
      ctx.logPhase('pause', snapshotId, vm.domain, { pausedAtMs, error: message(err) });
      throw err;
    }
    // Not paused by us: drop the record so nothing resumes the VM on our behalf (a quiesced guest's record stays,
    // closed, for its thaw).
    timers.disarm(snapshotId, vm.domain);
    if (quiesced) journal.write({ ...record, state: 'resumed', notPausedByUs: true });
    else journal.remove(snapshotId, vm.domain);
    // Paused by someone else since planning: not ours to resume, and still snapshottable.
    ctx.logPhase('pause', snapshotId, vm.domain, state === 'paused' ? { pausedByUs: false } : { error: message(err) });
    if (state === 'paused') return;
    throw err;
  }
  journal.write({ ...record, state: 'paused' });
  report.pausedByUs = true;
  report.pausedAtMs = pausedAtMs;
  report.pauseReturnedAtMs = ctx.now();
  ctx.logPhase('pause', snapshotId, vm.domain, { pausedAtMs, ms: round(report.pauseReturnedAtMs - pausedAtMs) });
}

/** Pauses every running VM of the freeze in parallel. */
async function pauseAll(
  ctx: HostContext,
  req: FreezeRequest,
  vms: PlannedVm[],
  reports: FreezeVmReport[],
  fail: Fail,
): Promise<void> {
  await Promise.all(
    vms.map((vm, i) =>
      vm.state === 'running' ? pauseOne(ctx, vm, reports[i], req).catch((e) => fail(i, e)) : undefined,
    ),
  );
}

/** Freezes guest filesystems (when planned) before any pause, journalled first so whoever closes the record thaws. */
async function quiesceAll(
  ctx: HostContext,
  req: FreezeRequest,
  vms: PlannedVm[],
  reports: FreezeVmReport[],
  fail: Fail,
): Promise<void> {
  await Promise.all(
    vms.map(async (vm, i) => {
      if (!vm.quiesce) return;
      const at = ctx.now();
      const record: FreezeRecord = {
        snapshotId: req.snapshotId,
        domain: vm.domain,
        state: 'pausing',
        pausedAtMs: at,
        deadlineMs: freezeDeadline(ctx, req.maxFreezeMs, at),
        fsFrozen: true,
      };
      ctx.journal.write(record);
      ctx.timers.arm(record);
      try {
        reports[i].quiesced = (await ctx.hypervisor.fsFreeze(vm.domain)) >= 0;
      } catch (err) {
        // No agent answered: nothing was frozen, nothing to thaw (any other failure may have frozen something).
        if (err instanceof GuestAgentUnavailableError)
          ctx.journal.write({ ...record, fsFrozen: false, state: 'resumed', notPausedByUs: true });
        if (req.quiesce === 'agent' || !(err instanceof GuestAgentUnavailableError)) fail(i, err);
        else ctx.log('guest agent unavailable, snapshot is crash-consistent', { domain: vm.domain });
      }
    }),
  );
}

/** Takes one VM's atomic disk-only snapshot and reports when it completed. */
async function snapshotOne(
  ctx: HostContext,
  req: FreezeRequest,
  vm: PlannedVm,
  report: FreezeVmReport,
  reuse: boolean,
): Promise<void> {
  const startedAtMs = ctx.now();
  try {
    await ctx.hypervisor.snapshotDisks(
      vm.domain,
      vm.disks.map((d) => ({ target: d.target, file: d.overlay })),
      vm.skip,
      reuse ? { reuse } : undefined,
    );
    report.snapshotted = true;
    report.snapshottedAtMs = ctx.now();
    ctx.logPhase('snapshot', req.snapshotId, vm.domain, {
      snapshottedAtMs: report.snapshottedAtMs,
      ms: round(report.snapshottedAtMs - startedAtMs),
      disks: vm.disks.length,
    });
  } catch (err) {
    report.error ??= message(err);
    ctx.logPhase('snapshot', req.snapshotId, vm.domain, { error: message(err) });
  }
}

/** A deadline timer (or the guard) that resumed a VM of ours before this run did broke the cut. */
function checkNotResumedByOthers(ctx: HostContext, req: FreezeRequest, r: FreezeVmReport): void {
  const rec = r.pausedByUs ? ctx.journal.read(req.snapshotId, r.domain) : undefined;
  if (rec && rec.state !== 'paused') {
    r.resumedByGuard = true;
    r.resumedAtMs = rec.resumedAtMs;
    r.error ??= `freeze deadline of ${req.maxFreezeMs} ms passed before the snapshot completed`;
  }
}

/** Ends the window on this host: thaws guests, closes quiesce records and reads the state each VM is left in. */
async function afterWindow(
  ctx: HostContext,
  req: FreezeRequest,
  vms: PlannedVm[],
  reports: FreezeVmReport[],
): Promise<void> {
  await thawFilesystems(
    ctx,
    reports.filter((r) => r.quiesced).map((r) => r.domain),
  );
  await closeQuiesceRecords(ctx, req.snapshotId, vms);
  await Promise.all(reports.map(async (r) => (r.state = await ctx.hypervisor.state(r.domain).catch(() => undefined))));
}

/**
 * The window in the order before `group-paused`: pause every running VM, snapshot all in parallel, wait for the
 * release (at once for a one-host group, else the workflow's barrier of every host snapshotted), resume all.
 */
async function classicWindow(
  ctx: HostContext,
  req: FreezeRequest,
  vms: PlannedVm[],
  reports: FreezeVmReport[],
  fail: Fail,
): Promise<void> {
  const failed = () => reports.some((r) => r.error !== undefined);
  if (!failed()) await pauseAll(ctx, req, vms, reports, fail);
  if (!failed() && ctx.undo.isUndoing(runKey(req))) for (const r of reports) r.error ??= 'the run is being undone';
  if (!failed()) await Promise.all(vms.map((vm, i) => snapshotOne(ctx, req, vm, reports[i], false)));
  for (const r of reports) checkNotResumedByOthers(ctx, req, r);
  if (req.release === 'barrier' && !failed()) {
    try {
      // Not released (another host failed, the workflow was cancelled or hit its deadline): the workflow
      // knows why and compensates; these VMs resume all the same.
      await waitForRelease(ctx, req, reports);
    } catch (err) {
      for (const r of reports) r.error ??= `the group was not released: ${message(err)}`;
    }
  }
  if (req.release !== 'thaw' || failed()) {
    await resumeOurs(ctx, req.snapshotId, reports);
    await afterWindow(ctx, req, vms, reports);
  }
}

/**
 * Settles true when the group is released (every VM of every host paused), false on an abort (which it notes in the
 * reports); never for the `thaw` release (the workflow's thawVms resumes the VMs).
 */
function groupReleased(ctx: HostContext, req: FreezeRequest, reports: FreezeVmReport[]): Promise<boolean> {
  if (req.release === 'local') return Promise.resolve(true);
  const barrier =
    req.release === 'barrier'
      ? waitForRelease(ctx, req, reports)
      : req.release === 'signal'
        ? signalPausedAndWait(ctx, req)
        : undefined;
  if (!barrier) return new Promise<boolean>(() => {});
  return barrier.then(
    (ok) => {
      if (!ok) for (const r of reports) r.error ??= 'the group was not released: aborted by the workflow';
      return ok;
    },
    (err) => {
      for (const r of reports) r.error ??= `the group was not released: ${message(err)}`;
      return false;
    },
  );
}

/**
 * The window in the `group-paused` order (docs/consistency.md): pause every running VM; report "paused" to the
 * workflow (for a one-host group, the host's own pauses are the group's); take the snapshots over the prepared
 * overlays, a bounded number at once; resume each VM as soon as its own snapshot is taken and the group is
 * released. An abort (another host could not pause, cancellation, deadline) resumes every VM at once and stops
 * taking snapshots; any failure is reported for the workflow to compensate, exactly as in the old order.
 */
async function earlyWindow(
  ctx: HostContext,
  req: FreezeRequest,
  vms: PlannedVm[],
  reports: FreezeVmReport[],
  fail: Fail,
): Promise<void> {
  const failed = () => reports.some((r) => r.error !== undefined);
  const undoing = () => ctx.undo.isUndoing(runKey(req));
  if (!failed()) await pauseAll(ctx, req, vms, reports, fail);
  if (failed()) {
    await resumeOurs(ctx, req.snapshotId, reports);
    await removeUnusedOverlays(ctx, vms, reports);
    await afterWindow(ctx, req, vms, reports);
    return;
  }
  let aborted = false;
  const released = groupReleased(ctx, req, reports);
  void released.then((ok) => (aborted = !ok));
  const resumeOne = async (i: number): Promise<void> => {
    checkNotResumedByOthers(ctx, req, reports[i]);
    await resumeOurs(ctx, req.snapshotId, [reports[i]]);
  };
  await runBounded(vms, Math.max(1, req.snapshotsInFlight ?? ctx.snapshotsInFlight), async (vm, i) => {
    if (undoing()) reports[i].error ??= 'the run is being undone';
    if (!aborted && !undoing()) await snapshotOne(ctx, req, vm, reports[i], vm.prepared === true);
    if (req.release === 'thaw' && !failed()) return;
    // Its own snapshot is done (or will not happen): it waits for the release only while the run may still succeed.
    if (!failed()) await Promise.race([released, untilDeadline(ctx, req.maxFreezeMs, reports[i].pausedAtMs)]);
    await resumeOne(i);
  });
  if (failed()) {
    // A failure in one VM's snapshot resumes the VMs still waiting for the release (none may wait forever).
    await resumeOurs(
      ctx,
      req.snapshotId,
      reports.filter((r) => r.resumeIssuedAtMs === undefined),
    );
    await removeUnusedOverlays(ctx, vms, reports);
  }
  if (req.release !== 'thaw' || failed()) await afterWindow(ctx, req, vms, reports);
}

/**
 * The armed barrier's wait for the group's go (nothing quiesced or paused yet). On an abort, or when the workflow
 * could not be asked, every VM is reported failed and the overlays prepared for it are removed; true on go.
 */
async function armed(
  ctx: HostContext,
  req: FreezeRequest,
  vms: PlannedVm[],
  reports: FreezeVmReport[],
): Promise<boolean> {
  const go = await waitForGo(ctx, req).catch((err: unknown) => message(err));
  if (go === true) return true;
  const why = go === false ? 'aborted by the workflow' : go;
  for (const r of reports) r.error ??= `the group was not started: ${why}`;
  await removeUnusedOverlays(ctx, vms, reports);
  return false;
}

/** The freeze of one run on this host (see the file's comment); every problem is in the reports, never thrown. */
async function freeze(ctx: HostContext, req: FreezeRequest): Promise<FreezeVmReport[]> {
  const reports: FreezeVmReport[] = req.vms.map((vm) => ({
    domain: vm.domain,
    pausedByUs: false,
    snapshotted: false,
    quiesced: false,
  }));
  const fail: Fail = (i, err) => {
    reports[i].error ??= message(err);
  };
  // Under this run's leases, before anything is paused: the VMs are this run's, and each one's chain is still
  // the one planned (another run, or an operator, may have snapshotted it since), so the overlays go on top of
  // exactly the images the result and catalog will name.
  try {
    ctx.locks.assertHeld(
      req.leaseOwner,
      req.vms.map((v) => v.domain),
    );
  } catch (err) {
    for (const r of reports) r.error = message(err);
    return reports;
  }
  const vms = await Promise.all(
    req.vms.map((vm, i) =>
      replan(ctx, vm, req.snapshotId, req.quiesce).catch((err) => {
        fail(i, err);
        return vm;
      }),
    ),
  );
  if (reports.some((r) => r.error)) return reports;
  if (req.arm && !(await armed(ctx, req, vms, reports))) return reports;
  await quiesceAll(ctx, req, vms, reports, fail);
  if (req.resumeWhen === 'group-paused') await earlyWindow(ctx, req, vms, reports, fail);
  else await classicWindow(ctx, req, vms, reports, fail);
  ctx.log('freeze', { snapshotId: req.snapshotId, host: ctx.hostId, reports });
  return reports;
}

/** The attempt number of the running activity (1 outside one: a host step called directly). */
function activityAttempt(): number {
  try {
    return Context.current().info.attempt;
  } catch {
    return 1;
  }
}

/**
 * A retried attempt of a run's freeze (the workflow never saw the first one end: e.g. the Temporal server was down
 * when it heartbeated or completed, and timed it out on its restart): it never pauses anything again. It returns the
 * outcome of the freeze that ran here for this run and snapshot, waiting for it while it still runs; its reports carry
 * whatever went wrong in it (a VM resumed by its deadline before the group's release included), so the workflow keeps
 * the point exactly when that freeze succeeded. Without one (the worker restarted since) every VM is reported failed,
 * and the workflow compensates (its thaw and undo read the journal and the chains, not these reports).
 */
async function earlierOutcome(ctx: HostContext, req: FreezeRequest, attempt: number): Promise<FreezeVmReport[]> {
  const earlier = ctx.undo.lastFreeze(runKey(req)) as Promise<FreezeVmReport[]> | undefined;
  ctx.log('freeze retried', { snapshotId: req.snapshotId, host: ctx.hostId, attempt, found: earlier !== undefined });
  if (earlier) return earlier;
  return req.vms.map((vm) => ({
    domain: vm.domain,
    pausedByUs: false,
    snapshotted: false,
    quiesced: false,
    error: `freeze attempt ${attempt}: no earlier attempt of this run's freeze is known on this host (worker restarted?); nothing was paused again`,
  }));
}

/**
 * A retried attempt of an armed freeze that no earlier attempt ever began on this host: none is remembered and the
 * journal holds no record of this run for any of its VMs (every quiesce and pause is journalled before it is issued).
 * Nothing of the run was touched here, so this attempt may freeze as a first one would: its `hostArmed` update asks
 * the workflow, which answers go only while the run goes on, and the release waits for this host's report anyway.
 * (Seen at 256 simulated hosts under load: the first attempt's task was timed out before the host ever ran it.)
 */
function neverStartedHere(ctx: HostContext, req: FreezeRequest): boolean {
  if (!req.arm || ctx.undo.lastFreeze(runKey(req)) !== undefined) return false;
  const untouched = req.vms.every((vm) => ctx.journal.read(req.snapshotId, vm.domain) === undefined);
  if (untouched)
    ctx.log('freeze retried, no earlier attempt began here: freezing afresh', { snapshotId: req.snapshotId });
  return untouched;
}

/** The freeze activity, `freezeVms`. */
export function createFreezeActivities(ctx: HostContext) {
  return {
    /** The freeze window on this host (see the file's comment), heartbeating so a dead host is noticed fast. */
    async freezeVms(req: FreezeRequest): Promise<FreezeVmReport[]> {
      const problems: string[] = [];
      checkName('snapshot id', req.snapshotId, problems);
      checkOwner(req.leaseOwner, problems);
      checkMaxFreezeMs(req.maxFreezeMs, problems);
      if (!['local', 'barrier', 'thaw', 'signal'].includes(req.release))
        problems.push(`release ${req.release} is not valid`);
      if (req.release === 'signal' && req.resumeWhen !== 'group-paused')
        problems.push('the signal release needs the group-paused order');
      if (req.arm && req.release !== 'barrier') problems.push(`arm needs the barrier release, not ${req.release}`);
      if (!QUIESCE_MODES.includes(req.quiesce))
        problems.push(`quiesce mode ${JSON.stringify(req.quiesce)} is not valid`);
      checkVmDisks(req.vms, req.snapshotId, problems);
      failIf(problems);
      heartbeat();
      const beat = setInterval(() => heartbeat(), 500);
      const key = runKey(req);
      const attempt = activityAttempt();
      if (attempt > 1 && !neverStartedHere(ctx, req)) {
        try {
          return await earlierOutcome(ctx, req, attempt);
        } finally {
          clearInterval(beat);
        }
      }
      const running = freeze(ctx, req);
      ctx.undo.freezeStarted(key, running);
      try {
        return await running;
      } finally {
        clearInterval(beat);
        if (ctx.undo.freezeEnded(key, running)) ctx.releases.close(key);
      }
    },
  };
}

import { existsSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure, noopMetricMeter, type MetricMeter } from '@temporalio/common';
import { METRICS } from '../common/metrics';
import { HOST_FROZEN_UPDATE, HOST_PAUSED_SIGNAL } from '../common/names';
import type { DiskSnapshot, QuiesceMode, VmPowerState } from '../common/types';
import { DomainNotFoundError, GuestAgentUnavailableError, InvalidStateError } from '../hypervisor/errors';
import { QUIESCE_MODES } from '../common/types';
import { imageChain } from '../hypervisor/chain';
import type { DomainDescription, Hypervisor } from '../hypervisor/hypervisor';
import { manifestPath, renderVmMetadata, type CatalogEntry } from '../common/catalog';
import { nowMs } from './clock';
import { DomainLocks, LeaseLostError, LockBusyError } from './domain-locks';
import { createDrActivities } from './dr-activities';
import { beating, heartbeat } from './heartbeat';
import { FreezeJournal, OPEN_STATES, type FreezeRecord } from './freeze-journal';
import { badInput, checkDomain, checkDomains, checkName, checkOwner, failIf } from './input-checks';
import { DeadlineTimers, recoverFreezes, resumeFromJournal, thawRecord } from './resume';
import { ReleaseGates } from './release-gates';
import { VmMetadataStore } from './vm-metadata';
import {
  overlayPath,
  type CatalogRequest,
  type FreezeRequest,
  type FreezeVmReport,
  type PlannedVm,
  type PlanRequest,
  type ReleaseRequest,
  checkSnapshotsInFlight,
  DEFAULT_SNAPSHOTS_IN_FLIGHT,
  type ThawRequest,
  type ThawVmReport,
  type UndoRequest,
  type UndoVmReport,
  type VmPhase,
} from '../common/host-types';

/** Free space required per new overlay file before a snapshot is attempted. */
export const MIN_FREE_BYTES_PER_OVERLAY = 64 * 1024 * 1024;

export interface HostActivityDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** Freeze journal and locks of this host; must survive the worker process. */
  stateDir: string;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** Meter for groupsnap's host metrics (VMs resumed by a deadline), e.g. `Runtime.instance().metricMeter`. */
  metrics?: MetricMeter;
  /**
   * Most snapshots taken at once in the `group-paused` order (the host's cores share them: 2 was best on 2 cores,
   * BENCHMARKS.md). @default DEFAULT_SNAPSHOTS_IN_FLIGHT
   */
  snapshotsInFlight?: number;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

const round = (ms: number): number => Math.round(ms * 1000) / 1000;

/** Log fields of a VM's resume: how long it was paused and who resumed it (`resumed`: the workflow's release). */
function resumeFields(rec: FreezeRecord): Record<string, unknown> {
  return {
    by: rec.state,
    ...(rec.resumedAtMs !== undefined
      ? { resumedAtMs: rec.resumedAtMs, freezeMs: round(rec.resumedAtMs - rec.pausedAtMs) }
      : {}),
  };
}

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

/** A run's own snapshot on this host: its lease owner (the workflow run) and snapshot id. */
const runKey = (req: { leaseOwner: string; snapshotId: string }): string => `${req.leaseOwner}/${req.snapshotId}`;

/** How long a host remembers that a snapshot's undo started (a freeze activity lives at most ~10.5 minutes). */
export const UNDO_MEMORY_MS = 60 * 60_000;

/** How long leases last between the steps of a run; the activities that work under them renew them meanwhile. */
export const LEASE_TTL_MS = 15 * 60_000;

/** Same disks, same files, same order: what the freeze relies on did not change since planning. */
function samePlan(a: PlannedVm, b: PlannedVm): boolean {
  const disks = (v: PlannedVm) => JSON.stringify(v.disks.map((d) => [d.target, d.image, d.overlay]));
  return disks(a) === disks(b) && JSON.stringify([...a.skip].sort()) === JSON.stringify([...b.skip].sort());
}

/**
 * The host side of groupsnap: activities that run on the worker of one hypervisor host, on that host's task
 * queue, plus the in-process deadline timers and crash recovery they share. Each activity checks state first
 * and is safe to retry: a retried call never pauses, snapshots or resumes a VM twice.
 */
export function createHost(deps: HostActivityDeps) {
  const { hypervisor } = deps;
  const inFlight = checkSnapshotsInFlight(deps.snapshotsInFlight ?? DEFAULT_SNAPSHOTS_IN_FLIGHT);
  const log = deps.log ?? (() => {});
  const journal = new FreezeJournal(deps.stateDir);
  const locks = new DomainLocks(deps.stateDir);
  const metadata = new VmMetadataStore(hypervisor, deps.stateDir);
  const resumedByDeadline = (deps.metrics ?? noopMetricMeter).createCounter(
    METRICS.vmsResumedByGuard,
    'vms',
    'VMs resumed by a freeze deadline instead of the workflow',
  );
  const timers = new DeadlineTimers(hypervisor, journal, (rec, err) => {
    if (rec) log('deadline timer resumed VM', { domain: rec.domain, snapshotId: rec.snapshotId });
    else log('deadline timer failed to resume VM', { error: message(err) });
    if (rec?.state === 'resumed-by-timer') resumedByDeadline.add(1, { host: deps.hostId, by: 'timer' });
  });

  /**
   * Freezes running in this process, by snapshot id, and the snapshots whose undo has started. A freeze the
   * workflow gave up on (its heartbeat timed out on a starved worker) may still be running here when compensation's
   * undo arrives: undo then stops it from taking more snapshots and waits for it, so it never removes an overlay file
   * that a snapshot still in flight is about to put under a VM. An undo is remembered for `UNDO_MEMORY_MS`, far
   * longer than a freeze activity may live, then forgotten. All are keyed by run and snapshot id (`runKey`): a
   * caller may give a new run the snapshot id of one that failed.
   */
  const runningFreezes = new Map<string, Promise<unknown>>();
  const undoStarted = new Map<string, number>();
  const undoing = {
    has: (snapshotId: string) => undoStarted.has(snapshotId),
    add(snapshotId: string): void {
      const now = nowMs();
      for (const [id, at] of undoStarted) if (now - at > UNDO_MEMORY_MS) undoStarted.delete(id);
      undoStarted.set(snapshotId, now);
    },
  };
  /** The `signal` barrier's releases, from the workflow's `releaseFreeze` to the freeze waiting here. */
  const releases = new ReleaseGates(nowMs);

  /** One JSON log line per VM and phase, with the snapshot, host and domain. */
  const logPhase = (phase: VmPhase, snapshotId: string, domain: string, fields: Record<string, unknown> = {}) =>
    log('vm phase', { snapshotId, host: deps.hostId, domain, phase, ...fields });

  /**
   * Counts a VM resumed by the host guard, once: the guard process has no metrics, so the worker counts its
   * resumes when it meets their records (thaw, or its own start) and marks them reported in the journal.
   */
  function reportGuardResume(rec: FreezeRecord | undefined, by: 'guard' | 'recovery' = 'guard'): void {
    const now = rec && journal.read(rec.snapshotId, rec.domain);
    if (now?.state !== 'resumed-by-guard' || now.reported) return;
    journal.write({ ...now, reported: true });
    resumedByDeadline.add(1, { host: deps.hostId, by });
  }

  /**
   * Plans one VM. With `prepared` (the run made this snapshot's overlays under its lease, see `planVms`), a running
   * or paused VM's overlay files must exist (they are used as they are); otherwise no overlay file may exist yet.
   */
  function planOne(
    d: DomainDescription,
    snapshotId: string,
    quiesce: QuiesceMode,
    problems: string[],
    prepared = false,
  ): PlannedVm {
    const reuse = prepared && d.state !== 'shutoff';
    if (d.state === 'other') problems.push(`VM ${d.name} is in a state that cannot be snapshotted`);
    const disks: DiskSnapshot[] = [];
    const skip: string[] = [];
    for (const disk of d.disks) {
      if (disk.device === 'cdrom' || disk.device === 'floppy' || disk.readonly || !disk.source) {
        skip.push(disk.target);
        continue;
      }
      if (disk.type !== 'file' || (disk.format !== 'qcow2' && disk.format !== 'raw')) {
        problems.push(
          `VM ${d.name} disk ${disk.target}: a ${disk.type} disk with format ${disk.format ?? 'unknown'} is not ` +
            `supported (only file-backed qcow2 or raw disks)`,
        );
        continue;
      }
      const overlay = overlayPath(disk.source, d.name, disk.target, snapshotId);
      if (reuse && !existsSync(overlay))
        problems.push(`VM ${d.name} disk ${disk.target}: prepared overlay ${overlay} is missing`);
      if (!reuse && existsSync(overlay))
        problems.push(`VM ${d.name} disk ${disk.target}: overlay ${overlay} already exists`);
      disks.push({ target: disk.target, image: disk.source, overlay });
    }
    if (disks.length === 0) problems.push(`VM ${d.name} has no disk to snapshot`);
    if (quiesce === 'agent' && !d.hasGuestAgent && d.state === 'running') {
      problems.push(`VM ${d.name} has no QEMU guest agent channel, required by --quiesce agent`);
    }
    return {
      domain: d.name,
      uuid: d.uuid,
      state: d.state,
      disks,
      skip,
      quiesce: quiesce !== 'none' && d.hasGuestAgent && d.state === 'running',
      ...(reuse ? { prepared: true } : {}),
    };
  }

  function checkSpace(vms: PlannedVm[], problems: string[]): void {
    const perDir = new Map<string, number>();
    for (const vm of vms)
      for (const d of vm.disks) perDir.set(dirname(d.overlay), (perDir.get(dirname(d.overlay)) ?? 0) + 1);
    for (const [dir, count] of perDir) {
      try {
        const st = statfsSync(dir);
        const free = st.bavail * st.bsize;
        if (free < count * MIN_FREE_BYTES_PER_OVERLAY) {
          problems.push(
            `not enough free space in ${dir}: ${Math.floor(free / 2 ** 20)} MiB free, need ${(count * MIN_FREE_BYTES_PER_OVERLAY) / 2 ** 20} MiB`,
          );
        }
      } catch (err) {
        problems.push(`cannot check free space in ${dir}: ${message(err)}`);
      }
    }
  }

  async function pauseOne(
    vm: PlannedVm,
    report: FreezeVmReport,
    snapshotId: string,
    maxFreezeMs: number,
  ): Promise<void> {
    const pausedAtMs = nowMs();
    const quiesced = journal.read(snapshotId, vm.domain)?.fsFrozen === true;
    const record = {
      snapshotId,
      domain: vm.domain,
      pausedAtMs,
      deadlineMs: pausedAtMs + maxFreezeMs,
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
        logPhase('pause', snapshotId, vm.domain, { pausedAtMs, error: message(err) });
        throw err;
      }
      // Not paused by us: drop the record so nothing resumes the VM on our behalf (a quiesced guest's record stays,
      // closed, for its thaw).
      timers.disarm(snapshotId, vm.domain);
      if (quiesced) journal.write({ ...record, state: 'resumed', notPausedByUs: true });
      else journal.remove(snapshotId, vm.domain);
      // Paused by someone else since planning: not ours to resume, and still snapshottable.
      logPhase('pause', snapshotId, vm.domain, state === 'paused' ? { pausedByUs: false } : { error: message(err) });
      if (state === 'paused') return;
      throw err;
    }
    journal.write({ ...record, state: 'paused' });
    report.pausedByUs = true;
    report.pausedAtMs = pausedAtMs;
    report.pauseReturnedAtMs = nowMs();
    logPhase('pause', snapshotId, vm.domain, { pausedAtMs, ms: round(report.pauseReturnedAtMs - pausedAtMs) });
  }

  async function resumeOurs(snapshotId: string, reports: FreezeVmReport[]): Promise<void> {
    await Promise.all(
      reports
        .filter((r) => r.pausedByUs)
        .map(async (r) => {
          timers.disarm(snapshotId, r.domain);
          r.resumeIssuedAtMs ??= nowMs();
          const rec = await resumeFromJournal(hypervisor, journal, snapshotId, r.domain, 'resumed');
          r.resumedAtMs = rec?.resumedAtMs;
          r.resumedByGuard = rec !== undefined && rec.state !== 'resumed';
          reportGuardResume(rec);
          if (rec) logPhase('resume', snapshotId, r.domain, resumeFields(rec));
        }),
    );
  }

  /**
   * Closes the quiesce records of VMs this run froze but did not (or could not) pause, and thaws their guests:
   * called once the freeze on this host is over. Records of VMs it paused were closed, and thawed, by their resume.
   */
  async function closeQuiesceRecords(snapshotId: string, vms: PlannedVm[]): Promise<void> {
    for (const vm of vms) {
      let rec = journal.read(snapshotId, vm.domain);
      if (!rec?.fsFrozen || rec.fsThawed) continue;
      timers.disarm(snapshotId, vm.domain);
      if (rec.state === 'pausing')
        journal.write((rec = { ...rec, state: 'resumed', resumedAtMs: nowMs(), notPausedByUs: true }));
      if (!OPEN_STATES.includes(rec.state)) await thawRecord(hypervisor, journal, rec);
    }
  }

  async function thawFilesystems(domains: string[]): Promise<void> {
    await Promise.all(
      domains.map((d) => hypervisor.fsThaw(d).catch((err) => log('fsThaw failed', { domain: d, error: message(err) }))),
    );
  }

  async function undoOne(snapshotId: string, domain: string, disks: DiskSnapshot[]): Promise<UndoVmReport> {
    const report: UndoVmReport = {
      domain,
      hadSnapshot: disks.some((d) => existsSync(d.overlay)),
      rolledBack: false,
      cleanupPending: [],
    };
    let desc: DomainDescription;
    try {
      desc = await hypervisor.describe(domain);
    } catch (err) {
      report.error = message(err);
      report.cleanupPending = disks.map((d) => d.overlay).filter((f) => existsSync(f));
      logPhase('undo', snapshotId, domain, { hadSnapshot: report.hadSnapshot, error: report.error });
      return report;
    }
    const errors: string[] = [];
    const toRedefine: { target: string; from: string; to: string }[] = [];
    for (const disk of disks) {
      let active = desc.disks.find((d) => d.target === disk.target)?.source;
      if (active === disk.overlay && desc.state !== 'shutoff') {
        // A commit a dead worker left running on this disk is finished (or aborted) before a new one starts.
        try {
          await settleBlockJob(domain, disk.target);
          active = (await hypervisor.describe(domain)).disks.find((d) => d.target === disk.target)?.source;
        } catch (err) {
          errors.push(`${disk.target}: ${message(err)}`);
          report.cleanupPending.push(disk.overlay);
          continue;
        }
      }
      if (active === disk.overlay) {
        // Only ever merged into the file directly under it, which must be the image the request names.
        const backing = (await hypervisor.imageInfo(disk.overlay).catch(() => undefined))?.backing;
        if (backing !== disk.image) {
          errors.push(`${disk.target}: ${disk.overlay} is backed by ${backing ?? 'nothing'}, not ${disk.image}`);
          report.cleanupPending.push(disk.overlay);
          continue;
        }
        if (desc.state === 'shutoff') {
          toRedefine.push({ target: disk.target, from: disk.overlay, to: disk.image });
          continue;
        }
        try {
          heartbeat({ domain, target: disk.target });
          await hypervisor.commitActive(domain, disk.target, disk.image);
        } catch (err) {
          errors.push(`${disk.target}: ${message(err)}`);
          report.cleanupPending.push(disk.overlay);
          continue;
        }
      } else if (active !== disk.image) {
        // The chain moved on since (someone else changed it): do not touch it.
        if (existsSync(disk.overlay)) report.cleanupPending.push(disk.overlay);
        errors.push(`${disk.target}: active image is ${active}, neither ${disk.image} nor ${disk.overlay}`);
        continue;
      }
      if (!toRedefine.some((r) => r.target === disk.target)) rmSync(disk.overlay, { force: true });
    }
    if (toRedefine.length > 0) {
      try {
        await hypervisor.redefineDiskSources(domain, toRedefine);
        for (const r of toRedefine) rmSync(r.from, { force: true });
      } catch (err) {
        errors.push(message(err));
        report.cleanupPending.push(...toRedefine.map((r) => r.from));
      }
    }
    report.rolledBack = errors.length === 0;
    if (errors.length > 0) report.error = errors.join('; ');
    logPhase('undo', snapshotId, domain, {
      hadSnapshot: report.hadSnapshot,
      ...(report.error ? { error: report.error } : {}),
    });
    return report;
  }

  /**
   * Waits for the workflow to release the group (every host snapshotted), at most until the earliest freeze
   * deadline of this host's VMs. Resolves true on release, false when the workflow aborted the cut.
   */
  async function waitForRelease(req: FreezeRequest, reports: FreezeVmReport[]): Promise<boolean> {
    const ctx = Context.current();
    const starts = reports.map((r) => r.pausedAtMs).filter((t): t is number => t !== undefined);
    const deadline = (starts.length ? Math.min(...starts) : Date.now()) + req.maxFreezeMs;
    const workflow = ctx.info.workflowExecution;
    if (!workflow) throw new Error('the cross-host barrier needs the activity to run for a workflow');
    const handle = ctx.client.workflow.getHandle(workflow.workflowId);
    return ctx.client.withDeadline(deadline, () =>
      handle.executeUpdate<boolean, [string]>(HOST_FROZEN_UPDATE, { args: [req.host] }),
    );
  }

  /**
   * The `signal` barrier: tells the workflow this host's VMs are paused, then waits for its `releaseFreeze` on this
   * host. Resolves true on release, false on an abort.
   */
  async function signalPausedAndWait(req: FreezeRequest): Promise<boolean> {
    const ctx = Context.current();
    const workflow = ctx.info.workflowExecution;
    if (!workflow) throw new Error('the cross-host barrier needs the activity to run for a workflow');
    const decision = releases.wait(runKey(req));
    await ctx.client.workflow.getHandle(workflow.workflowId, workflow.runId).signal(HOST_PAUSED_SIGNAL, req.host);
    return decision;
  }

  /**
   * The freeze window on this host: quiesce (optional), pause every running VM in parallel, take each VM's
   * atomic disk-only snapshot, wait for the release (at once for a one-host group, else the workflow's
   * cross-host barrier), and resume. On any failure it resumes at once and reports which snapshots were taken,
   * for the workflow to undo.
   */
  /**
   * Plans `planned`'s VM again from what libvirt says now: the same disks, files and overlay names, or an error saying
   * what changed since planning. The fresh plan carries the power state as it is now.
   */
  async function replan(planned: PlannedVm, snapshotId: string, quiesce: QuiesceMode): Promise<PlannedVm> {
    const problems: string[] = [];
    const now = planOne(await hypervisor.describe(planned.domain), snapshotId, quiesce, problems, planned.prepared);
    if (problems.length > 0) throw new Error(problems.join('; '));
    if (!samePlan(planned, now)) {
      const was = planned.disks.map((d) => `${d.target}:${d.image}`).join(', ');
      const is = now.disks.map((d) => `${d.target}:${d.image}`).join(', ');
      throw new Error(`the disks of ${planned.domain} changed since planning (planned ${was}; now ${is})`);
    }
    if (planned.prepared !== now.prepared || (planned.state === 'shutoff') !== (now.state === 'shutoff'))
      throw new Error(`${planned.domain} was ${planned.state} when planned and is ${now.state} now`);
    return now;
  }

  async function freeze(req: FreezeRequest): Promise<FreezeVmReport[]> {
    const reports: FreezeVmReport[] = req.vms.map((vm) => ({
      domain: vm.domain,
      pausedByUs: false,
      snapshotted: false,
      quiesced: false,
    }));
    const fail = (i: number, err: unknown): void => {
      reports[i].error ??= message(err);
    };
    // Under this run's leases, before anything is paused: the VMs are this run's, and each one's chain is still
    // the one planned (another run, or an operator, may have snapshotted it since), so the overlays go on top of
    // exactly the images the result and catalog will name.
    try {
      locks.assertHeld(
        req.leaseOwner,
        req.vms.map((v) => v.domain),
      );
    } catch (err) {
      for (const r of reports) r.error = message(err);
      return reports;
    }
    const vms = await Promise.all(
      req.vms.map((vm, i) =>
        replan(vm, req.snapshotId, req.quiesce).catch((err) => {
          fail(i, err);
          return vm;
        }),
      ),
    );
    if (reports.some((r) => r.error)) return reports;
    await quiesceAll(req, vms, reports, fail);
    if (req.resumeWhen === 'group-paused') await earlyWindow(req, vms, reports, fail);
    else await classicWindow(req, vms, reports, fail);
    log('freeze', { snapshotId: req.snapshotId, host: deps.hostId, reports });
    return reports;
  }

  /**
   * Makes the overlay files of every running or paused VM over its active images, before any pause (the snapshot
   * then only switches the disks over). All or nothing: on any failure every file made here is removed again.
   */
  async function prepareOverlays(vms: PlannedVm[]): Promise<void> {
    const made: string[] = [];
    const errors: string[] = [];
    await Promise.all(
      vms
        .filter((vm) => vm.prepared)
        .flatMap((vm) =>
          vm.disks.map(async (d) => {
            try {
              const format = (await hypervisor.imageInfo(d.image)).format;
              // Claims the name first: never overwrite a file someone else made since planning.
              writeFileSync(d.overlay, '', { flag: 'wx' });
              made.push(d.overlay);
              await hypervisor.createOverlay(d.overlay, d.image, format);
            } catch (err) {
              errors.push(`VM ${vm.domain} disk ${d.target}: cannot make overlay ${d.overlay}: ${message(err)}`);
            }
          }),
        ),
    );
    if (errors.length > 0) {
      for (const f of made) rmSync(f, { force: true });
      throw new Error(errors.join('; '));
    }
  }

  /**
   * Removes the prepared overlays of VMs that were not snapshotted, when no disk uses them (compensation's undo checks
   * again, for a run whose freeze report was lost).
   */
  async function removeUnusedOverlays(vms: PlannedVm[], reports: FreezeVmReport[]): Promise<void> {
    await Promise.all(
      vms.map(async (vm, i) => {
        if (reports[i].snapshotted) return;
        const active = await hypervisor.describe(vm.domain).then(
          (d) => new Set(d.disks.map((k) => k.source)),
          () => undefined,
        );
        if (!active) return;
        for (const d of vm.disks) if (!active.has(d.overlay)) rmSync(d.overlay, { force: true });
      }),
    );
  }

  /** Freezes guest filesystems (when planned) before any pause, journalled first so whoever closes the record thaws. */
  async function quiesceAll(
    req: FreezeRequest,
    vms: PlannedVm[],
    reports: FreezeVmReport[],
    fail: (i: number, err: unknown) => void,
  ): Promise<void> {
    await Promise.all(
      vms.map(async (vm, i) => {
        if (!vm.quiesce) return;
        const at = nowMs();
        const record: FreezeRecord = {
          snapshotId: req.snapshotId,
          domain: vm.domain,
          state: 'pausing',
          pausedAtMs: at,
          deadlineMs: at + req.maxFreezeMs,
          fsFrozen: true,
        };
        journal.write(record);
        timers.arm(record);
        try {
          reports[i].quiesced = (await hypervisor.fsFreeze(vm.domain)) >= 0;
        } catch (err) {
          // No agent answered: nothing was frozen, nothing to thaw (any other failure may have frozen something).
          if (err instanceof GuestAgentUnavailableError)
            journal.write({ ...record, fsFrozen: false, state: 'resumed', notPausedByUs: true });
          if (req.quiesce === 'agent' || !(err instanceof GuestAgentUnavailableError)) fail(i, err);
          else log('guest agent unavailable, snapshot is crash-consistent', { domain: vm.domain });
        }
      }),
    );
  }

  /** Takes one VM's atomic disk-only snapshot and reports when it completed. */
  async function snapshotOne(req: FreezeRequest, vm: PlannedVm, report: FreezeVmReport, reuse: boolean) {
    const startedAtMs = nowMs();
    try {
      await hypervisor.snapshotDisks(
        vm.domain,
        vm.disks.map((d) => ({ target: d.target, file: d.overlay })),
        vm.skip,
        reuse ? { reuse } : undefined,
      );
      report.snapshotted = true;
      report.snapshottedAtMs = nowMs();
      logPhase('snapshot', req.snapshotId, vm.domain, {
        snapshottedAtMs: report.snapshottedAtMs,
        ms: round(report.snapshottedAtMs - startedAtMs),
        disks: vm.disks.length,
      });
    } catch (err) {
      report.error ??= message(err);
      logPhase('snapshot', req.snapshotId, vm.domain, { error: message(err) });
    }
  }

  /** A deadline timer (or the guard) that resumed a VM of ours before this run did broke the cut. */
  function checkNotResumedByOthers(req: FreezeRequest, r: FreezeVmReport): void {
    const rec = r.pausedByUs ? journal.read(req.snapshotId, r.domain) : undefined;
    if (rec && rec.state !== 'paused') {
      r.resumedByGuard = true;
      r.resumedAtMs = rec.resumedAtMs;
      r.error ??= `freeze deadline of ${req.maxFreezeMs} ms passed before the snapshot completed`;
    }
  }

  /** Ends the window on this host: thaws guests, closes quiesce records and reads the state each VM is left in. */
  async function afterWindow(req: FreezeRequest, vms: PlannedVm[], reports: FreezeVmReport[]): Promise<void> {
    await thawFilesystems(reports.filter((r) => r.quiesced).map((r) => r.domain));
    await closeQuiesceRecords(req.snapshotId, vms);
    await Promise.all(reports.map(async (r) => (r.state = await hypervisor.state(r.domain).catch(() => undefined))));
  }

  /**
   * The window in the order before `group-paused`: pause every running VM, snapshot all in parallel, wait for the
   * release (at once for a one-host group, else the workflow's barrier of every host snapshotted), resume all.
   */
  async function classicWindow(
    req: FreezeRequest,
    vms: PlannedVm[],
    reports: FreezeVmReport[],
    fail: (i: number, err: unknown) => void,
  ): Promise<void> {
    const failed = () => reports.some((r) => r.error !== undefined);
    if (!failed()) await pauseAll(req, vms, reports, fail);
    if (!failed() && undoing.has(runKey(req))) for (const r of reports) r.error ??= 'the run is being undone';
    if (!failed()) await Promise.all(vms.map((vm, i) => snapshotOne(req, vm, reports[i], false)));
    for (const r of reports) checkNotResumedByOthers(req, r);
    if (req.release === 'barrier' && !failed()) {
      try {
        // Not released (another host failed, the workflow was cancelled or hit its deadline): the workflow
        // knows why and compensates; these VMs resume all the same.
        await waitForRelease(req, reports);
      } catch (err) {
        for (const r of reports) r.error ??= `the group was not released: ${message(err)}`;
      }
    }
    if (req.release !== 'thaw' || failed()) {
      await resumeOurs(req.snapshotId, reports);
      await afterWindow(req, vms, reports);
    }
  }

  async function pauseAll(
    req: FreezeRequest,
    vms: PlannedVm[],
    reports: FreezeVmReport[],
    fail: (i: number, err: unknown) => void,
  ): Promise<void> {
    await Promise.all(
      vms.map((vm, i) =>
        vm.state === 'running'
          ? pauseOne(vm, reports[i], req.snapshotId, req.maxFreezeMs).catch((e) => fail(i, e))
          : undefined,
      ),
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
    req: FreezeRequest,
    vms: PlannedVm[],
    reports: FreezeVmReport[],
    fail: (i: number, err: unknown) => void,
  ): Promise<void> {
    const failed = () => reports.some((r) => r.error !== undefined);
    if (!failed()) await pauseAll(req, vms, reports, fail);
    if (failed()) {
      await resumeOurs(req.snapshotId, reports);
      await removeUnusedOverlays(vms, reports);
      await afterWindow(req, vms, reports);
      return;
    }
    // Settles true when the group is released (every VM of every host paused), false on an abort.
    let aborted = false;
    const barrier =
      req.release === 'barrier'
        ? waitForRelease(req, reports)
        : req.release === 'signal'
          ? signalPausedAndWait(req)
          : undefined;
    const released: Promise<boolean> =
      req.release === 'local'
        ? Promise.resolve(true)
        : barrier
          ? barrier.then(
              (ok) => {
                if (!ok) for (const r of reports) r.error ??= 'the group was not released: aborted by the workflow';
                return ok;
              },
              (err) => {
                for (const r of reports) r.error ??= `the group was not released: ${message(err)}`;
                return false;
              },
            )
          : new Promise<boolean>(() => {}); // `thaw`: the workflow's thawVms resumes them
    void released.then((ok) => (aborted = !ok));
    const resumeOne = async (i: number): Promise<void> => {
      checkNotResumedByOthers(req, reports[i]);
      await resumeOurs(req.snapshotId, [reports[i]]);
    };
    await runBounded(vms, Math.max(1, req.snapshotsInFlight ?? inFlight), async (vm, i) => {
      if (undoing.has(runKey(req))) reports[i].error ??= 'the run is being undone';
      if (!aborted && !undoing.has(runKey(req))) await snapshotOne(req, vm, reports[i], vm.prepared === true);
      if (req.release === 'thaw' && !failed()) return;
      // Its own snapshot is done (or will not happen): it waits for the release only while the run may still succeed.
      if (!failed()) await Promise.race([released, deadlineOf(req, reports[i])]);
      await resumeOne(i);
    });
    if (failed()) {
      // A failure in one VM's snapshot resumes the VMs still waiting for the release (none may wait forever).
      await resumeOurs(
        req.snapshotId,
        reports.filter((r) => r.resumeIssuedAtMs === undefined),
      );
      await removeUnusedOverlays(vms, reports);
    }
    if (req.release !== 'thaw' || failed()) await afterWindow(req, vms, reports);
  }

  /** Resolves when `report`'s VM reaches its freeze deadline (a safety net: the timers resume it then anyway). */
  function deadlineOf(req: FreezeRequest, report: FreezeVmReport): Promise<void> {
    const at = (report.pausedAtMs ?? nowMs()) + req.maxFreezeMs;
    return new Promise((resolve) => setTimeout(resolve, Math.max(0, at - nowMs())).unref());
  }

  /** Input checks of the snapshot activities (see input-checks.ts): nothing is trusted because the workflow checked. */
  function checkSnapshotRequest(req: { snapshotId?: unknown }, problems: string[]): void {
    checkName('snapshot id', req.snapshotId, problems);
  }

  /**
   * The disks of a request must be exactly the files this host would use for this snapshot: each overlay is the
   * name {@link overlayPath} gives for its image, so no request can make a host create, commit or remove any other
   * file.
   */
  function checkDisks(domain: string, snapshotId: string, disks: unknown, problems: string[]): void {
    if (!Array.isArray(disks) || disks.length === 0) {
      problems.push(`VM ${domain}: a non-empty list of disks is required`);
      return;
    }
    for (const d of disks as DiskSnapshot[]) {
      if (
        typeof d?.target !== 'string' ||
        !/^[A-Za-z0-9_-]{1,32}$/.test(d.target) ||
        typeof d.image !== 'string' ||
        !d.image.startsWith('/') ||
        typeof d.overlay !== 'string'
      ) {
        problems.push(`VM ${domain}: disk ${JSON.stringify(d)} is not valid`);
        continue;
      }
      if (d.overlay !== overlayPath(d.image, domain, d.target, snapshotId))
        problems.push(
          `VM ${domain} disk ${d.target}: ${d.overlay} is not the overlay this host makes for snapshot ${snapshotId}`,
        );
    }
  }

  /** A non-empty list of VMs, each a valid name with exactly the disks this host makes for `snapshotId`. */
  function checkVmDisks(vms: unknown, snapshotId: string, problems: string[]): void {
    if (!Array.isArray(vms) || vms.length === 0) {
      problems.push('a non-empty list of VMs is required');
      return;
    }
    for (const vm of vms as { domain?: unknown; disks?: unknown }[]) {
      checkDomain(vm?.domain, problems);
      if (typeof vm?.domain === 'string') checkDisks(vm.domain, snapshotId, vm.disks, problems);
    }
  }

  /**
   * Takes the leases again for `owner` (renewing them when it still holds them; compensation may come after they
   * expired), or fails retryably while another run holds one.
   */
  function retake(owner: string, domains: string[]): void {
    try {
      locks.acquire(owner, domains, LEASE_TTL_MS);
    } catch (err) {
      if (err instanceof LockBusyError) throw ApplicationFailure.retryable(err.message, 'LockBusyError');
      throw err;
    }
  }

  /** Ends a block job left on a disk by a worker that died mid-commit: pivots a finished active commit, else aborts. */
  async function settleBlockJob(domain: string, target: string): Promise<void> {
    const job = await hypervisor.blockJob(domain, target);
    if (!job) return;
    const how = job.type === 'active-commit' && job.ready ? 'pivot' : 'abort';
    log('ending a block job left by an interrupted worker', { domain, target, job, how });
    await hypervisor.endBlockJob(domain, target, how);
  }

  /** Removes `snapshotId` of run `owner` from the VM's catalog and its manifest, and bars it from coming back. */
  async function uncatalog(snapshotId: string, owner: string, domain: string, disks: DiskSnapshot[]): Promise<void> {
    metadata.markUndone(snapshotId, owner);
    const overlays = new Set(disks.map((d) => d.overlay));
    await metadata.serialized(domain, async () => {
      const meta = await metadata.read(domain);
      const before = meta.snapshots.length;
      // Only this run's entry: it names this run's overlays.
      meta.snapshots = meta.snapshots.filter(
        (s) => s.snapshotId !== snapshotId || !s.disks.some((d) => overlays.has(d.overlay)),
      );
      if (meta.snapshots.length !== before) await hypervisor.setMetadata(domain, renderVmMetadata(meta));
      if (disks.length > 0) rmSync(manifestPath(dirname(disks[0].image), domain, snapshotId), { force: true });
    });
  }

  const activities = {
    /**
     * Resolves VMs, reads their disks, chooses overlay names and checks space. Changes nothing. With `leaseOwner`,
     * the run plans again under its leases (what the freeze will rely on), and fails if it does not hold them.
     */
    async planVms(req: PlanRequest): Promise<PlannedVm[]> {
      const problems: string[] = [];
      checkSnapshotRequest(req, problems);
      checkDomains(req.domains, problems);
      if (!QUIESCE_MODES.includes(req.quiesce))
        problems.push(`quiesce mode ${JSON.stringify(req.quiesce)} is not valid`);
      if (req.leaseOwner !== undefined) checkOwner(req.leaseOwner, problems);
      if (req.prepareOverlays && req.leaseOwner === undefined)
        problems.push('overlays are prepared only under the leases (give leaseOwner)');
      failIf(problems);
      if (req.leaseOwner !== undefined) {
        try {
          locks.assertHeld(req.leaseOwner, req.domains);
        } catch (err) {
          throw ApplicationFailure.nonRetryable(message(err), 'LeaseLost');
        }
      }
      const described = await Promise.all(
        req.domains.map((name) =>
          hypervisor.describe(name).catch((err) => {
            if (err instanceof DomainNotFoundError) {
              problems.push(`VM ${JSON.stringify(name)} not found on host ${deps.hostId}`);
              return undefined;
            }
            throw err;
          }),
        ),
      );
      const planned = described
        .filter((d): d is DomainDescription => d !== undefined)
        .map((d) => planOne(d, req.snapshotId, req.quiesce, problems));
      checkSpace(planned, problems);
      if (problems.length > 0) throw badInput(problems);
      if (req.prepareOverlays) {
        for (const vm of planned) if (vm.state !== 'shutoff') vm.prepared = true;
        await prepareOverlays(planned);
      }
      return planned;
    },

    async acquireLocks(req: { owner: string; domains: string[]; ttlMs: number }): Promise<void> {
      const problems: string[] = [];
      checkOwner(req.owner, problems);
      checkDomains(req.domains, problems);
      if (!Number.isInteger(req.ttlMs) || req.ttlMs < 1000 || req.ttlMs > 24 * 3600_000)
        problems.push(`lease time ${JSON.stringify(req.ttlMs)} ms is not between 1 s and 24 h`);
      failIf(problems);
      try {
        locks.acquire(req.owner, req.domains, req.ttlMs);
      } catch (err) {
        if (err instanceof LockBusyError) throw ApplicationFailure.retryable(err.message, 'LockBusyError');
        throw err;
      }
    },

    async releaseLocks(req: { owner: string; domains: string[] }): Promise<void> {
      const problems: string[] = [];
      checkOwner(req.owner, problems);
      checkDomains(req.domains, problems);
      failIf(problems);
      locks.release(req.owner, req.domains);
    },

    /** The freeze window on this host (see `freeze`), heartbeating so a dead host is noticed fast. */
    async freezeVms(req: FreezeRequest): Promise<FreezeVmReport[]> {
      const problems: string[] = [];
      checkSnapshotRequest(req, problems);
      checkOwner(req.leaseOwner, problems);
      if (!Number.isInteger(req.maxFreezeMs) || req.maxFreezeMs < 1 || req.maxFreezeMs > 600_000)
        problems.push(`max freeze ${JSON.stringify(req.maxFreezeMs)} ms is not valid`);
      if (!['local', 'barrier', 'thaw', 'signal'].includes(req.release))
        problems.push(`release ${req.release} is not valid`);
      if (req.release === 'signal' && req.resumeWhen !== 'group-paused')
        problems.push('the signal release needs the group-paused order');
      if (!QUIESCE_MODES.includes(req.quiesce))
        problems.push(`quiesce mode ${JSON.stringify(req.quiesce)} is not valid`);
      checkVmDisks(req.vms, req.snapshotId, problems);
      failIf(problems);
      heartbeat();
      const beat = setInterval(() => heartbeat(), 500);
      const running = freeze(req);
      runningFreezes.set(runKey(req), running);
      try {
        return await running;
      } finally {
        clearInterval(beat);
        if (runningFreezes.get(runKey(req)) === running) {
          runningFreezes.delete(runKey(req));
          releases.close(runKey(req));
        }
      }
    },

    /**
     * The workflow's decision for the `signal` barrier: releases (or aborts) the freeze of `snapshotId` waiting on
     * this host, or the one that will wait. Changes nothing else; a second decision is ignored.
     */
    async releaseFreeze(req: ReleaseRequest): Promise<void> {
      const problems: string[] = [];
      checkSnapshotRequest(req, problems);
      checkOwner(req.leaseOwner, problems);
      if (typeof req.release !== 'boolean')
        problems.push(`release must be true or false, got ${JSON.stringify(req.release)}`);
      failIf(problems);
      releases.decide(runKey(req), req.release);
    },

    /** Resumes the VMs this snapshot paused on this host (no-op for those already resumed), then thaws. */
    async thawVms(req: ThawRequest): Promise<ThawVmReport[]> {
      const problems: string[] = [];
      checkSnapshotRequest(req, problems);
      checkDomains(req.domains, problems);
      if (!Array.isArray(req.quiesced) || !req.quiesced.every((d) => req.domains.includes(d)))
        problems.push('quiesced VMs must be a list of the VMs thawed');
      failIf(problems);
      const out = await Promise.all(
        req.domains.map(async (domain): Promise<ThawVmReport> => {
          timers.disarm(req.snapshotId, domain);
          const before = journal.read(req.snapshotId, domain);
          const rec = await resumeFromJournal(hypervisor, journal, req.snapshotId, domain, 'resumed');
          reportGuardResume(rec);
          // Compensation thaws twice: log the resume once, when this call found the VM still paused.
          if (rec && before && OPEN_STATES.includes(before.state))
            logPhase('resume', req.snapshotId, domain, resumeFields(rec));
          const state = await hypervisor.state(domain).catch(() => undefined);
          if (!rec || rec.notPausedByUs) return { domain, pausedByUs: false, state };
          return {
            domain,
            pausedByUs: true,
            pausedAtMs: rec.pausedAtMs,
            resumedAtMs: rec.resumedAtMs,
            resumedByGuard: rec.state !== 'resumed',
            state,
          };
        }),
      );
      await thawFilesystems(req.quiesced);
      return out;
    },

    /** Undoes this snapshot's overlays: active commit + pivot (or redefinition when shut off), then removal. */
    async undoSnapshots(req: UndoRequest): Promise<UndoVmReport[]> {
      const problems: string[] = [];
      checkSnapshotRequest(req, problems);
      checkOwner(req.leaseOwner, problems);
      checkVmDisks(req.vms, req.snapshotId, problems);
      failIf(problems);
      const domains = req.vms.map((v) => v.domain);
      retake(req.leaseOwner, domains);
      const stop = locks.keepAlive(req.leaseOwner, domains, LEASE_TTL_MS, (err) =>
        log('lease lost during undo', { snapshotId: req.snapshotId, error: message(err) }),
      );
      try {
        return await beating(async () => {
          undoing.add(runKey(req));
          const running = runningFreezes.get(runKey(req));
          if (running) {
            log('undo waits for a freeze of the same snapshot still running here', { snapshotId: req.snapshotId });
            await running.catch(() => undefined);
          }
          const out: UndoVmReport[] = [];
          for (const vm of req.vms) {
            // Out of the catalog first (and barred from coming back), then out of the chain.
            await uncatalog(req.snapshotId, req.leaseOwner, vm.domain, vm.disks).catch((err) => {
              if (!(err instanceof DomainNotFoundError)) throw err;
            });
            out.push(await undoOne(req.snapshotId, vm.domain, vm.disks));
          }
          return out;
        });
      } finally {
        stop();
      }
    },

    /** Records a completed snapshot in each VM's libvirt metadata and in a manifest beside its images. */
    /**
     * Records a completed snapshot in each VM's libvirt metadata and in a manifest beside its images, once it has
     * checked that each disk's overlay is in the VM's chain directly over the image it names. Refuses (for good) a
     * snapshot that compensation undid meanwhile, and one whose run lost its leases.
     */
    async recordCatalog(req: CatalogRequest): Promise<void> {
      const problems: string[] = [];
      checkName('snapshot id', req.entry?.snapshotId, problems);
      checkName('group name', req.entry?.group, problems);
      checkOwner(req.leaseOwner, problems);
      if (typeof req.entry?.createdAt !== 'string' || Number.isNaN(Date.parse(req.entry.createdAt)))
        problems.push(`snapshot time ${JSON.stringify(req.entry?.createdAt)} is not valid`);
      checkVmDisks(req.vms, req.entry.snapshotId, problems);
      failIf(problems);
      const { snapshotId } = req.entry;
      for (const vm of req.vms) {
        await metadata.serialized(vm.domain, async () => {
          if (metadata.isUndone(snapshotId, req.leaseOwner))
            throw ApplicationFailure.nonRetryable(
              `snapshot ${snapshotId} of ${vm.domain} was undone: it is not recorded`,
              'SnapshotUndone',
            );
          try {
            locks.assertHeld(req.leaseOwner, [vm.domain]);
          } catch (err) {
            if (err instanceof LeaseLostError) throw ApplicationFailure.nonRetryable(err.message, 'LeaseLost');
            throw err;
          }
          const desc = await hypervisor.describe(vm.domain);
          for (const d of vm.disks) {
            const active = desc.disks.find((k) => k.target === d.target)?.source;
            const chain = await imageChain(hypervisor, active);
            const at = chain.indexOf(d.overlay);
            if (at < 0 || chain[at + 1] !== d.image)
              throw ApplicationFailure.nonRetryable(
                `snapshot ${snapshotId} of ${vm.domain} disk ${d.target}: ${d.overlay} is not in the VM's chain ` +
                  `directly over ${d.image} (chain: ${chain.join(' <- ') || 'none'})`,
                'ChainMismatch',
              );
          }
          const entry: CatalogEntry = { ...req.entry, disks: vm.disks };
          const meta = await metadata.read(vm.domain);
          if (!meta.snapshots.some((s) => s.snapshotId === entry.snapshotId)) {
            meta.snapshots.push(entry);
            await hypervisor.setMetadata(vm.domain, renderVmMetadata(meta));
          }
          writeFileSync(
            manifestPath(dirname(vm.disks[0].image), vm.domain, snapshotId),
            JSON.stringify({ ...entry, domain: vm.domain, uuid: vm.uuid, host: req.host }, null, 2) + '\n',
          );
        });
      }
    },

    /** Current power state of each VM (for results). */
    async vmStates(req: { domains: string[] }): Promise<Record<string, VmPowerState | 'missing'>> {
      const out: Record<string, VmPowerState | 'missing'> = {};
      for (const d of req.domains) out[d] = await hypervisor.state(d).catch(() => 'missing' as const);
      return out;
    },

    // Snapshot deletion, restores and tags (activities/dr-activities.ts), under the same VM leases.
    ...createDrActivities({ hypervisor, hostId: deps.hostId, locks, metadata, log, settleBlockJob }),
  };

  return {
    activities,
    journal,
    /**
     * Finishes freezes a crashed worker left: resumes VMs past their deadline, re-arms timers for the rest. Also
     * counts the VMs the host guard resumed meanwhile (see `reportGuardResume`).
     */
    recover: async () => {
      const { closed, failed } = await recoverFreezes(hypervisor, journal, timers, 'resumed-by-guard');
      for (const r of closed) reportGuardResume(r, 'recovery');
      for (const r of journal.list()) reportGuardResume(r, 'guard');
      // One record that cannot be closed now must not keep the worker from starting: its timer keeps trying (and
      // the guard too).
      for (const f of failed) {
        log('cannot finish an interrupted freeze yet, retrying', {
          domain: f.record.domain,
          snapshotId: f.record.snapshotId,
          error: message(f.error),
        });
        timers.arm(f.record);
      }
      return closed;
    },
    /** Stops the in-process timers (the host guard still covers open freezes). */
    shutdown: () => timers.disarmAll(),
  };
}

/** The host activities alone, e.g. for a test worker. */
export function createHostActivities(deps: HostActivityDeps) {
  return createHost(deps).activities;
}

export type HostActivities = ReturnType<typeof createHostActivities>;

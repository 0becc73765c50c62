import { existsSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure, noopMetricMeter, type MetricMeter } from '@temporalio/common';
import { METRICS } from '../common/metrics';
import { HOST_FROZEN_UPDATE } from '../common/names';
import { BAD_INPUT } from '../common/validation';
import type { DiskSnapshot, QuiesceMode, VmPowerState } from '../common/types';
import { DomainNotFoundError, GuestAgentUnavailableError, InvalidStateError } from '../hypervisor/errors';
import type { DomainDescription, Hypervisor } from '../hypervisor/hypervisor';
import { parseVmMetadata, renderVmMetadata, type CatalogEntry } from './catalog';
import { nowMs } from './clock';
import { DomainLocks, LockBusyError } from './domain-locks';
import { createDrActivities } from './dr-activities';
import { FreezeJournal, OPEN_STATES, type FreezeRecord } from './freeze-journal';
import { DeadlineTimers, recoverFreezes, resumeFromJournal } from './resume';

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
}

/** Phases of a VM in a snapshot run, each logged as one structured line by its host. */
export type VmPhase = 'pause' | 'snapshot' | 'resume' | 'undo';

export interface PlanRequest {
  snapshotId: string;
  domains: string[];
  quiesce: QuiesceMode;
}

/** A VM ready to be frozen: everything decided before the first pause. */
export interface PlannedVm {
  domain: string;
  uuid: string;
  state: VmPowerState;
  disks: DiskSnapshot[];
  /** Disk targets left out of the snapshot (CD-ROMs, read-only or empty drives). */
  skip: string[];
  /** Freeze guest filesystems through the agent before pausing. */
  quiesce: boolean;
}

export interface FreezeRequest {
  snapshotId: string;
  vms: PlannedVm[];
  maxFreezeMs: number;
  /**
   * When the VMs may resume: `local`, right after this host's snapshots (the group lives on this host alone);
   * `barrier`, once the workflow releases the group, i.e. every host has reported its snapshots through the
   * workflow's `hostFrozen` update; `thaw`, not in this activity: they stay paused (under their deadline) until
   * the workflow's `thawVms` (for groups over more hosts than the server lets updates wait at once).
   */
  release: 'local' | 'barrier' | 'thaw';
  /** This host's id, as the workflow's barrier counts hosts. */
  host: string;
  quiesce: QuiesceMode;
}

export interface FreezeVmReport {
  domain: string;
  pausedByUs: boolean;
  snapshotted: boolean;
  quiesced: boolean;
  pausedAtMs?: number;
  snapshottedAtMs?: number;
  /** Set when this activity also resumed the VM. */
  resumedAtMs?: number;
  resumedByGuard?: boolean;
  /** Power state once this activity was done with the VM (set when it resumed, or left, the VM). */
  state?: VmPowerState;
  error?: string;
}

export interface ThawRequest {
  snapshotId: string;
  domains: string[];
  /** Domains whose guest filesystems were frozen. */
  quiesced: string[];
}

export interface ThawVmReport {
  domain: string;
  pausedByUs: boolean;
  pausedAtMs?: number;
  resumedAtMs?: number;
  resumedByGuard?: boolean;
  state?: VmPowerState;
}

export interface UndoRequest {
  snapshotId: string;
  vms: { domain: string; disks: DiskSnapshot[] }[];
}

export interface UndoVmReport {
  domain: string;
  /** An overlay of this snapshot was found (active or as a file) and removed. */
  hadSnapshot: boolean;
  rolledBack: boolean;
  cleanupPending: string[];
  error?: string;
}

export interface CatalogRequest {
  entry: Omit<CatalogEntry, 'disks'>;
  host: string;
  vms: { domain: string; uuid: string; disks: DiskSnapshot[] }[];
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

function badInput(problems: string[]): ApplicationFailure {
  return ApplicationFailure.nonRetryable(problems.join('; '), BAD_INPUT);
}

/** File-name-safe form of a libvirt domain name (which may contain spaces and more). */
export function fileSafe(domain: string): string {
  return domain.replace(/[^A-Za-z0-9._-]/g, '_');
}

function overlayPath(image: string, domain: string, target: string, snapshotId: string): string {
  return join(dirname(image), `${fileSafe(domain)}.${target}.${snapshotId}.qcow2`);
}

function heartbeat(details?: unknown): void {
  try {
    Context.current().heartbeat(details);
  } catch {
    // called outside an activity (unit tests, recovery)
  }
}

/**
 * The host side of groupsnap: activities that run on the worker of one hypervisor host, on that host's task
 * queue, plus the in-process deadline timers and crash recovery they share. Each activity checks state first
 * and is safe to retry: a retried call never pauses, snapshots or resumes a VM twice.
 */
export function createHost(deps: HostActivityDeps) {
  const { hypervisor } = deps;
  const log = deps.log ?? (() => {});
  const journal = new FreezeJournal(deps.stateDir);
  const locks = new DomainLocks(deps.stateDir);
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

  function planOne(d: DomainDescription, snapshotId: string, quiesce: QuiesceMode, problems: string[]): PlannedVm {
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
      if (existsSync(overlay)) problems.push(`VM ${d.name} disk ${disk.target}: overlay ${overlay} already exists`);
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
            `not enough free space in ${dir}: ${Math.floor(free / 2 ** 20)} MiB free, need ${count * 64} MiB`,
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
    const record = { snapshotId, domain: vm.domain, pausedAtMs, deadlineMs: pausedAtMs + maxFreezeMs };
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
      // Not paused by us: drop the record so nothing resumes the VM on our behalf.
      timers.disarm(snapshotId, vm.domain);
      journal.remove(snapshotId, vm.domain);
      // Paused by someone else since planning: not ours to resume, and still snapshottable.
      logPhase('pause', snapshotId, vm.domain, state === 'paused' ? { pausedByUs: false } : { error: message(err) });
      if (state === 'paused') return;
      throw err;
    }
    journal.write({ ...record, state: 'paused' });
    report.pausedByUs = true;
    report.pausedAtMs = pausedAtMs;
    logPhase('pause', snapshotId, vm.domain, { pausedAtMs, ms: round(nowMs() - pausedAtMs) });
  }

  async function resumeOurs(snapshotId: string, reports: FreezeVmReport[]): Promise<void> {
    await Promise.all(
      reports
        .filter((r) => r.pausedByUs)
        .map(async (r) => {
          timers.disarm(snapshotId, r.domain);
          const rec = await resumeFromJournal(hypervisor, journal, snapshotId, r.domain, 'resumed');
          r.resumedAtMs = rec?.resumedAtMs;
          r.resumedByGuard = rec !== undefined && rec.state !== 'resumed';
          reportGuardResume(rec);
          if (rec) logPhase('resume', snapshotId, r.domain, resumeFields(rec));
        }),
    );
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
      const active = desc.disks.find((d) => d.target === disk.target)?.source;
      if (active === disk.overlay) {
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
   * The freeze window on this host: quiesce (optional), pause every running VM in parallel, take each VM's
   * atomic disk-only snapshot, wait for the release (at once for a one-host group, else the workflow's
   * cross-host barrier), and resume. On any failure it resumes at once and reports which snapshots were taken,
   * for the workflow to undo.
   */
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
    await Promise.all(
      req.vms.map(async (vm, i) => {
        if (!vm.quiesce) return;
        try {
          reports[i].quiesced = (await hypervisor.fsFreeze(vm.domain)) >= 0;
        } catch (err) {
          if (req.quiesce === 'agent' || !(err instanceof GuestAgentUnavailableError)) fail(i, err);
          else log('guest agent unavailable, snapshot is crash-consistent', { domain: vm.domain });
        }
      }),
    );
    const quiesced = () => reports.filter((r) => r.quiesced).map((r) => r.domain);
    const failed = () => reports.some((r) => r.error !== undefined);
    if (!failed()) {
      await Promise.all(
        req.vms.map((vm, i) =>
          vm.state === 'running'
            ? pauseOne(vm, reports[i], req.snapshotId, req.maxFreezeMs).catch((e) => fail(i, e))
            : undefined,
        ),
      );
    }
    if (!failed()) {
      await Promise.all(
        req.vms.map(async (vm, i) => {
          const startedAtMs = nowMs();
          try {
            await hypervisor.snapshotDisks(
              vm.domain,
              vm.disks.map((d) => ({ target: d.target, file: d.overlay })),
              vm.skip,
            );
            reports[i].snapshotted = true;
            reports[i].snapshottedAtMs = nowMs();
            logPhase('snapshot', req.snapshotId, vm.domain, {
              snapshottedAtMs: reports[i].snapshottedAtMs,
              ms: round(reports[i].snapshottedAtMs! - startedAtMs),
              disks: vm.disks.length,
            });
          } catch (err) {
            fail(i, err);
            logPhase('snapshot', req.snapshotId, vm.domain, { error: message(err) });
          }
        }),
      );
    }
    // A deadline timer that fired mid-window broke the cut.
    for (const r of reports) {
      const rec = r.pausedByUs ? journal.read(req.snapshotId, r.domain) : undefined;
      if (rec && rec.state !== 'paused') {
        r.resumedByGuard = true;
        r.resumedAtMs = rec.resumedAtMs;
        r.error ??= `freeze deadline of ${req.maxFreezeMs} ms passed before the snapshot completed`;
      }
    }
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
      await thawFilesystems(quiesced());
      // Outside the freeze window: the state each VM is left in, for the result.
      await Promise.all(reports.map(async (r) => (r.state = await hypervisor.state(r.domain).catch(() => undefined))));
    }
    log('freeze', { snapshotId: req.snapshotId, host: deps.hostId, reports });
    return reports;
  }

  const activities = {
    /** Resolves VMs, reads their disks, chooses overlay names and checks space. Changes nothing. */
    async planVms(req: PlanRequest): Promise<PlannedVm[]> {
      const problems: string[] = [];
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
      return planned;
    },

    async acquireLocks(req: { owner: string; domains: string[]; ttlMs: number }): Promise<void> {
      try {
        locks.acquire(req.owner, req.domains, req.ttlMs);
      } catch (err) {
        if (err instanceof LockBusyError) throw ApplicationFailure.retryable(err.message, 'LockBusyError');
        throw err;
      }
    },

    async releaseLocks(req: { owner: string; domains: string[] }): Promise<void> {
      locks.release(req.owner, req.domains);
    },

    /** The freeze window on this host (see `freeze`), heartbeating so a dead host is noticed fast. */
    async freezeVms(req: FreezeRequest): Promise<FreezeVmReport[]> {
      heartbeat();
      const beat = setInterval(() => heartbeat(), 500);
      try {
        return await freeze(req);
      } finally {
        clearInterval(beat);
      }
    },

    /** Resumes the VMs this snapshot paused on this host (no-op for those already resumed), then thaws. */
    async thawVms(req: ThawRequest): Promise<ThawVmReport[]> {
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
          if (!rec) return { domain, pausedByUs: false, state };
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
      const out: UndoVmReport[] = [];
      for (const vm of req.vms) out.push(await undoOne(req.snapshotId, vm.domain, vm.disks));
      return out;
    },

    /** Records a completed snapshot in each VM's libvirt metadata and in a manifest beside its images. */
    async recordCatalog(req: CatalogRequest): Promise<void> {
      for (const vm of req.vms) {
        const entry: CatalogEntry = { ...req.entry, disks: vm.disks };
        const meta = parseVmMetadata(await hypervisor.getMetadata(vm.domain));
        if (!meta.snapshots.some((s) => s.snapshotId === entry.snapshotId)) {
          meta.snapshots.push(entry);
          await hypervisor.setMetadata(vm.domain, renderVmMetadata(meta));
        }
        const manifest = join(dirname(vm.disks[0].image), `${fileSafe(vm.domain)}.${entry.snapshotId}.manifest.json`);
        writeFileSync(
          manifest,
          JSON.stringify({ ...entry, domain: vm.domain, uuid: vm.uuid, host: req.host }, null, 2) + '\n',
        );
      }
    },

    /** Current power state of each VM (for results). */
    async vmStates(req: { domains: string[] }): Promise<Record<string, VmPowerState | 'missing'>> {
      const out: Record<string, VmPowerState | 'missing'> = {};
      for (const d of req.domains) out[d] = await hypervisor.state(d).catch(() => 'missing' as const);
      return out;
    },

    // Snapshot deletion, restores and tags (activities/dr-activities.ts), under the same VM leases.
    ...createDrActivities({ hypervisor, hostId: deps.hostId, locks, log }),
  };

  return {
    activities,
    journal,
    /**
     * Finishes freezes a crashed worker left: resumes VMs past their deadline, re-arms timers for the rest. Also
     * counts the VMs the host guard resumed meanwhile (see `reportGuardResume`).
     */
    recover: async () => {
      const closed = await recoverFreezes(hypervisor, journal, timers, 'resumed-by-guard');
      for (const r of closed) reportGuardResume(r, 'recovery');
      for (const r of journal.list()) reportGuardResume(r, 'guard');
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

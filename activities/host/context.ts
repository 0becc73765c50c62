/**
 * The host context: what every room of the host side (plan, leases, freeze window, thaw, release, undo, catalog,
 * recovery) works over, built once per worker by {@link createHostContext}. The rooms are plain functions of it, so a
 * call can be followed from an activity down to the hypervisor, and a test can build one over a fake hypervisor and a
 * fake clock.
 */
import { noopMetricMeter, type MetricMeter } from '@temporalio/common';
import { METRICS } from '../../common/metrics';
import { checkSnapshotsInFlight, DEFAULT_SNAPSHOTS_IN_FLIGHT, type VmPhase } from '../../common/host-types';
import type { Hypervisor } from '../../hypervisor/hypervisor';
import { nowMs } from '../clock';
import { DomainLocks } from '../domain-locks';
import { FreezeJournal, type FreezeRecord } from '../freeze-journal';
import { ReleaseGates } from '../release-gates';
import { DeadlineTimers } from '../resume';
import { VmMetadataStore } from '../vm-metadata';
import { UndoMemory } from './undo-memory';

/** One structured log line: a message and its fields. */
export type HostLog = (message: string, fields?: Record<string, unknown>) => void;

export interface HostActivityDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** Freeze journal and locks of this host; must survive the worker process. */
  stateDir: string;
  log?: HostLog;
  /** Meter for groupsnap's host metrics (VMs resumed by a deadline), e.g. `Runtime.instance().metricMeter`. */
  metrics?: MetricMeter;
  /**
   * Most snapshots taken at once in the `group-paused` order (the host's cores share them: 2 was best on 2 cores,
   * BENCHMARKS.md). @default DEFAULT_SNAPSHOTS_IN_FLIGHT
   */
  snapshotsInFlight?: number;
  /**
   * The host's clock (epoch ms): pause times, freeze deadlines, undo memory, release gates. A test may give a fake.
   * @default nowMs (activities/clock.ts)
   */
  now?: () => number;
}

/** Everything the host's activities share: dependencies, the host's state and the helpers of more than one room. */
export interface HostContext {
  readonly hypervisor: Hypervisor;
  readonly hostId: string;
  readonly log: HostLog;
  /** The host's clock, epoch ms (see {@link HostActivityDeps.now}). */
  readonly now: () => number;
  /** Freeze records: what the host guard and a restarted worker resume from. */
  readonly journal: FreezeJournal;
  /** The VM leases of runs on this host. */
  readonly locks: DomainLocks;
  /** The one queue of catalog (libvirt metadata) changes per VM. */
  readonly metadata: VmMetadataStore;
  /** In-process deadline timers of open freezes. */
  readonly timers: DeadlineTimers;
  /** The `signal` barrier's releases, from the workflow's `releaseFreeze` to the freeze waiting here. */
  readonly releases: ReleaseGates;
  /** Freezes running here and the runs whose undo started. */
  readonly undo: UndoMemory;
  /** The worker's bound on snapshots at once in the `group-paused` order. */
  readonly snapshotsInFlight: number;
  /** One JSON log line per VM and phase, with the snapshot, host and domain. */
  logPhase(phase: VmPhase, snapshotId: string, domain: string, fields?: Record<string, unknown>): void;
  /**
   * Counts a VM resumed by the host guard, once: the guard process has no metrics, so the worker counts its resumes
   * when it meets their records (thaw, or its own start) and marks them reported in the journal.
   */
  reportGuardResume(rec: FreezeRecord | undefined, by?: 'guard' | 'recovery'): void;
}

/** An error's message (or the thrown value as text). */
export const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Milliseconds rounded to the microsecond, for logs and reports. */
export const round = (ms: number): number => Math.round(ms * 1000) / 1000;

/** Builds the host context of one worker over `deps`. @throws RangeError for a bad `snapshotsInFlight`. */
export function createHostContext(deps: HostActivityDeps): HostContext {
  const { hypervisor, hostId } = deps;
  const snapshotsInFlight = checkSnapshotsInFlight(deps.snapshotsInFlight ?? DEFAULT_SNAPSHOTS_IN_FLIGHT);
  const log = deps.log ?? (() => {});
  const now = deps.now ?? nowMs;
  const journal = new FreezeJournal(deps.stateDir);
  const resumedByDeadline = (deps.metrics ?? noopMetricMeter).createCounter(
    METRICS.vmsResumedByGuard,
    'vms',
    'VMs resumed by a freeze deadline instead of the workflow',
  );
  const timers = new DeadlineTimers(hypervisor, journal, (rec, err) => {
    if (rec) log('deadline timer resumed VM', { domain: rec.domain, snapshotId: rec.snapshotId });
    else log('deadline timer failed to resume VM', { error: message(err) });
    if (rec?.state === 'resumed-by-timer') resumedByDeadline.add(1, { host: hostId, by: 'timer' });
  });
  return {
    hypervisor,
    hostId,
    log,
    now,
    journal,
    locks: new DomainLocks(deps.stateDir),
    metadata: new VmMetadataStore(hypervisor, deps.stateDir),
    timers,
    releases: new ReleaseGates(now),
    undo: new UndoMemory(now),
    snapshotsInFlight,
    logPhase: (phase, snapshotId, domain, fields = {}) =>
      log('vm phase', { snapshotId, host: hostId, domain, phase, ...fields }),
    reportGuardResume(rec, by = 'guard') {
      const current = rec && journal.read(rec.snapshotId, rec.domain);
      if (current?.state !== 'resumed-by-guard' || current.reported) return;
      journal.write({ ...current, reported: true });
      resumedByDeadline.add(1, { host: hostId, by });
    },
  };
}

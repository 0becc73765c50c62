/**
 * How groupsnap's workflows call activities: one set of presets (timeouts and retries chosen per kind of work) for
 * every workflow, and the proxies of each host's own task queue.
 */
import {
  ActivityCancellationType,
  proxyActivities,
  type ActivityOptions,
  type RetryPolicy,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { DrillActivities } from '../activities/drill';
import type { ExportActivities } from '../activities/export-activities';
import type { HostActivities } from '../activities/host-activities';
import type { RepoRestoreActivities } from '../activities/repo-restore';
import { REPO_KEY_MISSING } from '../common/backup-types';
import { BAD_INPUT } from '../common/failures';
import { hostTaskQueue } from '../common/names';

type Kind = 'read' | 'lock' | 'change' | 'merge' | 'thaw' | 'cleanup';

export const PRESETS: Record<Kind, ActivityOptions> = {
  // Reads and plans change nothing: a host without a worker is reported within seconds, not waited for.
  read: {
    scheduleToStartTimeout: '10s',
    startToCloseTimeout: '60s',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: [BAD_INPUT, 'LeaseLost'] },
  },
  // Leases: retried while another run holds a VM, up to how long a run waits for it.
  lock: {
    scheduleToStartTimeout: '10s',
    startToCloseTimeout: '10s',
    scheduleToCloseTimeout: '10m',
    retry: {
      initialInterval: '200ms',
      backoffCoefficient: 1.5,
      maximumInterval: '5s',
      nonRetryableErrorTypes: [BAD_INPUT],
    },
  },
  // Restores (define, boot): heartbeating, so a host that dies mid-step is retried within seconds.
  change: {
    scheduleToStartTimeout: '10s',
    startToCloseTimeout: '10m',
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 3, initialInterval: '1s', nonRetryableErrorTypes: [BAD_INPUT, 'LeaseLost'] },
  },
  // A block commit copies data: minutes for large layers. It heartbeats every second, so a dead worker's commit is
  // retried (and its leftover job settled) after 30 s, never while it still runs.
  merge: {
    scheduleToStartTimeout: '30s',
    startToCloseTimeout: '1h',
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 3, initialInterval: '2s', nonRetryableErrorTypes: [BAD_INPUT, 'LockBusyError'] },
  },
  // Resuming VMs: patient, a host that is down now may come back.
  thaw: {
    startToCloseTimeout: '30s',
    scheduleToCloseTimeout: '1h',
    retry: { initialInterval: '100ms', backoffCoefficient: 2, maximumInterval: '5s' },
  },
  // Catalog, undo, release: patient; a step cancelled with its run ends before compensation starts.
  cleanup: {
    startToCloseTimeout: '10m',
    heartbeatTimeout: '60s',
    scheduleToCloseTimeout: '1h',
    retry: {
      initialInterval: '200ms',
      backoffCoefficient: 2,
      maximumInterval: '10s',
      nonRetryableErrorTypes: [BAD_INPUT, 'SnapshotUndone', 'ChainMismatch', 'LeaseLost'],
    },
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  },
};

/** The armed barrier: how long a host's freeze may take to start, and to hear the group's go once started. */
export const ARMED_START_MS = 30_000;

/**
 * The freeze: bounded by the freeze deadline, never repeated (a failed freeze is compensated). With `retryLost`
 * (runs from the `freeze-retry-finds-outcome` patch on), an attempt the server timed out is retried: a retried
 * attempt pauses nothing and returns the host's outcome of the first one (activities/host/freeze-window.ts), so a
 * Temporal server outage during the window (heartbeats and the completion lost, the attempt timed out on its
 * restart) does not cost a point the host took. A host whose worker died is still noticed within seconds: nothing
 * polls its queue, and the retry times out before it starts.
 */
export function freezeOptions(maxFreezeMs: number, retryLost = false, armed = false): ActivityOptions {
  return {
    // Armed (the armed barrier): nothing is paused before every host's freeze has started and reported ready, so a
    // slow start costs the run time, not freeze time; it may wait up to ARMED_START_MS to start and to hear its go.
    scheduleToStartTimeout: armed ? ARMED_START_MS : '5s',
    startToCloseTimeout: maxFreezeMs + 30_000 + (armed ? ARMED_START_MS : 0),
    // The freeze heartbeats while it runs: a host that dies mid-freeze is noticed in seconds.
    heartbeatTimeout: '2s',
    retry: retryLost
      ? {
          maximumAttempts: 5,
          initialInterval: '100ms',
          backoffCoefficient: 2,
          maximumInterval: '2s',
          nonRetryableErrorTypes: [BAD_INPUT],
        }
      : { maximumAttempts: 1 },
    // Compensation must not start while a host is still pausing VMs.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
}

/**
 * The `signal` barrier's release: fast retries, given up once every VM it would release has passed its freeze
 * deadline anyway.
 */
export function releaseOptions(maxFreezeMs: number): ActivityOptions {
  return {
    startToCloseTimeout: '10s',
    scheduleToCloseTimeout: maxFreezeMs + 30_000,
    retry: {
      initialInterval: '50ms',
      backoffCoefficient: 2,
      maximumInterval: '1s',
      nonRetryableErrorTypes: [BAD_INPUT],
    },
  };
}

/** Activities on `hostId`'s own queue, one proxy per kind of work. */
export function onHost(hostId: string) {
  const taskQueue = hostTaskQueue(hostId);
  const proxy = (kind: Kind) => proxyActivities<HostActivities>({ taskQueue, ...PRESETS[kind] });
  return {
    read: proxy('read'),
    /** Planning is a read. */
    plan: proxy('read'),
    lock: proxy('lock'),
    change: proxy('change'),
    merge: proxy('merge'),
    thaw: proxy('thaw'),
    cleanup: proxy('cleanup'),
    freeze: (maxFreezeMs: number, retryLost = false, armed = false) =>
      proxyActivities<HostActivities>({ taskQueue, ...freezeOptions(maxFreezeMs, retryLost, armed) }),
    release: (maxFreezeMs: number) => proxyActivities<HostActivities>({ taskQueue, ...releaseOptions(maxFreezeMs) }),
  };
}

/** Activities of the workflow worker itself (host registry, definitions), on the shared queue. */
export const control = proxyActivities<ControlActivities>({
  startToCloseTimeout: '30s',
  retry: { maximumAttempts: 5, nonRetryableErrorTypes: [BAD_INPUT] },
});

/** Repository errors a retry cannot fix (backup/errors.ts), plus bad input and a host without a key. */
const REPO_PERMANENT = [
  BAD_INPUT,
  REPO_KEY_MISSING,
  'RepositoryInputError',
  'RepositoryNotFoundError',
  'BucketNotFoundError',
  'StoreAccessDeniedError',
  'WrongKeyError',
  'PointNotFoundError',
];

/** S3 outages are retried with backoff for up to a day. */
const REPO_WRITE_RETRY: RetryPolicy = {
  initialInterval: '2s',
  backoffCoefficient: 2,
  maximumInterval: '1m',
  nonRetryableErrorTypes: REPO_PERMANENT,
};

/** Steps of a restore from the repository: a few attempts; a damaged point is never retried. */
const REPO_RESTORE_RETRY: RetryPolicy = {
  maximumAttempts: 3,
  initialInterval: '1s',
  nonRetryableErrorTypes: [BAD_INPUT, 'DamagedPoint'],
};

/** Removing what a restore from the repository (or a drill) made: patient, every error retried. */
const REPO_CLEANUP: ActivityOptions = {
  startToCloseTimeout: '5m',
  scheduleToCloseTimeout: '1h',
  retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '30s' },
};

/** Presets of the DR workflows (export, restore from the repository, drill), by kind of work. */
export const DR_PRESETS = {
  // One disk: long, heartbeating; a killed worker is noticed within the heartbeat timeout and the retry resumes
  // from the host's checkpoint.
  exportDisk: {
    startToCloseTimeout: '12h',
    heartbeatTimeout: '20s',
    scheduleToCloseTimeout: '24h',
    retry: REPO_WRITE_RETRY,
  },
  exportManifest: { startToCloseTimeout: '2m', scheduleToCloseTimeout: '24h', retry: REPO_WRITE_RETRY },
  // A copy of one point, on the copy worker (admin side): long, heartbeating; a retry resumes (what the copy has is
  // not sent again); damage in the source is not retried. Waits for a copy worker for up to a day.
  copyPoint: {
    startToCloseTimeout: '12h',
    heartbeatTimeout: '1m',
    scheduleToCloseTimeout: '24h',
    retry: { ...REPO_WRITE_RETRY, nonRetryableErrorTypes: [...REPO_PERMANENT, 'CopyFailed'] },
  },
  // A host without a worker is reported within seconds, not waited for.
  restorePlan: { scheduleToStartTimeout: '15s', startToCloseTimeout: '2m', retry: REPO_RESTORE_RETRY },
  // Rebuilding a disk moves its data: heartbeats tell a dead worker from a slow one.
  restoreRebuild: {
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: '6h',
    heartbeatTimeout: '1m',
    retry: REPO_RESTORE_RETRY,
  },
  restoreVm: { scheduleToStartTimeout: '1m', startToCloseTimeout: '2m', retry: REPO_RESTORE_RETRY },
  restoreCleanup: REPO_CLEANUP,
  // Instant restore: starting the serving process (it opens the point) and making the overlays.
  instantServe: {
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: '1h',
    heartbeatTimeout: '1m',
    retry: REPO_RESTORE_RETRY,
  },
  // One hydration step: polls and reports within minutes; after the VMs run it is retried for as long as it takes
  // (a host whose worker is down is waited for: no schedule-to-start bound), never given up on.
  instantHydrate: {
    startToCloseTimeout: '15m',
    heartbeatTimeout: '30s',
    retry: {
      initialInterval: '1s',
      backoffCoefficient: 2,
      maximumInterval: '30s',
      nonRetryableErrorTypes: [BAD_INPUT],
    },
  },
  drillRead: {
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: [BAD_INPUT] },
  },
} satisfies Record<string, ActivityOptions>;

/** A drill's readiness wait: as long as the drill's own timeout, plus a minute. */
export function drillWaitOptions(timeoutMs: number): ActivityOptions {
  return {
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: timeoutMs + 60_000,
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 2, nonRetryableErrorTypes: [BAD_INPUT, 'DrillNotReady'] },
  };
}

/** A host's export activities (one disk, manifests). */
export function onExportHost(hostId: string) {
  const taskQueue = hostTaskQueue(hostId);
  return {
    disk: proxyActivities<ExportActivities>({ taskQueue, ...DR_PRESETS.exportDisk }),
    manifest: proxyActivities<ExportActivities>({ taskQueue, ...DR_PRESETS.exportManifest }),
  };
}

/** The target host's activities of a restore from the repository, per kind of work. */
export function onRestoreTarget(hostId: string) {
  const taskQueue = hostTaskQueue(hostId);
  return {
    plan: proxyActivities<RepoRestoreActivities>({ taskQueue, ...DR_PRESETS.restorePlan }),
    rebuild: proxyActivities<RepoRestoreActivities>({ taskQueue, ...DR_PRESETS.restoreRebuild }),
    vm: proxyActivities<RepoRestoreActivities>({ taskQueue, ...DR_PRESETS.restoreVm }),
    cleanup: proxyActivities<RepoRestoreActivities>({ taskQueue, ...DR_PRESETS.restoreCleanup }),
    serve: proxyActivities<RepoRestoreActivities>({ taskQueue, ...DR_PRESETS.instantServe }),
    hydrate: proxyActivities<RepoRestoreActivities>({ taskQueue, ...DR_PRESETS.instantHydrate }),
  };
}

/** A drill's activities on its target host: reads and the record, the readiness wait, the teardown. */
export function onDrillHost(hostId: string, timeoutMs: number) {
  const taskQueue = hostTaskQueue(hostId);
  return {
    host: proxyActivities<DrillActivities>({ taskQueue, ...DR_PRESETS.drillRead }),
    waiting: proxyActivities<DrillActivities>({ taskQueue, ...drillWaitOptions(timeoutMs) }),
    cleanup: proxyActivities<RepoRestoreActivities>({ taskQueue, ...DR_PRESETS.restoreCleanup }),
  };
}

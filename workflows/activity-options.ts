/**
 * How groupsnap's workflows call activities: one set of presets (timeouts and retries chosen per kind of work) for
 * every workflow, and the proxies of each host's own task queue.
 */
import { ActivityCancellationType, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';
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

/**
 * The freeze: bounded by the freeze deadline, never repeated (a failed freeze is compensated). With `retryLost`
 * (runs from the `freeze-retry-finds-outcome` patch on), an attempt the server timed out is retried: a retried
 * attempt pauses nothing and returns the host's outcome of the first one (activities/host/freeze-window.ts), so a
 * Temporal server outage during the window (heartbeats and the completion lost, the attempt timed out on its
 * restart) does not cost a point the host took. A host whose worker died is still noticed within seconds: nothing
 * polls its queue, and the retry times out before it starts.
 */
export function freezeOptions(maxFreezeMs: number, retryLost = false): ActivityOptions {
  return {
    scheduleToStartTimeout: '5s',
    startToCloseTimeout: maxFreezeMs + 30_000,
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
    freeze: (maxFreezeMs: number, retryLost = false) =>
      proxyActivities<HostActivities>({ taskQueue, ...freezeOptions(maxFreezeMs, retryLost) }),
    release: (maxFreezeMs: number) => proxyActivities<HostActivities>({ taskQueue, ...releaseOptions(maxFreezeMs) }),
  };
}

/** Activities of the workflow worker itself (host registry, definitions), on the shared queue. */
export const control = proxyActivities<ControlActivities>({
  startToCloseTimeout: '30s',
  retry: { maximumAttempts: 5, nonRetryableErrorTypes: [BAD_INPUT] },
});

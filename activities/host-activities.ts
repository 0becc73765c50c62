/**
 * The host side of groupsnap: activities that run on the worker of one hypervisor host, on that host's task queue,
 * plus the in-process deadline timers and crash recovery they share. This file only composes them: each room lives in
 * its own module under `activities/host/`, over one host context (`host/context.ts`, docs/adr/0007-host-modules.md).
 * Each activity checks state first and is safe to retry: a retried call never pauses, snapshots or resumes a VM twice.
 * Activity names are part of recorded histories and of the worker's API: they never change.
 */
import { createDrActivities } from './dr-activities';
import { createBarrierActivities } from './host/barrier';
import { createCatalogActivities } from './host/catalog';
import { createHostContext, type HostActivityDeps } from './host/context';
import { createFreezeActivities } from './host/freeze-window';
import { createLeaseActivities } from './host/leases';
import { createPlanActivities } from './host/plan';
import { recoverHost } from './host/recovery';
import { createThawActivities } from './host/thaw';
import { createUndoActivities, settleBlockJob } from './host/undo';

export type { HostActivityDeps } from './host/context';
export { MIN_FREE_BYTES_PER_OVERLAY } from './host/plan';
export { LEASE_TTL_MS } from './host/leases';
export { UNDO_MEMORY_MS } from './host/undo-memory';

/** The host's activities, its freeze journal, its crash recovery and its shutdown, over one host context. */
export function createHost(deps: HostActivityDeps) {
  const ctx = createHostContext(deps);
  const { hypervisor, hostId, locks, metadata, log } = ctx;
  const activities = {
    ...createPlanActivities(ctx), // planVms, vmStates
    ...createLeaseActivities(ctx), // acquireLocks, releaseLocks
    ...createFreezeActivities(ctx), // freezeVms
    ...createBarrierActivities(ctx), // releaseFreeze
    ...createThawActivities(ctx), // thawVms
    ...createUndoActivities(ctx), // undoSnapshots
    ...createCatalogActivities(ctx), // recordCatalog
    // Snapshot deletion, restores and tags (activities/dr-activities.ts), under the same VM leases.
    ...createDrActivities({
      hypervisor,
      hostId,
      locks,
      metadata,
      log,
      settleBlockJob: (domain, target) => settleBlockJob(ctx, domain, target),
    }),
  };

  return {
    activities,
    journal: ctx.journal,
    /**
     * Finishes freezes a crashed worker left: resumes VMs past their deadline, re-arms timers for the rest. Also
     * counts the VMs the host guard resumed meanwhile.
     */
    recover: () => recoverHost(ctx),
    /** Stops the in-process timers (the host guard still covers open freezes). */
    shutdown: () => ctx.timers.disarmAll(),
  };
}

/** The host activities alone, e.g. for a test worker. */
export function createHostActivities(deps: HostActivityDeps) {
  return createHost(deps).activities;
}

export type HostActivities = ReturnType<typeof createHostActivities>;

/**
 * The host side of groupsnap's administration, one factory over the host's dependencies: inventory, tags, snapshot
 * deletion, restores (as clones or in place) and pins. Every activity checks state first and is safe to retry; bad
 * input fails with a non-retryable BAD_INPUT failure before anything changes. Activity names are part of recorded
 * histories and of the worker's API: they never change.
 */
import { createCloneActivities } from './clone-activities';
import { createDeleteActivities } from './delete-activities';
import { drContext, type DrActivityDeps } from './dr-context';
import { createInPlaceActivities } from './in-place-activities';
import { createInventoryActivities } from './inventory-activities';
import { createPinActivities } from './pin-activities';
import { createTagActivities } from './tag-activities';

export type { DrActivityDeps } from './dr-context';

export function createDrActivities(deps: DrActivityDeps) {
  const ctx = drContext(deps);
  const { hypervisor, hostId, readMeta, updateMeta, log } = ctx;
  return {
    ...createInventoryActivities(ctx),
    ...createTagActivities(ctx),
    ...createDeleteActivities(ctx),
    ...createCloneActivities(ctx),
    ...createInPlaceActivities(ctx),
    // Pins and the release of in-place restore records, through the same per-VM metadata queue.
    ...createPinActivities({ hypervisor, hostId, updateMeta, readMeta, log }),
  };
}

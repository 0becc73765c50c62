/**
 * The shape of the crash-consistency workload (scripts/guest-init.sh), shared by the guests' driver (dev/guest.ts)
 * and the offline checker (dev/consistency-check.ts). Pure: the checker's logic is unit-tested without libvirt.
 */

export type WorkloadRole = 'writer' | 'acker' | 'solo';

/** Records live at sectors 1..RING of each disk (the guest's `gs.ring`); sector 0 is the header. */
export const DEFAULT_RING = 60_000;

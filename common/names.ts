/** Task queue every groupsnap workflow runs on (any worker with the workflow plugin polls it). */
export const WORKFLOW_TASK_QUEUE = 'groupsnap';

/** Task queue of the host worker for `hostId`: activities that touch a VM run on its host's queue. */
export function hostTaskQueue(hostId: string): string {
  return `groupsnap-host/${hostId}`;
}

/** Workflow id of a group snapshot, readable in the Temporal UI. */
export function groupSnapshotWorkflowId(group: string, snapshotId: string): string {
  return `group-snapshot/${group}/${snapshotId}`;
}

/**
 * File-name-safe form of a libvirt domain name (which may contain spaces and more): the one rule for every file a
 * host names after a VM (overlays, manifests, restore layers, export holds).
 */
export function safeFileName(domain: string): string {
  return domain.replace(/[^A-Za-z0-9._-]/g, '_');
}

/** XML namespace of groupsnap's libvirt domain metadata. */
export const METADATA_NAMESPACE = 'https://groupsnap.dev/xmlns/groupsnap/1';
/** Prefix bound to {@link METADATA_NAMESPACE} in the domain XML. */
export const METADATA_KEY = 'groupsnap';

/** Default bound on how long a VM stays paused by groupsnap. Documented in the README. */
export const DEFAULT_MAX_FREEZE_MS = 5_000;
/**
 * Head start the worker's own deadline timer gets before the host guard resumes a VM past its freeze deadline
 * (the guard's default `graceMs`).
 */
export const GUARD_GRACE_MS = 250;

/** Update through which each host's freeze reports its snapshots and waits for the group to be released. */
export const HOST_FROZEN_UPDATE = 'hostFrozen';

/**
 * Update through which each host's freeze reports itself ready to pause (planned again under the leases, nothing
 * paused yet) and waits for the group's go: every host of the group ready (docs/adr/0014, the armed barrier).
 */
export const HOST_ARMED_UPDATE = 'hostArmed';

/**
 * Signal each host's freeze sends once its VMs are paused, for groups over `updateBarrierMaxHosts` hosts in the
 * `group-paused` order; the workflow releases them with the `releaseFreeze` activity on each host.
 */
export const HOST_PAUSED_SIGNAL = 'hostPaused';

/** Default of `updateBarrierMaxHosts`: under Temporal's default of 10 updates in flight per workflow. */
export const DEFAULT_UPDATE_BARRIER_MAX_HOSTS = 8;

/**
 * Default of `shardAboveHosts`: larger groups are frozen through shard child workflows (docs/adr/0014). 64 hosts is
 * the largest group measured through one workflow's barrier (BENCHMARKS.md).
 */
export const DEFAULT_SHARD_ABOVE_HOSTS = 64;

/** Default of `shardHosts`: a shard's hosts wait in its update barrier, under Temporal's default cap of 10. */
export const DEFAULT_SHARD_HOSTS = 8;

/** Signal a shard of a sharded freeze sends its group's workflow: its hosts are all paused (or one failed). */
export const SHARD_REPORT_SIGNAL = 'shardReport';

/** Signal the group's workflow sends each shard: release (`true`) or abort (`false`) its hosts. */
export const SHARD_DECISION_SIGNAL = 'shardDecision';

/** Signal a shard sends its group's workflow in the armed barrier: its hosts are all ready to pause (or one failed). */
export const SHARD_ARMED_SIGNAL = 'shardArmed';

/** Signal the group's workflow sends each shard in the armed barrier: every shard is ready, its hosts may pause. */
export const SHARD_GO_SIGNAL = 'shardGo';

/**
 * A snapshot id `gs-<UTC time>-<suffix>` (e.g. `gs-20261124T101500Z-3fa2c1`): safe in file names, sortable by time.
 * Pure: the caller brings the time and the random suffix (workflows their deterministic ones).
 */
export function formatSnapshotId(time: Date, suffix: string): string {
  const t = time
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `gs-${t}-${suffix}`;
}

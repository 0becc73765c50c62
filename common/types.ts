/** Input and result types shared by the workflow, the host activities, the client library and the CLI. */

export type QuiesceMode = 'none' | 'agent' | 'agent-or-crash';
export const QUIESCE_MODES: readonly QuiesceMode[] = ['none', 'agent', 'agent-or-crash'];

/** A VM by libvirt domain name on the host whose worker manages it. */
export interface VmRef {
  domain: string;
  host: string;
}

export interface GroupSnapshotInput {
  /** Group name, used in ids and search attributes. @default 'adhoc' */
  group?: string;
  vms: VmRef[];
  /** Free text kept in the catalog; must be safe for a file name. */
  label?: string;
  /** @default generated: `gs-<UTC time>-<random>` */
  snapshotId?: string;
  /** Longest time a VM may stay paused by this snapshot. @default 5000 */
  maxFreezeMs?: number;
  /** @default 'none' */
  quiesce?: QuiesceMode;
  /**
   * Largest group, in hosts, released through the workflow's `hostFrozen` update barrier; in larger groups each
   * host signals `hostPaused` and is released by a `releaseFreeze` activity (`thawVms` in the `group-snapshotted`
   * order): one more round trip. Keep it below the server's `history.maxInFlightUpdates` (10 by default). @default 8
   */
  updateBarrierMaxHosts?: number;
  /**
   * Groups over this many hosts are frozen through shard child workflows of `shardHosts` hosts each: every shard runs
   * the update barrier of its hosts and the group's workflow decides the cut once every shard is ready
   * (docs/adr/0014). @default 64
   */
  shardAboveHosts?: number;
  /**
   * Hosts per shard of a sharded freeze; they all wait in the shard's update barrier at once, so keep it under the
   * server's `history.maxInFlightUpdates` (10 by default). @default 8
   */
  shardHosts?: number;
  /**
   * The armed barrier (groups over one host, through the update barrier or shards): every host's freeze first plans
   * again under the leases and reports itself ready, and no host pauses anything before all are ready, so a host slow
   * to start its freeze costs the run time, not freeze time (docs/adr/0014). `false` pauses each host's VMs as soon as
   * its freeze starts, as before; kept to measure the difference (`npm run bench:cluster`). @default true
   */
  armedBarrier?: boolean;
  /** @default 'group-paused' */
  resumeWhen?: ResumeWhen;
}

/**
 * When the VMs of a group resume. `group-paused` (the default): each VM as soon as its own snapshot is taken and
 * every VM of the group is paused (the cut needs no more: see docs/consistency.md); its overlays are made before the
 * pause. `group-snapshotted`: all VMs together once every VM is snapshotted (groupsnap's order before 0.6).
 */
export type ResumeWhen = 'group-paused' | 'group-snapshotted';
export const RESUME_WHEN: readonly ResumeWhen[] = ['group-paused', 'group-snapshotted'];

export type VmPowerState = 'running' | 'paused' | 'shutoff' | 'other';

/** One disk's place in the snapshot: `image` holds the snapshot point, `overlay` is the new active layer. */
export interface DiskSnapshot {
  target: string;
  image: string;
  overlay: string;
}

export type VmOutcome =
  /** Part of the group snapshot. */
  | 'snapshotted'
  /** Snapshot taken, then undone by compensation: disk chain as before, overlays removed. */
  | 'rolled-back'
  /** Compensation could not undo everything at once; see `error` and `cleanupPending`. */
  | 'cleanup-pending'
  /** Never snapshotted (the run failed before reaching it, or its own snapshot failed). */
  | 'not-snapshotted';

export interface VmResult {
  host: string;
  domain: string;
  uuid?: string;
  /** State when groupsnap found it. */
  stateBefore?: VmPowerState;
  /** State after the run, as seen by its host. */
  state?: VmPowerState;
  outcome: VmOutcome;
  /** groupsnap paused it (it was running). */
  pausedByUs: boolean;
  /** Pause issued to resume returned, measured on its host. Absent when it was not paused by us. */
  freezeMs?: number;
  /**
   * Host wall-clock times (ms since the epoch): when this run's pause of the VM had taken effect (the call returned),
   * when its snapshot completed and when its resume returned.
   */
  pausedAtMs?: number;
  snapshottedAtMs?: number;
  resumedAtMs?: number;
  /** When this run asked for the VM's resume: the earliest instant it may have run again. */
  resumeIssuedAtMs?: number;
  /** Resumed by the host's deadline guard instead of the workflow. */
  resumedByGuard?: boolean;
  /** Guest filesystems were frozen through the agent. */
  quiesced?: boolean;
  disks: DiskSnapshot[];
  error?: string;
  /** Overlay files left behind for a follow-up clean-up. */
  cleanupPending?: string[];
}

export type GroupSnapshotStatus = 'completed' | 'failed';

export interface GroupSnapshotResult {
  snapshotId: string;
  workflowId: string;
  group: string;
  label?: string;
  status: GroupSnapshotStatus;
  /** When the cut was taken (ISO 8601), i.e. when the last VM was snapshotted. */
  createdAt?: string;
  /** The instant the last VM of the group was paused (host clock, ms since the epoch): the cut. */
  allPausedAtMs?: number;
  /** The release order this run used. */
  resumeWhen?: ResumeWhen;
  /** First pause issued to last resume returned, across the group. */
  groupFreezeMs: number;
  /** Largest per-VM freeze. */
  maxVmFreezeMs: number;
  vms: VmResult[];
  error?: string;
}

export type SnapshotPhase = 'planning' | 'locking' | 'freezing' | 'cataloguing' | 'compensating' | 'done';

export interface SnapshotProgress {
  phase: SnapshotPhase;
  snapshotId: string;
  vms: {
    domain: string;
    host: string;
    state: 'pending' | 'planned' | 'paused' | 'snapshotted' | 'resumed' | 'rolled-back' | 'failed';
  }[];
}

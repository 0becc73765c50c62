import { dirname, join } from 'node:path';
import type { CatalogEntry } from './catalog';
import { safeFileName } from './names';
import type { DiskSnapshot, QuiesceMode, ResumeWhen, VmPowerState } from './types';

/**
 * What the workflows send to a host's activities and what they report back: the host side's contract, shared by
 * workflows/, activities/ and tests. Pure types plus the one naming rule for overlay files.
 */

/** Phases of a VM in a snapshot run, each logged as one structured line by its host. */
export type VmPhase = 'pause' | 'snapshot' | 'resume' | 'undo';

export interface PlanRequest {
  snapshotId: string;
  domains: string[];
  quiesce: QuiesceMode;
  /** Planning again under the leases: the run (workflow run id) that must hold every VM's lease. */
  leaseOwner?: string;
  /**
   * Under the leases: also make the overlay files of every running or paused VM now, before any host pauses
   * (the `group-paused` order); the freeze then reuses them. All or nothing on this host.
   */
  prepareOverlays?: boolean;
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
  /** Its overlay files were made when it was planned under the lease; the snapshot reuses them. */
  prepared?: boolean;
}

export interface FreezeRequest {
  snapshotId: string;
  vms: PlannedVm[];
  maxFreezeMs: number;
  /**
   * When the VMs may resume: `local`, right after this host's snapshots (the group lives on this host alone);
   * `barrier`, once the workflow releases the group, i.e. every host has reported its snapshots through the
   * workflow's `hostFrozen` update; `thaw`, not in this activity: they stay paused (under their deadline) until
   * the workflow's `thawVms` (for groups over more hosts than the server lets updates wait at once); `signal`, in
   * the `group-paused` order for those groups: the host signals `hostPaused` to the workflow once its VMs are
   * paused, and its VMs resume once the workflow's `releaseFreeze` activity on this host has released the group.
   */
  release: 'local' | 'barrier' | 'thaw' | 'signal';
  /** This host's id, as the workflow's barrier counts hosts. */
  host: string;
  quiesce: QuiesceMode;
  /** The run (workflow run id) that holds the VMs' leases: the freeze refuses to start without them. */
  leaseOwner: string;
  /**
   * `group-paused`: overlays are made before the pause and each VM resumes once its own snapshot is taken and the
   * group is released, which happens when every VM of the group is paused (the barrier is then a "paused" report).
   * Absent or `group-snapshotted`: every VM of the host resumes after all of them are snapshotted (the old order).
   */
  resumeWhen?: ResumeWhen;
  /** With `group-paused`: most snapshots taken at once on this host. @default the worker's (2 unless set) */
  snapshotsInFlight?: number;
  /**
   * The armed barrier (with the `barrier` release): planned again under the leases, before quiescing or pausing
   * anything, the host reports itself ready through the workflow's `hostArmed` update and pauses only on its go
   * (every host of the group ready), so no VM waits paused while another host's freeze is still starting.
   */
  arm?: true;
}

/** The workflow's decision for the `signal` barrier, handed to the freeze waiting on one host. */
export interface ReleaseRequest {
  snapshotId: string;
  /** The run (workflow run id) whose freeze is released. */
  leaseOwner: string;
  /** `true`: every VM of the group is paused, resume; `false`: the run is aborted, resume and take no more snapshots. */
  release: boolean;
}

export interface FreezeVmReport {
  domain: string;
  pausedByUs: boolean;
  snapshotted: boolean;
  quiesced: boolean;
  pausedAtMs?: number;
  /** When the pause call returned: the VM was paused from then on. */
  pauseReturnedAtMs?: number;
  snapshottedAtMs?: number;
  /** When this activity asked for the VM's resume (the VM may run from then on). */
  resumeIssuedAtMs?: number;
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
  /** The run whose snapshot is undone (its workflow run id): it holds (or takes again) the VMs' leases. */
  leaseOwner: string;
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
  /** The run that took the snapshot (workflow run id), holding the VMs' leases. */
  leaseOwner: string;
}

/** The overlay file a snapshot puts over `image`: the only name a host ever creates, or removes, for it. */
export function overlayPath(image: string, domain: string, target: string, snapshotId: string): string {
  return join(dirname(image), `${safeFileName(domain)}.${target}.${snapshotId}.qcow2`);
}

/** Snapshots a host takes at once in the `group-paused` order unless its worker says otherwise. */
export const DEFAULT_SNAPSHOTS_IN_FLIGHT = 2;

/** The worker's `snapshotsInFlight`, refused unless a whole number from 1 to 64. */
export function checkSnapshotsInFlight(n: unknown): number {
  if (!Number.isInteger(n) || (n as number) < 1 || (n as number) > 64)
    throw new RangeError(`snapshots in flight must be a whole number from 1 to 64, got ${JSON.stringify(n)}`);
  return n as number;
}

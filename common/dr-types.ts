/**
 * The contract between groupsnap's control plane (workflows, client, CLI) and the host activities for groups,
 * tags, snapshot deletion and restore. Shared by both sides; pure types.
 */
import type { VmPowerState } from './types';

/** A disk of one group snapshot on one VM: `image` holds the snapshot's content (read-only while kept). */
export interface SnapshotDisk {
  target: string;
  image: string;
  /** The layer created on top of `image` by the snapshot (the next snapshot's image, or the active layer). */
  overlay: string;
}

/** One group snapshot as recorded on a VM (in its libvirt metadata). */
export interface VmSnapshotRecord {
  snapshotId: string;
  group: string;
  label?: string;
  createdAt: string;
  /**
   * A deletion started and has not finished (some disks may already be merged out and are then no longer listed):
   * the snapshot cannot be restored; running the deletion again finishes it.
   */
  deleting?: boolean;
  /**
   * Pinned by a user (`groupsnap snapshot pin`): retention never deletes it, and deleting it is refused until it is
   * unpinned.
   */
  pinned?: boolean;
  disks: SnapshotDisk[];
}

/** A VM restored as a clone from one of its snapshots; its overlays sit on the snapshot's images. */
export interface CloneRecord {
  /** The clone's domain name. */
  name: string;
  snapshotId: string;
  createdAt: string;
  disks: { target: string; image: string; overlay: string }[];
}

/** An in-place restore of a VM: each disk moved from `discarded` (the old active layer) to a new overlay. */
export interface InPlaceRestoreRecord {
  restoreId: string;
  snapshotId: string;
  createdAt: string;
  /** Power state of the VM before the restore: what `undoInPlace` returns it to. */
  stateBefore?: VmPowerState;
  disks: { target: string; image: string; overlay: string; discarded: string }[];
}

/** A VM as listed by its host: name, state, tags and groupsnap's catalog on it. */
export interface HostVm {
  domain: string;
  uuid: string;
  state: VmPowerState;
  tags: string[];
  snapshots: VmSnapshotRecord[];
  clones: CloneRecord[];
  restores: InPlaceRestoreRecord[];
}

export interface SetTagsRequest {
  domain: string;
  add?: string[];
  remove?: string[];
}

export interface DeleteSnapshotRequest {
  /** Owner of the VM lease taken for the merge: the deleting workflow's run id. */
  owner: string;
  snapshotId: string;
  domain: string;
}

export interface DeleteVmReport {
  domain: string;
  /** `deleted`: merged out and removed now; `absent`: not (or no longer) in the catalog, nothing to do. */
  outcome: 'deleted' | 'absent' | 'failed';
  /** Files removed from disk. */
  removed: string[];
  error?: string;
}

export interface CloneVmRequest {
  snapshotId: string;
  domain: string;
  /** New domain name (validated as file-name safe by the caller). */
  cloneName: string;
  /** Start the clone once defined. @default true */
  start?: boolean;
  /** The restore run holding the source VM's lease (its workflow run id): renewed while the clone is made. */
  leaseOwner?: string;
  /**
   * Socket-link ports (UDP/TCP/multicast `<interface>`s) mapped to fresh ones, the same map for every clone of the
   * restore (hypervisor/socket-links.ts); without it the clone keeps its source's ports (runs before the fix).
   */
  socketPorts?: Record<string, number>;
}

export interface ChooseSocketPortsRequest {
  /** VMs of this host being cloned. */
  domains: string[];
  /** Fresh ports already chosen on other hosts of the same restore. */
  avoid?: number[];
}

export interface CloneVmReport {
  domain: string;
  clone: string;
  uuid: string;
  state: VmPowerState;
  disks: { target: string; image: string; overlay: string }[];
}

export interface RemoveCloneRequest {
  /** The VM the clone was made from (its catalog holds the clone record). */
  domain: string;
  /** The clone's name. */
  clone: string;
}

export interface InPlaceRequest {
  restoreId: string;
  snapshotId: string;
  domain: string;
  /** The restore run holding the VM's lease (its workflow run id): checked, and renewed while the VM is restored. */
  leaseOwner?: string;
}

export interface InPlaceReport {
  domain: string;
  stateBefore: VmPowerState;
  state: VmPowerState;
  disks: { target: string; image: string; overlay: string; discarded: string }[];
}

export interface UndoInPlaceRequest {
  restoreId: string;
  domain: string;
}

export interface PinSnapshotRequest {
  domain: string;
  snapshotId: string;
  /** true: pin; false: unpin. */
  pinned: boolean;
}

export interface PinSnapshotReport {
  domain: string;
  snapshotId: string;
  pinned: boolean;
  /** false when the snapshot already was as asked. */
  changed: boolean;
}

export interface ReleaseInPlaceReport {
  domain: string;
  restoreId: string;
  /** `absent`: the VM has no record of that restore (already released, or undone). */
  outcome: 'released' | 'absent';
  /** Discarded layers removed from disk. */
  removed: string[];
  /** Discarded layers kept because a snapshot (or another record) still uses them. */
  kept: string[];
}

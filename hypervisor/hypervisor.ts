/** What groupsnap needs from a hypervisor host: one small interface, one libvirt implementation, one fake. */
import type { ImageInfo, ImageRange } from './images';

export type DomainState = 'running' | 'paused' | 'shutoff' | 'other';

export interface DiskSpec {
  /** Guest device name, e.g. `vda`. */
  target: string;
  device: string;
  /** libvirt disk type: `file`, `block`, `network`, `volume`, ... */
  type: string;
  /** Image format from `<driver type>`, e.g. `qcow2`, `raw`. */
  format: string | undefined;
  /** Active image path (for `file` disks). */
  source: string | undefined;
  readonly: boolean;
}

export interface DomainDescription {
  name: string;
  uuid: string;
  state: DomainState;
  persistent: boolean;
  disks: DiskSpec[];
  /** The domain has a `org.qemu.guest_agent.0` channel. */
  hasGuestAgent: boolean;
}

/** A domain as listed by its host. */
export interface DomainSummary {
  name: string;
  uuid: string;
  state: DomainState;
}

export type { ImageInfo } from './images';

export interface OverlaySpec {
  target: string;
  /** New overlay file; after the snapshot it is the active image and the old active image is its backing file. */
  file: string;
}

/** A block job running on a disk (e.g. a commit a dead worker left behind). */
export interface BlockJob {
  /**
   * `active-commit`: merging the active layer (ends with a pivot); `commit`: a layer below it; `pull`: copying the
   * backing chain's data into the active layer (ends by itself, dropping the backing); else `other`.
   */
  type: 'commit' | 'active-commit' | 'pull' | 'other';
  /** All data copied: an active commit can pivot now. */
  ready: boolean;
  cur: number;
  end: number;
}

/** A disk's backing served over NBD on a unix socket (an instant restore's export). */
export interface NbdBacking {
  socket: string;
  exportName: string;
}

export interface Hypervisor {
  /** A URI-like description for logs. */
  readonly uri: string;
  describe(domain: string): Promise<DomainDescription>;
  state(domain: string): Promise<DomainState>;
  suspend(domain: string): Promise<void>;
  resume(domain: string): Promise<void>;
  /**
   * Atomic, disk-only, external snapshot of the listed disks (all switch to their overlays or none do);
   * disks named in `skip` (e.g. CD-ROMs) are left out of it. With `reuse`, each overlay file already exists, made
   * beforehand by {@link createOverlay} over the disk's active image (libvirt's `REUSE_EXT`): the snapshot then
   * only switches the disks over, which keeps the image creation out of a freeze window.
   */
  snapshotDisks(domain: string, overlays: OverlaySpec[], skip?: string[], options?: { reuse?: boolean }): Promise<void>;
  /**
   * Merges the active overlay of `target` into `base`, its immediate backing image, and pivots the VM back onto
   * `base`. Layers below `base` (older snapshots) are left as they are.
   */
  commitActive(domain: string, target: string, base: string): Promise<void>;
  /** The block job running on disk `target`, or undefined when there is none. */
  blockJob(domain: string, target: string): Promise<BlockJob | undefined>;
  /**
   * Ends the block job on `target` and waits until it is gone: `pivot` switches the disk to the base of a ready
   * active commit (finishing it); `abort` cancels the job, leaving the disk on the layer it was on.
   */
  endBlockJob(domain: string, target: string, how: 'pivot' | 'abort'): Promise<void>;
  /**
   * Starts a block pull of `target` (virDomainBlockPull): QEMU copies the data of the disk's backing chain into its
   * active image and drops the backing when done; the job ends by itself (follow it with {@link blockJob}).
   * `bandwidthMiB` limits it (MiB/s; default unlimited).
   */
  blockPull(domain: string, target: string, options?: { bandwidthMiB?: number }): Promise<void>;
  /** The NBD export the running VM's disk `target` is backed by (live definition), or undefined when none. */
  nbdBacking(domain: string, target: string): Promise<NbdBacking | undefined>;
  /** Whether a paused VM was paused by QEMU after a disk I/O error (the stop error policy), not by a caller. */
  pausedByIoError(domain: string): Promise<boolean>;
  /**
   * Saves a running or paused VM's state to libvirt's managed save image and stops its QEMU; the next
   * {@link start} restores it (paused when `start` says so) with every disk's backing chain opened afresh.
   */
  managedSave(domain: string): Promise<void>;
  /**
   * New qcow2 overlay `file` (`virtualSize` bytes) whose backing is the raw NBD export `backing`; nothing connects
   * to the export while it is made. The `zeros` ranges (the point's chunks without data) are written as zero
   * clusters in the overlay itself: reads of them never reach the export, and a pull or rebase skips them. The
   * caller makes sure `file` does not exist yet.
   */
  createNbdOverlay(file: string, backing: NbdBacking, virtualSize: number, zeros?: ImageRange[]): Promise<void>;
  /**
   * Copies everything the backing chain of `file` shows into it and drops its backing (a safe `qemu-img rebase`
   * onto nothing): offline hydration, for a file no running QEMU has open.
   */
  hydrateImage(file: string): Promise<void>;
  /** For a shut-off VM: points disks at other files in the persistent definition. */
  redefineDiskSources(domain: string, sources: { target: string; from: string; to: string }[]): Promise<void>;
  /** groupsnap's metadata element on the VM (XML), or undefined when there is none. */
  getMetadata(domain: string): Promise<string | undefined>;
  setMetadata(domain: string, xml: string): Promise<void>;
  /** Every domain defined or running on the host. */
  listDomains(): Promise<DomainSummary[]>;
  /**
   * Non-active block commit of a running or paused VM: merges `top`, a layer below the active one, into `base`, its
   * immediate backing image, and waits for the job to end. QEMU rewrites the backing file of the layer above `top`
   * to `base`; `top` is then out of the chain (the file is left in place).
   */
  commitLayer(domain: string, target: string, top: string, base: string): Promise<void>;
  /** The persistent (inactive) definition, secure parts included. */
  domainXml(domain: string): Promise<string>;
  /** Defines a new persistent domain (or redefines one of the same name and uuid). */
  defineDomain(xml: string): Promise<{ name: string; uuid: string }>;
  /** Starts a shut-off domain, optionally with its vCPUs paused. */
  start(domain: string, options?: { paused?: boolean }): Promise<void>;
  /** Hard stop (power off) of a running or paused domain. */
  destroy(domain: string): Promise<void>;
  /** Removes a shut-off domain's definition (and its NVRAM file: only used for VMs groupsnap created). */
  undefine(domain: string): Promise<void>;
  /** New qcow2 overlay `file` over `backing` (see images.ts). */
  createOverlay(file: string, backing: string, backingFormat: string): Promise<void>;
  /** Offline commit of `top` into `base`, for files no running VM has open. */
  commitImage(top: string, base: string): Promise<void>;
  /** Unsafe rebase (`qemu-img rebase -u`): rewrites `file`'s backing to `newBacking`, copying nothing. */
  rebaseImage(file: string, newBacking: string, backingFormat: string): Promise<void>;
  /** @throws ImageNotFoundError when the file does not exist */
  imageInfo(file: string): Promise<ImageInfo>;
  /** Removes an image file (no error when already gone). */
  removeImage(file: string): Promise<void>;
  /** Freezes guest filesystems through the guest agent; returns how many were frozen. */
  fsFreeze(domain: string): Promise<number>;
  fsThaw(domain: string): Promise<number>;
  close(): Promise<void>;
}

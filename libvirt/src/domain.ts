import { BlockCommitFlags, BlockJobAbortFlags, DomainStateName, domainStateName, ErrorCodes } from './constants';
import { BlockJobError, LibvirtError, mapped } from './errors';
import type { NativeDomain } from './native';

export interface DomainState {
  state: DomainStateName;
  /** The numeric virDomainState. */
  stateCode: number;
  /** Why the domain is in that state: the virDomain<State>Reason value for `state`. */
  reason: number;
}

export interface DomainInfo {
  state: DomainStateName;
  maxMemKiB: number;
  memoryKiB: number;
  nrVirtCpu: number;
  cpuTimeNs: bigint;
}

export interface BlockJobInfo {
  /** virDomainBlockJobType (3 = commit, 4 = active commit). */
  type: number;
  bandwidth: number;
  cur: number;
  end: number;
}

export interface CommitProgress {
  cur: number;
  end: number;
}

export interface CommitOptions {
  /** Target of the disk, e.g. 'vda'. */
  disk: string;
  /** The image to commit into; default: the backing image of `top`. */
  base?: string;
  /** The image to commit from, for a commit of a middle layer; default: the layer above `base`. */
  top?: string;
  /** Commit the active (top) layer; the job ends with a pivot onto `base`. @default false */
  active?: boolean;
  /** For an active commit: pivot when ready. If false, the job is left ready (mirroring) for the caller. @default true */
  pivot?: boolean;
  /** Called with the job's progress after each poll. */
  onProgress?: (progress: CommitProgress) => void;
  /** @default 50 */
  pollMs?: number;
  /** Bandwidth limit in MiB/s (0 = unlimited). @default 0 */
  bandwidth?: number;
  /** Further virDomainBlockCommitFlags, e.g. BlockCommitFlags.DELETE. */
  flags?: number;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * A libvirt domain (VM). Obtained from `Connection.lookupByName`, `lookupByUUID` or `defineXML`. The
 * underlying virDomainPtr is freed by `free()` or when this object is garbage-collected.
 */
export class Domain {
  /** The domain's name, read once when this handle was obtained. */
  readonly name: string;
  /** The domain's UUID, read once when this handle was obtained. */
  readonly uuid: string;

  /** @internal */
  constructor(private readonly native: NativeDomain) {
    this.name = native.name;
    this.uuid = native.uuid;
  }

  private call<T>(operation: string, fn: (d: NativeDomain) => Promise<T>): Promise<T> {
    return mapped(operation, this.name, () => fn(this.native));
  }

  /** Releases the libvirt handle now instead of at garbage collection. Later calls reject. */
  free(): void {
    this.native.free();
  }

  /** The domain's XML description. @param flags DomainXMLFlags */
  xml(flags = 0): Promise<string> {
    return this.call('xml', (d) => d.xml(flags));
  }

  async state(): Promise<DomainState> {
    const s = await this.call('state', (d) => d.state());
    return { state: domainStateName(s.state), stateCode: s.state, reason: s.reason };
  }

  async info(): Promise<DomainInfo> {
    const i = await this.call('info', (d) => d.info());
    return { ...i, state: domainStateName(i.state) };
  }

  isActive(): Promise<boolean> {
    return this.call('isActive', (d) => d.isActive());
  }

  isPersistent(): Promise<boolean> {
    return this.call('isPersistent', (d) => d.isPersistent());
  }

  /**
   * Pauses the vCPUs; QEMU then drains and flushes the block devices.
   * @throws OperationInvalidError if the domain is not running (e.g. already paused or shut off)
   */
  suspend(): Promise<void> {
    return this.call('suspend', (d) => d.suspend());
  }

  /** @throws OperationInvalidError if the domain is not paused */
  resume(): Promise<void> {
    return this.call('resume', (d) => d.resume());
  }

  /** Starts a defined, shut-off domain. */
  create(flags = 0): Promise<void> {
    return this.call('create', (d) => d.create(flags));
  }

  /** Powers the domain off at once. @param flags DestroyFlags */
  destroy(flags = 0): Promise<void> {
    return this.call('destroy', (d) => d.destroy(flags));
  }

  /** Removes the persistent definition. @param flags UndefineFlags, e.g. SNAPSHOTS_METADATA | NVRAM */
  undefine(flags = 0): Promise<void> {
    return this.call('undefine', (d) => d.undefine(flags));
  }

  /**
   * Takes a snapshot described by `<domainsnapshot>` XML and returns its name (libvirt generates one if the XML
   * has none; with NO_METADATA the name is not kept).
   * @param flags SnapshotCreateFlags, e.g. DISK_ONLY | ATOMIC | NO_METADATA
   * @example
   * await dom.snapshotCreateXML(
   *   `<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='/var/lib/x/vda.s1.qcow2'/></disk></disks></domainsnapshot>`,
   *   DISK_ONLY | ATOMIC | NO_METADATA,
   * );
   */
  snapshotCreateXML(xml: string, flags = 0): Promise<string> {
    return this.call('snapshotCreateXML', (d) => d.snapshotCreateXML(xml, flags));
  }

  /** Names of the snapshots libvirt keeps metadata for. */
  snapshotList(flags = 0): Promise<string[]> {
    return this.call('snapshotList', (d) => d.snapshotList(flags));
  }

  /** Looks a snapshot up by name and returns its XML. @throws SnapshotNotFoundError */
  snapshotXML(name: string, flags = 0): Promise<string> {
    return this.call('snapshotXML', (d) => d.snapshotXML(name, flags));
  }

  /** Deletes a snapshot by name. @param flags SnapshotDeleteFlags @throws SnapshotNotFoundError */
  snapshotDelete(name: string, flags = 0): Promise<void> {
    return this.call('snapshotDelete', (d) => d.snapshotDelete(name, flags));
  }

  /**
   * Starts a block commit job (virDomainBlockCommit). Prefer `commit()`, which also waits for it.
   * @param flags BlockCommitFlags
   */
  blockCommit(disk: string, base: string | null, top: string | null, bandwidth = 0, flags = 0): Promise<void> {
    return this.call('blockCommit', (d) => d.blockCommit(disk, base, top, bandwidth, flags));
  }

  /** The block job running on `disk`, or null if there is none. */
  blockJobInfo(disk: string): Promise<BlockJobInfo | null> {
    return this.call('blockJobInfo', (d) => d.blockJobInfo(disk));
  }

  /** Ends the block job on `disk`; with BlockJobAbortFlags.PIVOT, switches a ready active commit to its base. */
  blockJobAbort(disk: string, flags = 0): Promise<void> {
    return this.call('blockJobAbort', (d) => d.blockJobAbort(disk, flags));
  }

  /**
   * Starts a block pull (stream) job (virDomainBlockPull): copies the data of `disk`'s backing chain into its active
   * image, then drops the backing (it finishes by itself; follow it with `blockJobInfo`).
   * @param bandwidth MiB/s, 0 = unlimited
   */
  blockPull(disk: string, bandwidth = 0, flags = 0): Promise<void> {
    return this.call('blockPull', (d) => d.blockPull(disk, bandwidth, flags));
  }

  /**
   * Saves the running or paused domain's memory and device state to libvirt's managed save image and stops it
   * (virDomainManagedSave); the next `create()` restores from it (and re-opens every disk's backing chain).
   * @param flags ManagedSaveFlags
   */
  managedSave(flags = 0): Promise<void> {
    return this.call('managedSave', (d) => d.managedSave(flags));
  }

  /** Whether the domain has a managed save image (the next `create()` restores from it). */
  hasManagedSaveImage(): Promise<boolean> {
    return this.call('hasManagedSaveImage', (d) => d.hasManagedSaveImage());
  }

  /** Removes the domain's managed save image (the next `create()` boots afresh). */
  managedSaveRemove(): Promise<void> {
    return this.call('managedSaveRemove', (d) => d.managedSaveRemove());
  }

  /**
   * Commits a layer of `disk`'s backing chain into its base and waits for the job to finish. A middle layer
   * (`top` below the active image) just completes; the active layer (`active: true`) is pivoted onto `base`
   * once libvirt reports it ready (cur == end).
   * @throws BlockJobError if the job cannot start, vanishes before it is ready, or leaves `top` in the chain
   */
  async commit(options: CommitOptions): Promise<void> {
    const { disk, base, top, active = false, pivot = true, onProgress, pollMs = 50, bandwidth = 0 } = options;
    const flags = (options.flags ?? 0) | (active ? BlockCommitFlags.ACTIVE : 0);
    await this.call('commit', (d) => d.blockCommit(disk, base ?? null, top ?? null, bandwidth, flags));
    for (;;) {
      const job = await this.call('commit', (d) => d.blockJobInfo(disk));
      if (job === null) break;
      onProgress?.({ cur: job.cur, end: job.end });
      // cur == end means the data is copied; QEMU may still report the job not ready for a moment
      // (libvirt: BLOCK_COPY_ACTIVE "not ready for pivot yet"), so the pivot is retried on the next poll.
      if (active && job.end > 0 && job.cur === job.end) {
        if (!pivot) return;
        try {
          await this.call('commit', (d) => d.blockJobAbort(disk, BlockJobAbortFlags.PIVOT));
          return;
        } catch (err) {
          if (!(err instanceof LibvirtError && err.code === ErrorCodes.BLOCK_COPY_ACTIVE)) throw err;
        }
      }
      await sleep(pollMs);
    }
    if (active) {
      throw new BlockJobError(`commit '${this.name}': active commit of ${disk} ended before it was ready`, {
        code: 0,
        errorDomain: 0,
        vmName: this.name,
        operation: 'commit',
      });
    }
    // A finished and a failed job both just disappear; the chain tells them apart.
    if (top !== undefined) {
      const xml = await this.call('commit', (d) => d.xml());
      if (xml.includes(`'${top}'`) || xml.includes(`"${top}"`)) {
        throw new BlockJobError(`commit '${this.name}': ${top} is still in the backing chain of ${disk}`, {
          code: 0,
          errorDomain: 0,
          vmName: this.name,
          operation: 'commit',
        });
      }
    }
  }

  /**
   * Stores `xml` as the domain's metadata element under `namespaceUri` (with prefix `key`). A running persistent
   * domain gets it live and in its saved config; a shut-off domain in its config.
   * @example await dom.setMetadata('https://groupsnap.dev/group', 'gs', '<group name="db"/>')
   */
  setMetadata(namespaceUri: string, key: string, xml: string): Promise<void> {
    return this.call('setMetadata', (d) => d.setMetadata(namespaceUri, key, xml));
  }

  /** Removes the metadata element under `namespaceUri`, as `setMetadata` would write it. */
  removeMetadata(namespaceUri: string): Promise<void> {
    return this.call('removeMetadata', (d) => d.setMetadata(namespaceUri, null, null));
  }

  /**
   * The metadata element under `namespaceUri` (live for a running domain, else config).
   * @throws MetadataNotFoundError if there is none
   */
  getMetadata(namespaceUri: string): Promise<string> {
    return this.call('getMetadata', (d) => d.getMetadata(namespaceUri));
  }

  /**
   * Freezes guest filesystems through the guest agent; returns how many were frozen.
   * @throws GuestAgentUnavailableError if the agent is not configured or not answering
   */
  fsFreeze(mountpoints?: string[]): Promise<number> {
    return this.call('fsFreeze', (d) => d.fsFreeze(mountpoints));
  }

  /** Thaws guest filesystems; returns how many were thawed. @throws GuestAgentUnavailableError */
  fsThaw(mountpoints?: string[]): Promise<number> {
    return this.call('fsThaw', (d) => d.fsThaw(mountpoints));
  }
}

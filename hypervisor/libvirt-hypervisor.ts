import * as libvirt from '@groupsnap/libvirt';
import { METADATA_KEY, METADATA_NAMESPACE } from '../common/names';
import { diskNamesFile, diskNbdBacking, diskOnlySnapshotXml, parseDomainXml, retargetDiskSource } from './domain-xml';
import {
  DomainNotFoundError,
  GuestAgentUnavailableError,
  HypervisorConnectionError,
  HypervisorError,
  InvalidStateError,
} from './errors';
import type {
  BlockJob,
  DomainDescription,
  DomainState,
  DomainSummary,
  Hypervisor,
  ImageInfo,
  NbdBacking,
  OverlaySpec,
} from './hypervisor';
import * as images from './images';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** virDomainBlockJobType: a commit of a layer below the active one, and an active-layer commit. */
const COMMIT = 3;
const ACTIVE_COMMIT = 4;
const PULL = 1;

/** virDomainCreateFlags: start with the vCPUs paused. */
const START_PAUSED = 1;

const SNAPSHOT_FLAGS =
  libvirt.SnapshotCreateFlags.DISK_ONLY | libvirt.SnapshotCreateFlags.ATOMIC | libvirt.SnapshotCreateFlags.NO_METADATA;

function powerState(state: string): DomainState {
  switch (state) {
    case 'running':
    case 'blocked':
      return 'running';
    case 'paused':
      return 'paused';
    case 'shutoff':
      return 'shutoff';
    default:
      return 'other';
  }
}

/** libvirt's errors, translated once, here, into the few the rest of groupsnap handles. */
function translate(err: unknown, domain?: string): Error {
  if (err instanceof libvirt.DomainNotFoundError) return new DomainNotFoundError(domain ?? '?', err.message);
  if (err instanceof libvirt.OperationInvalidError) return new InvalidStateError(domain ?? '?', err.message);
  if (err instanceof libvirt.GuestAgentUnavailableError)
    return new GuestAgentUnavailableError(domain ?? '?', err.message);
  if (err instanceof libvirt.HypervisorConnectionError) return new HypervisorConnectionError(err.message);
  if (err instanceof libvirt.LibvirtError) return new HypervisorError(err.message, domain, err.code);
  return err instanceof Error ? err : new Error(String(err));
}

/** The {@link Hypervisor} of one host, over the project's libvirt binding and one persistent connection. */
export class LibvirtHypervisor implements Hypervisor {
  /** Domain handles by name: lookups cost a daemon round trip, which the freeze window should not pay. */
  private readonly handles = new Map<string, libvirt.Domain>();

  /** Set when a call failed because the daemon was unreachable: the next call opens a new connection first. */
  private broken = false;
  private reconnecting: Promise<void> | undefined;
  private closing = false;

  private constructor(
    private conn: libvirt.Connection,
    readonly uri: string,
  ) {}

  /**
   * Opens a new connection when the last one was lost (libvirtd restarted). Calls are never repeated by this class:
   * the call that met the lost connection fails, and the caller's own retry (e.g. a deadline timer's) gets the new
   * connection, so a pause or snapshot whose reply was lost is never issued twice behind its back.
   */
  private async ensureConnected(): Promise<void> {
    if (!this.broken || this.closing) return;
    this.reconnecting ??= (async () => {
      try {
        const fresh = await libvirt.open(this.uri);
        const old = this.conn;
        this.conn = fresh;
        this.handles.clear();
        this.broken = false;
        old.close().catch(() => undefined);
      } catch (err) {
        throw new HypervisorConnectionError(`cannot reconnect to libvirt at ${this.uri}: ${(err as Error).message}`);
      } finally {
        this.reconnecting = undefined;
      }
    })();
    await this.reconnecting;
  }

  private noteError(err: unknown): void {
    if (err instanceof libvirt.HypervisorConnectionError || this.conn.closed) this.broken = true;
  }

  /** @throws HypervisorConnectionError when libvirt cannot be reached at `uri`. */
  static async open(uri: string): Promise<LibvirtHypervisor> {
    try {
      return new LibvirtHypervisor(await libvirt.open(uri), uri);
    } catch (err) {
      throw new HypervisorConnectionError(`cannot connect to libvirt at ${uri}: ${(err as Error).message}`);
    }
  }

  get connection(): libvirt.Connection {
    return this.conn;
  }

  hostname(): Promise<string> {
    return this.conn.hostname();
  }

  private async withDomain<T>(name: string, fn: (d: libvirt.Domain) => Promise<T>): Promise<T> {
    await this.ensureConnected();
    let handle = this.handles.get(name);
    try {
      if (handle) {
        try {
          return await fn(handle);
        } catch (err) {
          // A VM undefined and defined again under the same name has a new handle.
          if (!(err instanceof libvirt.DomainNotFoundError)) throw err;
          this.handles.delete(name);
        }
      }
      handle = await this.conn.lookupByName(name);
      this.handles.set(name, handle);
      return await fn(handle);
    } catch (err) {
      this.noteError(err);
      throw translate(err, name);
    }
  }

  describe(domain: string): Promise<DomainDescription> {
    return this.withDomain(domain, async (d) => {
      const [xml, state, persistent] = await Promise.all([d.xml(), d.state(), d.isPersistent()]);
      return { name: d.name, uuid: d.uuid, state: powerState(state.state), persistent, ...parseDomainXml(xml) };
    });
  }

  state(domain: string): Promise<DomainState> {
    return this.withDomain(domain, async (d) => powerState((await d.state()).state));
  }

  suspend(domain: string): Promise<void> {
    return this.withDomain(domain, (d) => d.suspend());
  }

  resume(domain: string): Promise<void> {
    return this.withDomain(domain, (d) => d.resume());
  }

  snapshotDisks(
    domain: string,
    overlays: OverlaySpec[],
    skip: string[] = [],
    options: { reuse?: boolean } = {},
  ): Promise<void> {
    const xml = diskOnlySnapshotXml(`groupsnap-${Date.now()}`, overlays, skip);
    const flags = SNAPSHOT_FLAGS | (options.reuse ? libvirt.SnapshotCreateFlags.REUSE_EXT : 0);
    return this.withDomain(domain, async (d) => {
      await d.snapshotCreateXML(xml, flags);
    });
  }

  commitActive(domain: string, target: string, base: string): Promise<void> {
    // An explicit base: libvirt's default is the bottom of the chain, which would merge older snapshots too.
    return this.withDomain(domain, (d) => d.commit({ disk: target, base, active: true, pivot: true }));
  }

  blockJob(domain: string, target: string): Promise<BlockJob | undefined> {
    return this.withDomain(domain, async (d) => {
      const info = await d.blockJobInfo(target);
      if (!info) return undefined;
      const type =
        info.type === ACTIVE_COMMIT
          ? 'active-commit'
          : info.type === COMMIT
            ? 'commit'
            : info.type === PULL
              ? 'pull'
              : 'other';
      return { type, ready: info.end > 0 && info.cur === info.end, cur: info.cur, end: info.end };
    });
  }

  endBlockJob(domain: string, target: string, how: 'pivot' | 'abort'): Promise<void> {
    return this.withDomain(domain, async (d) => {
      await d.blockJobAbort(target, how === 'pivot' ? libvirt.BlockJobAbortFlags.PIVOT : 0);
      const deadline = Date.now() + 30_000;
      while ((await d.blockJobInfo(target)) !== null) {
        if (Date.now() > deadline) throw new HypervisorError(`block job on ${target} did not end`, domain);
        await sleep(50);
      }
    });
  }

  blockPull(domain: string, target: string, options: { bandwidthMiB?: number } = {}): Promise<void> {
    return this.withDomain(domain, (d) => d.blockPull(target, options.bandwidthMiB ?? 0));
  }

  nbdBacking(domain: string, target: string): Promise<NbdBacking | undefined> {
    return this.withDomain(domain, async (d) => diskNbdBacking(await d.xml(), target));
  }

  pausedByIoError(domain: string): Promise<boolean> {
    return this.withDomain(domain, async (d) => {
      const s = await d.state();
      return s.state === 'paused' && s.reason === libvirt.PausedReason.IOERROR;
    });
  }

  managedSave(domain: string): Promise<void> {
    return this.withDomain(domain, (d) => d.managedSave(libvirt.ManagedSaveFlags.PAUSED));
  }

  hydrateImage(file: string): Promise<void> {
    return images.hydrateImage(file);
  }

  createNbdOverlay(file: string, backing: NbdBacking, virtualSize: number, zeros?: images.ImageRange[]): Promise<void> {
    return images.createNbdOverlay(file, backing.socket, backing.exportName, virtualSize, zeros);
  }

  redefineDiskSources(domain: string, sources: { target: string; from: string; to: string }[]): Promise<void> {
    return this.withDomain(domain, async (d) => {
      let xml = await d.xml(libvirt.DomainXMLFlags.INACTIVE | libvirt.DomainXMLFlags.SECURE);
      for (const s of sources) xml = retargetDiskSource(xml, s.target, s.from, s.to);
      const redefined = await this.conn.defineXML(xml);
      this.handles.set(domain, redefined);
    });
  }

  async listDomains(): Promise<DomainSummary[]> {
    await this.ensureConnected();
    try {
      const all = await this.conn.listAllDomains();
      return all.map((d) => ({ name: d.name, uuid: d.uuid, state: powerState(d.state) }));
    } catch (err) {
      this.noteError(err);
      throw translate(err);
    }
  }

  commitLayer(domain: string, target: string, top: string, base: string): Promise<void> {
    return this.withDomain(domain, async (d) => {
      await d.blockCommit(target, base, top, 0, 0);
      while ((await d.blockJobInfo(target)) !== null) await sleep(50);
      // The job is gone before libvirt has processed QEMU's completion event (Domain.commit's own check races with
      // it): the live chain catches up shortly after; a failed job leaves `top` in it.
      const deadline = Date.now() + 10_000;
      while (diskNamesFile(await d.xml(), target, top)) {
        if (Date.now() > deadline)
          throw new HypervisorError(`block commit of ${top} into ${base} ended with ${top} still in the chain`, domain);
        await sleep(50);
      }
    });
  }

  domainXml(domain: string): Promise<string> {
    return this.withDomain(domain, (d) => d.xml(libvirt.DomainXMLFlags.INACTIVE | libvirt.DomainXMLFlags.SECURE));
  }

  async defineDomain(xml: string): Promise<{ name: string; uuid: string }> {
    await this.ensureConnected();
    try {
      const d = await this.conn.defineXML(xml);
      this.handles.set(d.name, d);
      return { name: d.name, uuid: d.uuid };
    } catch (err) {
      this.noteError(err);
      throw translate(err);
    }
  }

  start(domain: string, options: { paused?: boolean } = {}): Promise<void> {
    return this.withDomain(domain, (d) => d.create(options.paused ? START_PAUSED : 0));
  }

  destroy(domain: string): Promise<void> {
    return this.withDomain(domain, (d) => d.destroy());
  }

  async undefine(domain: string): Promise<void> {
    await this.withDomain(domain, (d) =>
      d.undefine(libvirt.UndefineFlags.NVRAM | libvirt.UndefineFlags.SNAPSHOTS_METADATA),
    );
    this.handles.get(domain)?.free();
    this.handles.delete(domain);
  }

  createOverlay(file: string, backing: string, backingFormat: string): Promise<void> {
    return images.createOverlay(file, backing, backingFormat);
  }

  commitImage(top: string, base: string): Promise<void> {
    return images.commitImage(top, base);
  }

  rebaseImage(file: string, newBacking: string, backingFormat: string): Promise<void> {
    return images.rebaseImage(file, newBacking, backingFormat);
  }

  imageInfo(file: string): Promise<ImageInfo> {
    return images.imageInfo(file);
  }

  removeImage(file: string): Promise<void> {
    return images.removeImage(file);
  }

  getMetadata(domain: string): Promise<string | undefined> {
    return this.withDomain(domain, async (d) => {
      try {
        return await d.getMetadata(METADATA_NAMESPACE);
      } catch (err) {
        if (err instanceof libvirt.MetadataNotFoundError) return undefined;
        throw err;
      }
    });
  }

  setMetadata(domain: string, xml: string): Promise<void> {
    return this.withDomain(domain, (d) => d.setMetadata(METADATA_NAMESPACE, METADATA_KEY, xml));
  }

  fsFreeze(domain: string): Promise<number> {
    return this.withDomain(domain, (d) => d.fsFreeze());
  }

  fsThaw(domain: string): Promise<number> {
    return this.withDomain(domain, (d) => d.fsThaw());
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const h of this.handles.values()) h.free();
    this.handles.clear();
    await this.conn.close();
  }
}

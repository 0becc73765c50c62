import { closeSync, existsSync, openSync, rmSync } from 'node:fs';
import { METADATA_KEY, METADATA_NAMESPACE } from '../common/names';
import { child, parseDomainTree, textOf, type XmlElement } from './domain-tree';
import { escapeXml, parseDomainXml } from './domain-xml';
import { DomainNotFoundError, GuestAgentUnavailableError, HypervisorError, InvalidStateError } from './errors';
import type {
  BlockJob,
  DiskSpec,
  DomainDescription,
  DomainState,
  DomainSummary,
  Hypervisor,
  ImageInfo,
  NbdBacking,
  OverlaySpec,
} from './hypervisor';
import { ImageNotFoundError, nbdUrl, type ImageRange } from './images';

export type FakeOp =
  | 'describe'
  | 'suspend'
  | 'resume'
  | 'snapshot'
  | 'commit'
  | 'fsFreeze'
  | 'commitLayer'
  | 'define'
  | 'start'
  | 'destroy'
  | 'undefine'
  | 'createOverlay'
  | 'commitImage'
  | 'rebaseImage'
  | 'blockPull'
  | 'managedSave';

/** An image file as the fake knows it: header (format, backing file) and the data written into this layer. */
export interface FakeImage {
  format: string;
  backing?: string;
  /** Data of this layer only, by key (e.g. an offset); what a reader sees is the merge down the backing chain. */
  data: Map<string, string>;
  /** A real (empty) file was created for it: once that file is removed, the image is gone. */
  touched: boolean;
}

export interface FakeDomain {
  name: string;
  uuid: string;
  state: DomainState;
  /** Each disk's chain, base first; the last element is the active image. */
  disks: { target: string; format: string; type: string; device: string; chain: string[] }[];
  metadata?: string;
  hasGuestAgent: boolean;
  /** Extra `<devices>` XML in `domainXml()` (e.g. interfaces with MACs, file-backed serial ports). */
  devicesXml?: string;
  /** The XML this domain was defined from by `defineDomain`. */
  definedXml?: string;
}

export interface FakeHypervisorOptions {
  /** Latency per operation in ms (a number, or a function drawing one). @default 0 */
  latencyMs?: Partial<Record<FakeOp, number | (() => number)>>;
  /** Create (empty) overlay files on disk like libvirt does, and delete them on commit. @default true */
  touchFiles?: boolean;
  /**
   * The QEMU version the fake models. Below 8.0 a pull that ends while another pull of the same VM runs crashes
   * the VM (shut off), as QEMU 7.2 can when both end together (ADR 0013). @default 10.0
   */
  qemuVersion?: { major: number; minor: number };
}

/**
 * In-memory hypervisor for fast tests and for simulating many hosts: same contract and errors as the libvirt
 * adapter, with injectable failures (`failOn`) and latencies drawn from real measurements.
 */
export class FakeHypervisor implements Hypervisor {
  readonly uri = 'fake://';
  readonly domains = new Map<string, FakeDomain>();
  /** Image files by path: the backing map the image operations work on. */
  readonly images = new Map<string, FakeImage>();
  /** Every call made, in order, as `op:domain`. */
  readonly calls: string[] = [];
  private readonly failures: { op: FakeOp; domain?: string; error: Error }[] = [];
  /** Domains whose guest filesystems are frozen (fsFreeze called, no fsThaw since). */
  readonly fsFrozen = new Set<string>();
  /** Block jobs left running, by `domain\0target` (see {@link leaveActiveCommit}). */
  readonly jobs = new Map<string, { top: string; base: string; ready: boolean }>();

  /** Block pulls running, by `domain\0target`: each {@link blockJob} call moves one on by `pullStep` of 100. */
  readonly pulls = new Map<string, { cur: number; end: number }>();
  /** The zero ranges each NBD overlay was made with ({@link createNbdOverlay}), by file. */
  readonly overlayZeros = new Map<string, ImageRange[]>();
  /** How far each poll of a pull gets (of 100). @default 50 */
  pullStep = 50;
  /** VMs paused by QEMU after an I/O error (the stop error policy), see {@link pauseOnIoError}. */
  readonly ioErrorPaused = new Set<string>();
  /** VMs whose QEMU lost its NBD connection (the server died): pulls fail until the VM's QEMU is restarted. */
  readonly deadNbd = new Set<string>();
  /** VMs stopped by {@link managedSave}: the next start restores them. */
  readonly managedSaved = new Set<string>();

  constructor(private readonly options: FakeHypervisorOptions = {}) {}

  /** QEMU paused `domain` after a failed disk request (the stop error policy): resume retries it. */
  pauseOnIoError(domain: string): void {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    d.state = 'paused';
    this.ioErrorPaused.add(domain);
  }

  addDomain(d: Omit<FakeDomain, 'uuid' | 'hasGuestAgent'> & Partial<FakeDomain>): FakeDomain {
    const dom: FakeDomain = {
      uuid: `00000000-0000-4000-8000-${String(this.domains.size).padStart(12, '0')}`,
      hasGuestAgent: false,
      ...d,
    };
    this.domains.set(dom.name, dom);
    for (const disk of dom.disks) this.registerChain(disk.chain, disk.format);
    return dom;
  }

  private registerChain(chain: string[], baseFormat: string): void {
    chain.forEach((file, i) => {
      if (this.images.has(file)) return;
      this.images.set(file, {
        format: i === 0 ? baseFormat : 'qcow2',
        ...(i > 0 ? { backing: chain[i - 1] } : {}),
        data: new Map(),
        touched: false,
      });
    });
  }

  /** The image at `file`, or undefined when it does not exist (also when its real file was removed). */
  image(file: string): FakeImage | undefined {
    const img = this.images.get(file);
    if (img?.touched && this.options.touchFiles !== false && !existsSync(file)) {
      this.images.delete(file);
      return undefined;
    }
    return img;
  }

  private requireImage(file: string): FakeImage {
    const img = this.image(file);
    if (!img) throw new ImageNotFoundError(file);
    return img;
  }

  /** The backing chain of `file`, `file` first (stops at a missing backing file). */
  backingChain(file: string): string[] {
    const chain: string[] = [];
    for (let f: string | undefined = file; f !== undefined && this.image(f) && chain.length < 1000;) {
      chain.push(f);
      f = this.images.get(f)!.backing;
    }
    return chain;
  }

  /** Simulated guest write into the active layer of a disk. */
  writeData(domain: string, target: string, key: string, value: string): void {
    const disk = this.domains.get(domain)?.disks.find((k) => k.target === target);
    if (!disk) throw new HypervisorError(`no disk ${target}`, domain);
    this.requireImage(disk.chain[disk.chain.length - 1]).data.set(key, value);
  }

  /** What a reader of image `file` sees at `key` (merged down its backing chain). */
  readData(file: string, key: string): string | undefined {
    for (const f of this.backingChain(file)) {
      const v = this.images.get(f)!.data.get(key);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  private merge(top: string, base: string): void {
    const from = this.requireImage(top);
    const into = this.requireImage(base);
    for (const [k, v] of from.data) into.data.set(k, v);
  }

  /** QEMU's image locks: a file in the chain of a running or paused VM cannot be written by qemu-img. */
  private assertNotOpen(file: string): void {
    for (const d of this.domains.values()) {
      if (d.state !== 'running' && d.state !== 'paused') continue;
      if (d.disks.some((k) => k.chain.includes(file)))
        throw new HypervisorError(`Failed to get "write" lock on ${file}: is another process using the image?`);
    }
  }

  /** Re-reads the chains of shut-off domains from the image headers (as libvirt does at the next start). */
  private resyncChains(): void {
    for (const d of this.domains.values()) {
      if (d.state !== 'shutoff') continue;
      for (const k of d.disks) {
        const active = k.chain[k.chain.length - 1];
        if (active !== undefined && this.image(active)) k.chain = this.backingChain(active).reverse();
      }
    }
  }

  /** Makes the next `op` (on `domain`, or on any domain) throw `error`. */
  failOn(
    op: FakeOp,
    domain: string | undefined,
    error: Error = new HypervisorError(`injected ${op} failure`, domain),
  ): void {
    this.failures.push({ op, domain, error });
  }

  /** Records the call, waits its latency and throws an injected failure for `op` on `key` (a domain or a file). */
  private async enter(op: FakeOp, key: string): Promise<void> {
    this.calls.push(`${op}:${key}`);
    const latency = this.options.latencyMs?.[op];
    const ms = typeof latency === 'function' ? latency() : (latency ?? 0);
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    const i = this.failures.findIndex((f) => f.op === op && (f.domain === undefined || f.domain === key));
    if (i >= 0) throw this.failures.splice(i, 1)[0].error;
  }

  private async step(op: FakeOp, domain: string): Promise<FakeDomain> {
    await this.enter(op, domain);
    const dom = this.domains.get(domain);
    if (!dom) throw new DomainNotFoundError(domain);
    return dom;
  }

  async describe(domain: string): Promise<DomainDescription> {
    const d = await this.step('describe', domain);
    return {
      name: d.name,
      uuid: d.uuid,
      state: d.state,
      persistent: true,
      hasGuestAgent: d.hasGuestAgent,
      disks: d.disks.map((k): DiskSpec => ({
        target: k.target,
        device: k.device,
        type: k.type,
        format: k.format,
        source: k.chain[k.chain.length - 1],
        readonly: false,
      })),
    };
  }

  async state(domain: string): Promise<DomainState> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    return d.state;
  }

  async suspend(domain: string): Promise<void> {
    const d = await this.step('suspend', domain);
    if (d.state !== 'running') throw new InvalidStateError(domain, `domain is not running (${d.state})`);
    d.state = 'paused';
  }

  async resume(domain: string): Promise<void> {
    const d = await this.step('resume', domain);
    if (d.state !== 'paused') throw new InvalidStateError(domain, `domain is not paused (${d.state})`);
    this.ioErrorPaused.delete(domain);
    d.state = 'running';
  }

  async snapshotDisks(
    domain: string,
    overlays: OverlaySpec[],
    _skip: string[] = [],
    options: { reuse?: boolean } = {},
  ): Promise<void> {
    const d = await this.step('snapshot', domain);
    for (const o of overlays) {
      const disk = d.disks.find((k) => k.target === o.target);
      if (!disk) throw new HypervisorError(`no disk ${o.target}`, domain);
      const top = disk.chain[disk.chain.length - 1];
      // As libvirt: a reused overlay must exist; a new one must not (it would be overwritten).
      const img = this.images.get(o.file);
      if (options.reuse && img?.backing !== top)
        throw new HypervisorError(`overlay ${o.file} to reuse does not exist over ${top}`, domain);
      if (!options.reuse && (img || existsSync(o.file))) throw new HypervisorError(`${o.file} already exists`, domain);
    }
    for (const o of overlays) {
      const disk = d.disks.find((k) => k.target === o.target)!;
      if (!options.reuse) {
        const touched = this.options.touchFiles !== false;
        if (touched) closeSync(openSync(o.file, 'wx'));
        this.images.set(o.file, {
          format: 'qcow2',
          backing: disk.chain[disk.chain.length - 1],
          data: new Map(),
          touched,
        });
      }
      disk.chain.push(o.file);
    }
  }

  /**
   * Starts an active commit of `target`'s active layer into its backing file and leaves it running (`ready`: all
   * copied, waiting for a pivot), as a worker that died mid-commit would.
   */
  leaveActiveCommit(domain: string, target: string, ready = true): void {
    const disk = this.domains.get(domain)?.disks.find((k) => k.target === target);
    if (!disk || disk.chain.length < 2) throw new HypervisorError(`disk ${target} has no overlay`, domain);
    this.jobs.set(`${domain}\0${target}`, {
      top: disk.chain[disk.chain.length - 1],
      base: disk.chain[disk.chain.length - 2],
      ready,
    });
  }

  private assertNoJob(domain: string, target: string): void {
    if (this.jobs.has(`${domain}\0${target}`) || this.pulls.has(`${domain}\0${target}`))
      throw new HypervisorError(`disk '${target}' already in active block job`, domain);
  }

  async blockJob(domain: string, target: string): Promise<BlockJob | undefined> {
    if (!this.domains.has(domain)) throw new DomainNotFoundError(domain);
    const pull = this.pulls.get(`${domain}\0${target}`);
    if (pull) return this.advancePull(domain, target, pull);
    const job = this.jobs.get(`${domain}\0${target}`);
    return job && { type: 'active-commit', ready: job.ready, cur: job.ready ? 100 : 50, end: 100 };
  }

  async endBlockJob(domain: string, target: string, how: 'pivot' | 'abort'): Promise<void> {
    const key = `${domain}\0${target}`;
    if (this.pulls.has(key)) {
      // A pull cannot pivot; aborted, it leaves the disk on its overlay over the backing (what it copied stays).
      if (how === 'pivot') throw new InvalidStateError(domain, `block job on ${target} cannot pivot`);
      this.pulls.delete(key);
      return;
    }
    const job = this.jobs.get(key);
    if (!job) throw new InvalidStateError(domain, `no block job on ${target}`);
    if (how === 'pivot') {
      if (!job.ready) throw new InvalidStateError(domain, `block job on ${target} is not ready for pivot yet`);
      const disk = this.domains.get(domain)!.disks.find((k) => k.target === target)!;
      this.merge(job.top, job.base);
      disk.chain.pop();
    }
    this.jobs.delete(key);
  }

  /** One poll of a pull: it moves on, fails (a dead NBD connection: the job vanishes) or ends, dropping the backing. */
  private advancePull(domain: string, target: string, pull: { cur: number; end: number }): BlockJob | undefined {
    const key = `${domain}\0${target}`;
    if (this.deadNbd.has(domain)) {
      this.pulls.delete(key);
      return undefined;
    }
    pull.cur = Math.min(pull.end, pull.cur + this.pullStep);
    if (pull.cur < pull.end) return { type: 'pull', ready: false, cur: pull.cur, end: pull.end };
    this.pulls.delete(key);
    if ((this.options.qemuVersion?.major ?? 10) < 8 && this.crashOnConcurrentPull(domain)) return undefined;
    const disk = this.domains.get(domain)!.disks.find((k) => k.target === target)!;
    const top = disk.chain[disk.chain.length - 1];
    const img = this.requireImage(top);
    const data = new Map<string, string>();
    for (const f of [...disk.chain].slice(0, -1)) for (const [k, v] of this.images.get(f)?.data ?? []) data.set(k, v);
    for (const [k, v] of img.data) data.set(k, v);
    img.data = data;
    delete img.backing;
    disk.chain = [top];
    return undefined;
  }

  /**
   * QEMU 7.2: a pull's end while another pull of the VM runs may meet that one's end, and libvirt's query of the
   * nodes then segfaults QEMU (ADR 0013). Modelled at its worst: the VM is shut off, its pulls gone, nothing pulled.
   */
  private crashOnConcurrentPull(domain: string): boolean {
    const others = [...this.pulls.keys()].filter((k) => k.startsWith(`${domain}\0`));
    if (others.length === 0) return false;
    for (const k of others) this.pulls.delete(k);
    this.domains.get(domain)!.state = 'shutoff';
    return true;
  }

  async blockPull(domain: string, target: string, _options: { bandwidthMiB?: number } = {}): Promise<void> {
    const d = await this.step('blockPull', domain);
    if (d.state !== 'running' && d.state !== 'paused') throw new InvalidStateError(domain, 'domain is not running');
    this.assertNoJob(domain, target);
    const disk = d.disks.find((k) => k.target === target);
    if (!disk) throw new HypervisorError(`no disk ${target}`, domain);
    if (disk.chain.length < 2) return; // nothing to pull: QEMU's job ends at once
    if (this.deadNbd.has(domain)) throw new HypervisorError(`Pull failed: NBD connection of ${target} is dead`, domain);
    this.pulls.set(`${domain}\0${target}`, { cur: 0, end: 100 });
  }

  async nbdBacking(domain: string, target: string): Promise<NbdBacking | undefined> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    const disk = d.disks.find((k) => k.target === target);
    for (const f of disk?.chain ?? []) {
      const m = /^nbd\+unix:\/\/\/([^?]+)\?socket=(.+)$/.exec(f);
      if (m) return { exportName: m[1], socket: m[2] };
    }
    return undefined;
  }

  async pausedByIoError(domain: string): Promise<boolean> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    return d.state === 'paused' && this.ioErrorPaused.has(domain);
  }

  async managedSave(domain: string): Promise<void> {
    const d = await this.step('managedSave', domain);
    if (d.state !== 'running' && d.state !== 'paused') throw new InvalidStateError(domain, 'domain is not running');
    for (const k of d.disks)
      if (this.pulls.has(`${domain}\0${k.target}`))
        throw new InvalidStateError(domain, `domain has active block job on ${k.target}`);
    d.state = 'shutoff';
    this.managedSaved.add(domain);
  }

  async hydrateImage(file: string): Promise<void> {
    await this.enter('rebaseImage', file);
    const img = this.requireImage(file);
    this.assertNotOpen(file);
    const data = new Map<string, string>();
    for (const f of this.backingChain(file).reverse()) for (const [k, v] of this.images.get(f)!.data) data.set(k, v);
    img.data = data;
    delete img.backing;
    this.resyncChains();
  }

  async createNbdOverlay(file: string, backing: NbdBacking, _virtualSize: number, zeros?: ImageRange[]): Promise<void> {
    await this.enter('createOverlay', file);
    const url = nbdUrl(backing.socket, backing.exportName);
    if (!this.images.has(url)) this.images.set(url, { format: 'raw', data: new Map(), touched: false });
    const touched = this.options.touchFiles !== false;
    if (touched) closeSync(openSync(file, 'w'));
    this.images.set(file, { format: 'qcow2', backing: url, data: new Map(), touched });
    this.overlayZeros.set(file, [...(zeros ?? [])]);
  }

  async commitActive(domain: string, target: string, base: string): Promise<void> {
    const d = await this.step('commit', domain);
    this.assertNoJob(domain, target);
    const disk = d.disks.find((k) => k.target === target);
    if (!disk || disk.chain[disk.chain.length - 2] !== base) {
      throw new HypervisorError(`disk ${target} has no overlay directly over ${base}`, domain);
    }
    const top = disk.chain[disk.chain.length - 1];
    if (this.image(top) && this.image(base)) this.merge(top, base);
    disk.chain.pop();
  }

  async commitLayer(domain: string, target: string, top: string, base: string): Promise<void> {
    const d = await this.step('commitLayer', domain);
    this.assertNoJob(domain, target);
    if (d.state !== 'running' && d.state !== 'paused') throw new InvalidStateError(domain, 'domain is not running');
    const disk = d.disks.find((k) => k.target === target);
    const i = disk ? disk.chain.indexOf(top) : -1;
    if (!disk || i < 1 || i === disk.chain.length - 1 || disk.chain[i - 1] !== base) {
      throw new HypervisorError(`disk ${target} has no middle layer ${top} directly over ${base}`, domain);
    }
    this.merge(top, base);
    disk.chain.splice(i, 1);
    this.requireImage(disk.chain[i]).backing = base;
  }

  async redefineDiskSources(domain: string, sources: { target: string; from: string; to: string }[]): Promise<void> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    for (const s of sources) {
      const disk = d.disks.find((k) => k.target === s.target);
      if (!disk || disk.chain[disk.chain.length - 1] !== s.from)
        throw new HypervisorError(`disk ${s.target} is not on ${s.from}`, domain);
      // Pointing a disk back at its overlay's backing file drops the overlay from the chain.
      if (disk.chain[disk.chain.length - 2] === s.to) disk.chain.pop();
      else if (this.image(s.to)) disk.chain = this.backingChain(s.to).reverse();
      else disk.chain[disk.chain.length - 1] = s.to;
    }
  }

  async listDomains(): Promise<DomainSummary[]> {
    return [...this.domains.values()].map((d) => ({ name: d.name, uuid: d.uuid, state: d.state }));
  }

  async domainXml(domain: string): Promise<string> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    if (d.definedXml) return d.definedXml;
    const disks = d.disks.map(
      (k) =>
        `<disk type='${k.type}' device='${k.device}'><driver name='qemu' type='${escapeXml(k.format)}'/>` +
        `<source file='${escapeXml(k.chain[k.chain.length - 1])}'/><target dev='${k.target}' bus='virtio'/></disk>`,
    );
    const metadata = d.metadata ? `<metadata>${toLibvirtMetadata(d.metadata)}</metadata>` : '';
    return (
      `<domain type='kvm'><name>${escapeXml(d.name)}</name><uuid>${d.uuid}</uuid>${metadata}` +
      `<memory unit='KiB'>65536</memory><devices>${disks.join('')}${d.devicesXml ?? ''}</devices></domain>`
    );
  }

  async defineDomain(xml: string): Promise<{ name: string; uuid: string }> {
    // Read like libvirt does: elements of the parsed domain, entities decoded.
    let tree: XmlElement;
    try {
      tree = parseDomainTree(xml);
    } catch (err) {
      throw new HypervisorError(`domain XML is malformed: ${(err as Error).message}`);
    }
    const nameEl = child(tree, 'name');
    const name = nameEl ? textOf(nameEl).trim() : '';
    if (!name) throw new HypervisorError('domain XML has no name');
    await this.enter('define', name);
    const uuidEl = child(tree, 'uuid');
    const uuid = uuidEl ? textOf(uuidEl).trim() : undefined;
    const existing = this.domains.get(name);
    if (existing && existing.uuid !== uuid)
      throw new HypervisorError(`domain '${name}' already exists with uuid ${existing.uuid}`);
    const parsed = parseDomainXml(xml);
    const metadata = fromLibvirtMetadata(xml);
    // A disk file that exists on disk (e.g. one a restore rebuilt) is a base image, as libvirt would find it.
    for (const k of parsed.disks)
      if (k.source && !this.image(k.source) && existsSync(k.source))
        this.images.set(k.source, { format: k.format ?? 'raw', data: new Map(), touched: true });
    const dom: FakeDomain = {
      name,
      uuid: uuid ?? existing?.uuid ?? `10000000-0000-4000-8000-${String(this.domains.size).padStart(12, '0')}`,
      state: existing?.state ?? 'shutoff',
      hasGuestAgent: parsed.hasGuestAgent,
      ...(metadata !== undefined ? { metadata } : {}),
      definedXml: xml,
      disks: parsed.disks.map((k) => ({
        target: k.target,
        format: k.format ?? 'raw',
        type: k.type,
        device: k.device,
        chain: k.source ? (this.image(k.source) ? this.backingChain(k.source).reverse() : [k.source]) : [],
      })),
    };
    this.domains.set(name, dom);
    return { name, uuid: dom.uuid };
  }

  async start(domain: string, options: { paused?: boolean } = {}): Promise<void> {
    const d = await this.step('start', domain);
    if (d.state !== 'shutoff') throw new InvalidStateError(domain, `domain is already active (${d.state})`);
    for (const k of d.disks) {
      const active = k.chain[k.chain.length - 1];
      if (active === undefined) continue;
      const chain = this.backingChain(active);
      const last = chain.length ? this.images.get(chain[chain.length - 1])! : undefined;
      if (chain.length === 0 || last?.backing !== undefined) {
        throw new HypervisorError(
          `Cannot access storage file of disk ${k.target} (chain of ${active} is broken)`,
          domain,
        );
      }
      k.chain = chain.reverse();
    }
    // A new QEMU: fresh connections to every backing; a managed save restores the state it saved (paused).
    this.deadNbd.delete(domain);
    this.ioErrorPaused.delete(domain);
    const restored = this.managedSaved.delete(domain);
    d.state = options.paused || restored ? 'paused' : 'running';
  }

  async destroy(domain: string): Promise<void> {
    const d = await this.step('destroy', domain);
    if (d.state !== 'running' && d.state !== 'paused') throw new InvalidStateError(domain, 'domain is not running');
    d.state = 'shutoff';
  }

  async undefine(domain: string): Promise<void> {
    const d = await this.step('undefine', domain);
    // libvirt would leave a running domain transient; the fake only models shut-off ones.
    if (d.state !== 'shutoff') throw new InvalidStateError(domain, 'the fake only undefines shut-off domains');
    this.domains.delete(domain);
  }

  async createOverlay(file: string, backing: string, backingFormat: string): Promise<void> {
    await this.enter('createOverlay', file);
    const base = this.requireImage(backing);
    if (base.format !== backingFormat) throw new HypervisorError(`${backing} is ${base.format}, not ${backingFormat}`);
    const touched = this.options.touchFiles !== false;
    if (touched) closeSync(openSync(file, 'w'));
    this.images.set(file, { format: 'qcow2', backing, data: new Map(), touched });
  }

  async commitImage(top: string, base: string): Promise<void> {
    await this.enter('commitImage', top);
    const img = this.requireImage(top);
    if (img.backing !== base) throw new HypervisorError(`${base} is not the backing file of ${top}`);
    this.assertNotOpen(top);
    this.assertNotOpen(base);
    this.merge(top, base);
  }

  async rebaseImage(file: string, newBacking: string, backingFormat: string): Promise<void> {
    await this.enter('rebaseImage', file);
    const img = this.requireImage(file);
    const base = this.requireImage(newBacking);
    if (base.format !== backingFormat)
      throw new HypervisorError(`${newBacking} is ${base.format}, not ${backingFormat}`);
    this.assertNotOpen(file);
    img.backing = newBacking;
    this.resyncChains();
  }

  async imageInfo(file: string): Promise<ImageInfo> {
    const img = this.requireImage(file);
    const backing = img.backing;
    return {
      format: img.format,
      ...(backing !== undefined ? { backing, backingFormat: this.images.get(backing)?.format ?? 'qcow2' } : {}),
    };
  }

  async removeImage(file: string): Promise<void> {
    this.calls.push(`removeImage:${file}`);
    this.images.delete(file);
    if (this.options.touchFiles !== false) rmSync(file, { force: true });
  }

  async getMetadata(domain: string): Promise<string | undefined> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    return d.metadata;
  }

  async setMetadata(domain: string, xml: string): Promise<void> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    d.metadata = xml;
  }

  async fsFreeze(domain: string): Promise<number> {
    const d = await this.step('fsFreeze', domain);
    if (!d.hasGuestAgent) throw new GuestAgentUnavailableError(domain, 'no guest agent configured');
    this.fsFrozen.add(domain);
    return 1;
  }

  async fsThaw(domain: string): Promise<number> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    const was = this.fsFrozen.delete(domain);
    return d.hasGuestAgent && was ? 1 : 0;
  }

  async close(): Promise<void> {}

  /** Removes the overlay files this fake created (test clean-up). */
  removeFiles(files: string[]): void {
    for (const f of files) rmSync(f, { force: true });
  }
}

/** groupsnap's metadata as libvirt shows it in a domain XML: every element prefixed, the namespace declared. */
function toLibvirtMetadata(xml: string): string {
  const p = METADATA_KEY;
  return xml
    .replace(/<(\/?)([A-Za-z_])/g, `<$1${p}:$2`)
    .replace(new RegExp(`^<${p}:(\\w+)`), `<${p}:$1 xmlns:${p}='${METADATA_NAMESPACE}'`);
}

/** groupsnap's metadata element of a domain XML, as `getMetadata` returns it, or undefined when there is none. */
function fromLibvirtMetadata(xml: string): string | undefined {
  const ns = METADATA_NAMESPACE.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const m = new RegExp(`<(\\w+):(\\w+)[^>]*xmlns:\\1=['"]${ns}['"][^>]*?(?:/>|>[\\s\\S]*?</\\1:\\2>)`).exec(xml);
  if (!m) return undefined;
  return m[0].replace(new RegExp(`<(/?)${m[1]}:`, 'g'), '<$1').replace(/\s+xmlns:\w+=(['"])[^'"]*\1/, '');
}

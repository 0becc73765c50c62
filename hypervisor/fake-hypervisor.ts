import { closeSync, openSync, rmSync } from 'node:fs';
import { DomainNotFoundError, GuestAgentUnavailableError, HypervisorError, InvalidStateError } from './errors';
import type { DiskSpec, DomainDescription, DomainState, Hypervisor, OverlaySpec } from './hypervisor';

export type FakeOp = 'describe' | 'suspend' | 'resume' | 'snapshot' | 'commit' | 'fsFreeze';

export interface FakeDomain {
  name: string;
  uuid: string;
  state: DomainState;
  /** Each disk's chain, base first; the last element is the active image. */
  disks: { target: string; format: string; type: string; device: string; chain: string[] }[];
  metadata?: string;
  hasGuestAgent: boolean;
}

export interface FakeHypervisorOptions {
  /** Latency per operation in ms (a number, or a function drawing one). @default 0 */
  latencyMs?: Partial<Record<FakeOp, number | (() => number)>>;
  /** Create (empty) overlay files on disk like libvirt does, and delete them on commit. @default true */
  touchFiles?: boolean;
}

/**
 * In-memory hypervisor for fast tests and for simulating many hosts: same contract and errors as the libvirt
 * adapter, with injectable failures (`failOn`) and latencies drawn from real measurements.
 */
export class FakeHypervisor implements Hypervisor {
  readonly uri = 'fake://';
  readonly domains = new Map<string, FakeDomain>();
  /** Every call made, in order, as `op:domain`. */
  readonly calls: string[] = [];
  private readonly failures: { op: FakeOp; domain?: string; error: Error }[] = [];

  constructor(private readonly options: FakeHypervisorOptions = {}) {}

  addDomain(d: Omit<FakeDomain, 'uuid' | 'hasGuestAgent'> & Partial<FakeDomain>): FakeDomain {
    const dom: FakeDomain = {
      uuid: `00000000-0000-4000-8000-${String(this.domains.size).padStart(12, '0')}`,
      hasGuestAgent: false,
      ...d,
    };
    this.domains.set(dom.name, dom);
    return dom;
  }

  /** Makes the next `op` (on `domain`, or on any domain) throw `error`. */
  failOn(
    op: FakeOp,
    domain: string | undefined,
    error: Error = new HypervisorError(`injected ${op} failure`, domain),
  ): void {
    this.failures.push({ op, domain, error });
  }

  private async step(op: FakeOp, domain: string): Promise<FakeDomain> {
    this.calls.push(`${op}:${domain}`);
    const latency = this.options.latencyMs?.[op];
    const ms = typeof latency === 'function' ? latency() : (latency ?? 0);
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    const i = this.failures.findIndex((f) => f.op === op && (f.domain === undefined || f.domain === domain));
    if (i >= 0) throw this.failures.splice(i, 1)[0].error;
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
    d.state = 'running';
  }

  async snapshotDisks(domain: string, overlays: OverlaySpec[]): Promise<void> {
    const d = await this.step('snapshot', domain);
    for (const o of overlays) {
      if (!d.disks.some((k) => k.target === o.target)) throw new HypervisorError(`no disk ${o.target}`, domain);
    }
    for (const o of overlays) {
      d.disks.find((k) => k.target === o.target)!.chain.push(o.file);
      if (this.options.touchFiles !== false) closeSync(openSync(o.file, 'wx'));
    }
  }

  async commitActive(domain: string, target: string, base: string): Promise<void> {
    const d = await this.step('commit', domain);
    const disk = d.disks.find((k) => k.target === target);
    if (!disk || disk.chain[disk.chain.length - 2] !== base) {
      throw new HypervisorError(`disk ${target} has no overlay directly over ${base}`, domain);
    }
    disk.chain.pop();
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
      else disk.chain[disk.chain.length - 1] = s.to;
    }
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
    return 1;
  }

  async fsThaw(domain: string): Promise<number> {
    const d = this.domains.get(domain);
    if (!d) throw new DomainNotFoundError(domain);
    return d.hasGuestAgent ? 1 : 0;
  }

  async close(): Promise<void> {}

  /** Removes the overlay files this fake created (test clean-up). */
  removeFiles(files: string[]): void {
    for (const f of files) rmSync(f, { force: true });
  }
}

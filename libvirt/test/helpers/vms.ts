// Throw-away firmware-only VMs for tests: defined and started through the binding, always cleaned up.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Connection, Domain, UndefineFlags, open } from '../../src';

export const SYSTEM_URI = 'qemu:///system';

/** 'kvm' or 'qemu' (TCG): /var/lib/groupsnap/virt-type if present, else kvm when /dev/kvm exists. */
export function virtType(): 'kvm' | 'qemu' {
  try {
    const t = fs.readFileSync('/var/lib/groupsnap/virt-type', 'utf8').trim();
    if (t === 'kvm' || t === 'qemu') return t;
  } catch {
    // fall through
  }
  return fs.existsSync('/dev/kvm') ? 'kvm' : 'qemu';
}

/**
 * Creates a 64 MiB qcow2 image. A boot disk gets an MBR that halts the CPU (cli; hlt), so the guest idles at 0%
 * CPU instead of SeaBIOS retrying to boot at ~75% of a core each, which starves a 2-core machine with 16 VMs.
 */
export function createDisk(file: string, boot: boolean): void {
  if (!boot) {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '64M']);
    return;
  }
  const mbr = Buffer.alloc(512);
  Buffer.from([0xfa, 0xf4, 0xeb, 0xfd]).copy(mbr); // cli; hlt; jmp back to hlt
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const raw = `${file}.mbr`;
  fs.writeFileSync(raw, mbr);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
  execFileSync('qemu-img', ['resize', '-q', file, '64M']);
  fs.rmSync(raw);
}

export interface TestVm {
  name: string;
  domain: Domain;
  /** Disk target -> base image path. */
  disks: Record<string, string>;
}

export function domainXml(name: string, disks: Record<string, string>, type = virtType()): string {
  const diskXml = Object.entries(disks)
    .map(
      ([dev, file]) =>
        `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${file}'/>` +
        `<target dev='${dev}' bus='virtio'/></disk>`,
    )
    .join('');
  return (
    `<domain type='${type}'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>` +
    `<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>${diskXml}</devices></domain>`
  );
}

/**
 * A set of VMs on qemu:///system, each with `diskCount` qcow2 disks (vda, vdb, ...) in a private temp dir.
 * Call `cleanup()` in afterAll: it destroys and undefines every VM this fleet defined (also ones left by a
 * failed test) and removes the files.
 */
export class VmFleet {
  readonly prefix = `gsl-test-${randomBytes(4).toString('hex')}`;
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gsl-test-'));
  conn!: Connection;
  private count = 0;

  async connect(): Promise<Connection> {
    this.conn = await open(SYSTEM_URI);
    return this.conn;
  }

  /** Defines and starts one VM; it is running when this resolves. */
  async start(diskCount = 2): Promise<TestVm> {
    const vm = await this.define(diskCount);
    await vm.domain.create();
    return vm;
  }

  /** Defines one VM without starting it. */
  async define(diskCount = 2): Promise<TestVm> {
    const name = `${this.prefix}-${this.count++}`;
    const disks: Record<string, string> = {};
    for (let i = 0; i < diskCount; i++) {
      const dev = `vd${String.fromCharCode(97 + i)}`;
      const file = path.join(this.dir, `${name}-${dev}.qcow2`);
      createDisk(file, i === 0);
      disks[dev] = file;
    }
    const domain = await this.conn.defineXML(domainXml(name, disks));
    return { name, domain, disks };
  }

  async startMany(n: number, diskCount = 2): Promise<TestVm[]> {
    return Promise.all(Array.from({ length: n }, () => this.start(diskCount)));
  }

  async cleanup(): Promise<void> {
    try {
      const conn = this.conn ?? (await open(SYSTEM_URI));
      const mine = (await conn.listAllDomains()).filter((d) => d.name.startsWith(`${this.prefix}-`));
      await Promise.all(
        mine.map(async (d) => {
          const dom = await conn.lookupByName(d.name);
          if (d.state !== 'shutoff') await dom.destroy().catch(() => undefined);
          await dom.undefine(UndefineFlags.SNAPSHOTS_METADATA | UndefineFlags.NVRAM).catch(() => undefined);
          dom.free();
        }),
      );
      if (!conn.closed) await conn.close();
    } finally {
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** The backing chain of an image file, top first, as qemu-img sees it (-U: the image is in use). */
export function backingChain(file: string): string[] {
  const out = execFileSync('qemu-img', ['info', '-U', '--backing-chain', '--output=json', file], { encoding: 'utf8' });
  return (JSON.parse(out) as Array<{ filename: string }>).map((i) => i.filename);
}

/** The source file of each disk target in a domain XML. */
export function diskSources(xml: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /<disk\b[\s\S]*?<\/disk>/g;
  for (const m of xml.match(re) ?? []) {
    // The first <source> in a disk element is the active image; nested ones are in <backingStore>.
    const src = /<source file='([^']+)'/.exec(m);
    const dev = /<target dev='([^']+)'/.exec(m);
    if (src && dev) out[dev[1]] = src[1];
  }
  return out;
}

export function snapshotXml(files: Record<string, string>): string {
  const disks = Object.entries(files)
    .map(([dev, file]) => `<disk name='${dev}' snapshot='external'><source file='${file}'/></disk>`)
    .join('');
  return `<domainsnapshot><disks>${disks}</disks></domainsnapshot>`;
}

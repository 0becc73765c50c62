import { execFile } from 'node:child_process';
import { chownSync, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { escapeXml } from '../hypervisor/domain-xml';

const run = promisify(execFile);

/** 'kvm' when KVM works here (as detected by scripts/setup-libvirt.sh), else 'qemu' (TCG). */
export function virtType(): 'kvm' | 'qemu' {
  const forced = process.env.GROUPSNAP_VIRT_TYPE;
  if (forced === 'kvm' || forced === 'qemu') return forced;
  try {
    return readFileSync('/var/lib/groupsnap/virt-type', 'utf8').trim() === 'kvm' ? 'kvm' : 'qemu';
  } catch {
    return existsSync('/dev/kvm') ? 'kvm' : 'qemu';
  }
}

export interface VmFleetOptions {
  /** Name prefix; a random suffix makes every fleet unique. */
  prefix: string;
  count: number;
  /** @default 2 */
  disksPerVm?: number;
  /** Virtual size of each qcow2 disk. @default '64M' */
  diskSize?: string;
  /** Start the VMs. @default true */
  start?: boolean;
  /** @default 'qemu:///system' */
  uri?: string;
  /** Directory for the disk images. @default a new temp dir, removed by `destroy()` */
  dir?: string;
  /** Extra devices XML for every VM (e.g. a guest agent channel). */
  extraDevices?: string;
  /** GiB of data (a non-zero pattern, so clusters are allocated) to write into every disk. */
  fillGiB?: number;
  /** Domain type. @default virtType() (a session daemon of an unprivileged user needs 'qemu') */
  virtType?: 'kvm' | 'qemu';
  /** Owner to give the image files to before the VMs are defined (QEMU of a session daemon runs as that user). */
  owner?: { uid: number; gid: number };
}

export interface FleetVm {
  name: string;
  /** Disk target -> image file, as created. */
  disks: Record<string, string>;
}

/**
 * Throw-away VMs without an OS (firmware plus a boot sector that halts the CPU) with qcow2 disks, for tests, the
 * demo and benchmarks. `destroy()` stops and undefines them and removes every file in their directory, overlays
 * included; call it in a `finally`/`afterAll`.
 */
export class VmFleet {
  readonly vms: FleetVm[] = [];

  private constructor(
    readonly conn: libvirt.Connection,
    readonly dir: string,
    private readonly ownsDir: boolean,
  ) {}

  get names(): string[] {
    return this.vms.map((v) => v.name);
  }

  static async create(options: VmFleetOptions): Promise<VmFleet> {
    const conn = await libvirt.open(options.uri ?? 'qemu:///system');
    const dir = options.dir ?? (await mkdtemp(join(tmpdir(), `${options.prefix}-`)));
    const fleet = new VmFleet(conn, dir, options.dir === undefined);
    try {
      const suffix = Math.random().toString(36).slice(2, 8);
      await Promise.all(
        Array.from({ length: options.count }, async (_, i) => {
          const name = `${options.prefix}-${suffix}-${i + 1}`;
          const disks: Record<string, string> = {};
          for (let d = 0; d < (options.disksPerVm ?? 2); d++) {
            const target = `vd${String.fromCharCode(97 + d)}`;
            disks[target] = join(dir, `${name}-${target}.qcow2`);
            await createImage(disks[target], options.diskSize ?? '64M', d === 0);
            // Past the boot sector, so the boot disk still halts.
            if (options.fillGiB) {
              // qemu-io writes at most 2 GiB per request.
              const writes = Array.from({ length: options.fillGiB }, (_, g) => [
                '-c',
                `write -q -P 0xab ${g * 1024 + 1}M 1G`,
              ]);
              await run('qemu-io', ['-f', 'qcow2', ...writes.flat(), disks[target]]);
            }
          }
          fleet.vms.push({ name, disks });
          if (options.owner) for (const f of Object.values(disks)) chownSync(f, options.owner.uid, options.owner.gid);
          const type = options.virtType ?? virtType();
          const dom = await conn.defineXML(firmwareDomainXml(name, disks, type, options.extraDevices));
          if (options.start !== false) await dom.create();
          dom.free();
        }),
      );
      fleet.vms.sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
      return fleet;
    } catch (err) {
      await fleet.destroy();
      throw err;
    }
  }

  /** Stops and undefines every VM and removes the images directory (when the fleet created it). */
  async destroy(): Promise<void> {
    await Promise.all(
      this.vms.map(async (vm) => {
        try {
          const dom = await this.conn.lookupByName(vm.name);
          if ((await dom.state()).state !== 'shutoff') await dom.destroy().catch(() => undefined);
          await dom
            .undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA | libvirt.UndefineFlags.KEEP_NVRAM)
            .catch(() => dom.undefine());
          dom.free();
        } catch (err) {
          if (!(err instanceof libvirt.DomainNotFoundError)) throw err;
        }
      }),
    );
    if (this.ownsDir) await rm(this.dir, { recursive: true, force: true });
    await this.conn.close();
  }
}

/**
 * A qcow2 image of `size`. A boot image gets an MBR that halts the CPU (`cli; hlt`): the guest then idles at 0%
 * CPU, where SeaBIOS without a boot disk retries forever at ~75% of a core (16 such VMs starve 2 cores).
 */
async function createImage(file: string, size: string, boot: boolean): Promise<void> {
  if (!boot) {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, size]);
    return;
  }
  const mbr = Buffer.alloc(512);
  Buffer.from([0xfa, 0xf4, 0xeb, 0xfd]).copy(mbr); // cli; hlt; jmp back to hlt
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  await writeFile(`${file}.mbr`, mbr);
  await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', `${file}.mbr`, file]);
  await run('qemu-img', ['resize', '-q', file, size]);
  await rm(`${file}.mbr`);
}

export function firmwareDomainXml(
  name: string,
  disks: Record<string, string>,
  type: 'kvm' | 'qemu' = virtType(),
  extraDevices = '',
): string {
  const diskXml = Object.entries(disks)
    .map(
      ([target, file]) =>
        `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>` +
        `<source file='${escapeXml(file)}'/><target dev='${target}' bus='virtio'/></disk>`,
    )
    .join('');
  return (
    `<domain type='${type}'><name>${escapeXml(name)}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>` +
    `<os><type arch='x86_64' machine='q35'>hvm</type></os><on_crash>destroy</on_crash>` +
    `<devices>${diskXml}${extraDevices}</devices></domain>`
  );
}

/** The backing chain of an image file, active first, as qemu-img sees it (`-U`: the image may be in use). */
export async function backingChain(file: string): Promise<string[]> {
  const { stdout } = await run('qemu-img', ['info', '-U', '--backing-chain', '--output=json', file]);
  return (JSON.parse(stdout) as { filename: string }[]).map((i) => i.filename);
}

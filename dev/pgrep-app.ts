/**
 * The replicated PostgreSQL application on three TCG VMs (docs/consistency.md, part 3; scripts/build-guest-pgrep.sh,
 * scripts/guest-pgrep-init.sh): `primary`, a synchronous streaming `standby`, and a `client` that commits
 * transactions and logs each acknowledged one on its own disk. Built and read by bench/consistency-multivm.ts and
 * bench/recover.ts.
 */
import { execFile } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { escapeXml } from '../hypervisor/domain-xml';
import { REPO_ROOT } from './tools';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const ROLES = ['primary', 'standby', 'client'] as const;
export type Role = (typeof ROLES)[number];

export interface Image {
  dir: string;
  versions: string;
}

/** The guest image (scripts/build-guest-pgrep.sh: cached after the first build). */
export async function ensureMultiVmImage(): Promise<Image> {
  const { stdout } = await run('bash', [join(REPO_ROOT, 'scripts/build-guest-pgrep.sh')], { maxBuffer: 1 << 20 });
  const dir = stdout.trim().split('\n').pop()!;
  return { dir, versions: readFileSync(join(dir, 'VERSIONS'), 'utf8').trim() };
}

/** A UDP port on 127.0.0.1 that nothing is bound to now. */
export function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

export interface Link {
  local: number;
  remote: number;
}

export interface VmSpec {
  role: Role;
  name: string;
  disks: Record<string, string>;
  links: Link[];
  cmdline: string;
  memoryMiB: number;
  log: string;
}

export function domainXml(image: Image, vm: VmSpec): string {
  const disks = Object.entries(vm.disks)
    .map(
      ([t, file]) =>
        `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>` +
        `<source file='${escapeXml(file)}'/><target dev='${t}' bus='virtio'/></disk>`,
    )
    .join('');
  const nics = vm.links
    .map(
      (l) =>
        `<interface type='udp'><source address='127.0.0.1' port='${l.remote}'>` +
        `<local address='127.0.0.1' port='${l.local}'/></source><model type='virtio'/></interface>`,
    )
    .join('');
  return (
    `<domain type='qemu'><name>${escapeXml(vm.name)}</name><memory unit='MiB'>${vm.memoryMiB}</memory><vcpu>1</vcpu>` +
    `<os><type arch='x86_64' machine='q35'>hvm</type><kernel>${escapeXml(join(image.dir, 'vmlinuz'))}</kernel>` +
    `<initrd>${escapeXml(join(image.dir, 'initrd.img'))}</initrd><cmdline>${escapeXml(vm.cmdline)}</cmdline></os>` +
    `<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>` +
    `<devices>${disks}${nics}<serial type='file'><source path='${escapeXml(vm.log)}'/><target port='0'/></serial>` +
    `<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>`
  );
}

export function readConsole(file: string): string {
  try {
    return readFileSync(file, 'latin1');
  } catch {
    return '';
  }
}

export async function waitForConsole(file: string, pattern: RegExp, timeoutMs: number, alive: () => Promise<boolean>) {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; Date.now() < deadline; i++) {
    if (pattern.test(readConsole(file))) return true;
    if (i % 10 === 9 && !(await alive())) return pattern.test(readConsole(file));
    await sleep(500);
  }
  return false;
}

/** The client's newest acknowledged id it printed on its console (every 20 commits). */
export function ackedOnConsole(text: string): number {
  const all = [...text.matchAll(/GSMV-LOAD acked (\d+)/g)];
  return all.length ? Number(all[all.length - 1][1]) : 0;
}

/** The three VMs of one run (primary, standby, client), linked by UDP sockets on the given ports. */
export function vmSpecs(id: string, ports: number[], dir: string, checkpointS: number): Record<Role, VmSpec> {
  const [p1, p2, p3, p4] = ports;
  const common = `console=ttyS0 quiet panic=-1 gs.mode=load gs.checkpoint=${checkpointS}`;
  return {
    primary: {
      role: 'primary',
      name: `gs-mv-${id}-primary`,
      disks: {},
      links: [
        { local: p1, remote: p2 },
        { local: p3, remote: p4 },
      ],
      cmdline: `${common} gs.role=primary gs.net=eth0:169.254.1.1/24,eth1:169.254.2.1/24`,
      memoryMiB: 384,
      log: join(dir, 'primary.console.log'),
    },
    standby: {
      role: 'standby',
      name: `gs-mv-${id}-standby`,
      disks: {},
      links: [{ local: p2, remote: p1 }],
      cmdline: `${common} gs.role=standby gs.net=eth0:169.254.1.2/24 gs.primary=169.254.1.1`,
      memoryMiB: 384,
      log: join(dir, 'standby.console.log'),
    },
    client: {
      role: 'client',
      name: `gs-mv-${id}-client`,
      disks: {},
      links: [{ local: p4, remote: p3 }],
      cmdline: `${common} gs.role=client gs.net=eth0:169.254.2.3/24 gs.primary=169.254.2.1`,
      memoryMiB: 192,
      log: join(dir, 'client.console.log'),
    },
  };
}

/** Each VM's disks: overlays over the guest image's (the client's data disk empty). */
export async function prepareDisks(vms: Record<Role, VmSpec>, image: Image, dir: string): Promise<void> {
  for (const vm of Object.values(vms)) {
    const f = (t: string) => join(dir, `${vm.role}.${t}.qcow2`);
    vm.disks.vda = f('vda');
    await run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      join(image.dir, 'root.qcow2'),
      '-F',
      'qcow2',
      f('vda'),
    ]);
    vm.disks.vdb = f('vdb');
    if (vm.role === 'client') {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', f('vdb'), '64M']);
    } else {
      for (const [t, base] of [
        ['vdb', 'data.qcow2'],
        ['vdc', 'wal.qcow2'],
      ]) {
        vm.disks[t] = f(t);
        await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(image.dir, base), '-F', 'qcow2', f(t)]);
      }
    }
  }
}

/**
 * Workload VMs for the crash-consistency check (docs/consistency.md): TCG guests booting Debian's cloud kernel
 * directly with an initramfs of busybox-static (built from Debian packages by scripts/build-guest.sh, cached),
 * whose /init (scripts/guest-init.sh) writes dependent records to its two virtio disks in a loop.
 *
 * A {@link WorkloadPair} is two such VMs, a writer and an acker, joined through a {@link SerialRelay}: each VM has a
 * second serial port (`ttyS1` in the guest) on a unix socket, and the relay forwards the writer's "w n" lines to
 * the acker and the acker's "a n" lines back. The writer writes step n durably, tells the acker, and waits for its
 * answer; the acker writes "acknowledged n" durably before it answers. So any consistent cut of the pair has
 * `ack(acker) <= written(writer) <= ack(acker) + 1`, and each VM's own disks `B.n <= A.n <= B.n + 1`.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { escapeXml } from '../hypervisor/domain-xml';
import { REPO_ROOT } from './tools';
import { DEFAULT_RING, type WorkloadRole } from './workload';

const run = promisify(execFile);

export { DEFAULT_RING, type WorkloadRole };

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
}

let image: Promise<GuestImage> | undefined;

/**
 * The workload guest's kernel and initramfs, built once by scripts/build-guest.sh (cached under
 * `/var/lib/groupsnap/guest/<package versions>`; a cached run only resolves the versions).
 */
export function ensureGuestImage(): Promise<GuestImage> {
  image ??= run('bash', [join(REPO_ROOT, 'scripts/build-guest.sh')], { maxBuffer: 1 << 20 }).then(
    ({ stdout }) => {
      const dir = stdout.trim().split('\n').pop()!;
      return { dir, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img') };
    },
    (err: Error & { stderr?: string }) => {
      image = undefined;
      throw new Error(`scripts/build-guest.sh failed: ${err.stderr ?? err.message}`);
    },
  );
  return image;
}

export interface WorkloadVmSpec {
  name: string;
  role: WorkloadRole;
  /** Disk target (`vda` = disk A, `vdb` = disk B) -> qcow2 image file. */
  disks: Record<string, string>;
  image: GuestImage;
  /** The guest console (ttyS0) goes to this file. */
  consoleLog: string;
  /** Unix socket that QEMU listens on for ttyS1 (the relay connects to it); none for a solo VM. */
  relaySocket?: string;
  /** @default 96 */
  memoryMiB?: number;
  /** Seconds the guest sleeps between steps (busybox sleep, fractions allowed). @default 0 */
  pauseS?: number;
  /** @default DEFAULT_RING */
  ring?: number;
}

/** Direct kernel boot under TCG (`type='qemu'`: KVM kernels hang on some hosts), 1 vCPU, 2 virtio qcow2 disks. */
export function workloadDomainXml(spec: WorkloadVmSpec): string {
  const cmdline = [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    `gs.role=${spec.role}`,
    `gs.ring=${spec.ring ?? DEFAULT_RING}`,
    `gs.pause=${spec.pauseS ?? 0}`,
  ].join(' ');
  const disks = Object.entries(spec.disks)
    .map(
      ([target, file]) =>
        `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>` +
        `<source file='${escapeXml(file)}'/><target dev='${target}' bus='virtio'/></disk>`,
    )
    .join('');
  const relay = spec.relaySocket
    ? `<serial type='unix'><source mode='bind' path='${escapeXml(spec.relaySocket)}'/><target port='1'/></serial>`
    : '';
  return (
    `<domain type='qemu'><name>${escapeXml(spec.name)}</name>` +
    `<memory unit='MiB'>${spec.memoryMiB ?? 96}</memory><vcpu>1</vcpu>` +
    `<os><type arch='x86_64' machine='q35'>hvm</type><kernel>${escapeXml(spec.image.kernel)}</kernel>` +
    `<initrd>${escapeXml(spec.image.initrd)}</initrd><cmdline>${escapeXml(cmdline)}</cmdline></os>` +
    `<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>` +
    `<devices>${disks}` +
    `<serial type='file'><source path='${escapeXml(spec.consoleLog)}'/><target port='0'/></serial>${relay}` +
    `<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>`
  );
}

/**
 * Forwards lines between the writer's and the acker's ttyS1 (QEMU listens on a unix socket per VM; the relay is
 * the client of both): "w n" from the writer to the acker, "a n" from the acker to the writer. Anything else
 * (line noise before the guest set its port to raw mode) is dropped.
 */
export class SerialRelay {
  /** Highest step the writer announced / the acker acknowledged, as seen passing through. */
  lastWritten = 0;
  lastAcked = 0;
  private closed = false;

  private constructor(
    private readonly writer: Socket,
    private readonly acker: Socket,
  ) {
    this.pipe(writer, acker, /^w (\d+)$/, (n) => (this.lastWritten = Math.max(this.lastWritten, n)));
    this.pipe(acker, writer, /^a (\d+)$/, (n) => (this.lastAcked = Math.max(this.lastAcked, n)));
  }

  static async connect(writerSocket: string, ackerSocket: string, timeoutMs = 10_000): Promise<SerialRelay> {
    const [w, a] = await Promise.all([connectUnix(writerSocket, timeoutMs), connectUnix(ackerSocket, timeoutMs)]);
    return new SerialRelay(w, a);
  }

  private pipe(from: Socket, to: Socket, pattern: RegExp, seen: (n: number) => void): void {
    let buffered = '';
    from.setEncoding('latin1');
    from.on('data', (chunk: string) => {
      buffered += chunk;
      const lines = buffered.split(/\r?\n|\r/);
      buffered = lines.pop()!.slice(-64);
      for (const line of lines) {
        const m = pattern.exec(line.trim());
        if (!m) continue;
        seen(Number(m[1]));
        if (!this.closed && !to.destroyed) to.write(`${m[0]}\n`);
      }
    });
    // A VM going away (destroyed at the end) closes its socket; nothing to do but stop forwarding.
    from.on('error', () => undefined);
  }

  close(): void {
    this.closed = true;
    this.writer.destroy();
    this.acker.destroy();
  }
}

async function connectUnix(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path);
        s.once('connect', () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`cannot connect to ${path}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export interface WorkloadVm {
  name: string;
  role: WorkloadRole;
  /** Disk target -> image file as created (the first snapshot's image; later ones are overlays). */
  disks: Record<string, string>;
  consoleLog: string;
}

export interface WorkloadPairOptions {
  /**
   * Name prefix: the VMs are `<prefix>-writer-<random>` and `<prefix>-acker-<random>`, so a host worker scoped to
   * `<prefix>-writer-` (dev/scoped-hypervisor.ts) sees every writer made with this prefix and its clones, and no
   * acker.
   */
  prefix: string;
  /** @default 'qemu:///system' */
  uri?: string;
  /** @default 96 */
  memoryMiB?: number;
  /** Seconds each guest sleeps between steps. @default 0 */
  pauseS?: number;
}

/**
 * A writer VM and an acker VM with their relay, in a temp dir of their own. `destroy()` stops and undefines both
 * and removes the directory (snapshot overlays included): call it in a `finally`/`afterAll`.
 */
export class WorkloadPair {
  relay: SerialRelay | undefined;

  private constructor(
    readonly conn: libvirt.Connection,
    readonly dir: string,
    readonly writer: WorkloadVm,
    readonly acker: WorkloadVm,
  ) {}

  get vms(): WorkloadVm[] {
    return [this.writer, this.acker];
  }

  static async create(options: WorkloadPairOptions): Promise<WorkloadPair> {
    const guest = await ensureGuestImage();
    const conn = await libvirt.open(options.uri ?? 'qemu:///system');
    // Short: unix socket paths are limited to 107 bytes.
    const dir = await mkdtemp(join(tmpdir(), 'gs-wl-'));
    const suffix = Math.random().toString(36).slice(2, 8);
    const vm = (role: WorkloadRole): WorkloadVm => {
      const name = `${options.prefix}-${role}-${suffix}`;
      return {
        name,
        role,
        disks: { vda: join(dir, `${role}-vda.qcow2`), vdb: join(dir, `${role}-vdb.qcow2`) },
        consoleLog: join(dir, `${role}.console.log`),
      };
    };
    const pair = new WorkloadPair(conn, dir, vm('writer'), vm('acker'));
    try {
      for (const v of pair.vms) {
        for (const file of Object.values(v.disks)) await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, '64M']);
        const xml = workloadDomainXml({
          ...v,
          image: guest,
          relaySocket: join(dir, `${v.role}.sock`),
          memoryMiB: options.memoryMiB,
          pauseS: options.pauseS,
        });
        const dom = await conn.defineXML(xml);
        await dom.create();
        dom.free();
      }
      pair.relay = await SerialRelay.connect(join(dir, 'writer.sock'), join(dir, 'acker.sock'));
      return pair;
    } catch (err) {
      await pair.destroy();
      throw err;
    }
  }

  /** What the guest printed on its console so far. */
  console(vm: WorkloadVm): string {
    try {
      return readFileSync(vm.consoleLog, 'latin1');
    } catch {
      return '';
    }
  }

  /**
   * Waits until the acker has acknowledged at least `steps` steps (the relay saw them), i.e. both guests booted
   * and the workload runs.
   * @throws Error with both consoles when that takes longer than `timeoutMs`.
   */
  async waitForSteps(steps: number, timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((this.relay?.lastAcked ?? 0) < steps) {
      if (Date.now() > deadline) {
        throw new Error(
          `workload made ${this.relay?.lastAcked ?? 0} of ${steps} steps in ${timeoutMs} ms\n` +
            this.vms.map((v) => `--- ${v.name} console:\n${this.console(v).slice(-2000)}`).join('\n'),
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async destroy(): Promise<void> {
    this.relay?.close();
    // Clones restored from the pair's snapshots (`<name>-<suffix>`) that a failed run left: their disks are in `dir`.
    const names = this.vms.map((v) => v.name);
    const leftover = (await this.conn.listAllDomains())
      .map((d) => d.name)
      .filter((n) => !names.includes(n) && names.some((v) => n.startsWith(`${v}-`)));
    for (const v of [...leftover, ...names]) {
      try {
        const dom = await this.conn.lookupByName(v);
        if ((await dom.state()).state !== 'shutoff') await dom.destroy().catch(() => undefined);
        await dom.undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA).catch(() => dom.undefine());
        dom.free();
      } catch (err) {
        if (!(err instanceof libvirt.DomainNotFoundError)) throw err;
      }
    }
    await rm(this.dir, { recursive: true, force: true });
    await this.conn.close();
  }
}

/**
 * Two (or more) real hypervisor hosts on one machine, for tests and the DR demo:
 * - host "system": the machine's libvirtd (`qemu:///system`, QEMU as root, KVM when it works);
 * - host "user": a dedicated Unix user's libvirt session daemon (`qemu:///session` of that user: its own QEMU
 *   processes, domain definitions, state and image directory; TCG), set up by scripts/setup-hypervisor-host.sh.
 * Each host's groupsnap worker (and the guard it starts) runs in a network namespace of its own, joined to the root
 * namespace by a veth pair on a bridge with link-local addresses: host-to-Temporal traffic is real network traffic,
 * and {@link HypervisorHosts.cut} takes a host off the network (`ip link set down`).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Client } from '@temporalio/client';
import { hostsWithoutWorker } from '../client';
import { runningGuardPid } from '../worker/guard';
import { installedHostPackage, type HostPackage } from './host-package';
import { REPO_ROOT } from './tools';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The built CLI the host workers run. */
export const CLI_ENTRY = join(REPO_ROOT, 'dist/cli/main.js');

export interface UnixUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
  /** `XDG_RUNTIME_DIR` of its session daemon. */
  runtimeDir: string;
}

export interface HypervisorHost {
  /** groupsnap host id. */
  readonly id: string;
  /** libvirt URI for this (root) process in the root namespace. */
  readonly uri: string;
  /** libvirt URI the host's own worker uses. */
  readonly workerUri: string;
  /** Where this host's VM images live (owned by the host's user). */
  readonly imagesDir: string;
  /** The user QEMU and the worker run as (undefined: root, the system libvirtd). */
  readonly user: UnixUser | undefined;
  readonly virtType: 'kvm' | 'qemu';
  /** Network namespace of the host's worker and guard. */
  readonly netns: string;
  /** The host's address inside its namespace. */
  readonly ip: string;
  /** Root-namespace end of the host's veth pair (down: the host is cut off). */
  readonly veth: string;
}

export interface HypervisorHostsOptions {
  /** Host ids: the first is the system libvirtd, each further one a session daemon of `users[i-1]`. */
  ids: string[];
  /** Unix users of the extra hosts. @default ['gshostb'] */
  users?: string[];
  /** Images dir of the system host. @default a new temp dir, removed by `destroy()` */
  systemImagesDir?: string;
}

/** Runs `ip` with arguments; throws with its stderr. */
async function ip(...args: string[]): Promise<string> {
  try {
    return (await run('ip', args)).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

/** 169.254.169.0/24 holds cloud metadata services (169.254.169.254): test traffic never goes there. */
export const RESERVED_LINK_LOCAL_SUBNETS: readonly number[] = [169, 254];

/**
 * The third octet of a 169.254.N.0/24 subnet that no address in `used` (the output of `ip -o -4 addr show`) is in
 * and that is not reserved; `random` in [0, 1) as Math.random.
 * @throws Error when every candidate is taken
 */
export function pickTestSubnet(used: string, random: () => number = Math.random): number {
  const candidates = Array.from({ length: 150 }, (_, i) => 100 + i).filter(
    (n) => !RESERVED_LINK_LOCAL_SUBNETS.includes(n) && !used.includes(` 169.254.${n}.`),
  );
  if (candidates.length === 0) throw new Error('no free 169.254.N.0/24 subnet');
  return candidates[Math.floor(random() * candidates.length)];
}

/** A 169.254.N.0/24 subnet no interface of the root namespace uses yet (never 169.254.169.0/24). */
async function freeSubnet(): Promise<number> {
  return pickTestSubnet(await ip('-o', '-4', 'addr', 'show'));
}

/**
 * Creates the user (idempotent) and starts its session daemon when it does not answer; returns the user.
 * @throws Error with the script's message when set-up fails (e.g. not root)
 */
export async function ensureHostUser(name: string): Promise<UnixUser> {
  let runtimeDir: string;
  try {
    runtimeDir = (await run('bash', [join(REPO_ROOT, 'scripts/setup-hypervisor-host.sh'), name])).stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`scripts/setup-hypervisor-host.sh ${name} failed: ${(e.stderr || e.message).trim()}`);
  }
  const [uid, gid, home] = await Promise.all([
    run('id', ['-u', name]).then((r) => Number(r.stdout.trim())),
    run('id', ['-g', name]).then((r) => Number(r.stdout.trim())),
    run('getent', ['passwd', name]).then((r) => r.stdout.trim().split(':')[5]),
  ]);
  return { name, uid, gid, home, runtimeDir };
}

/** The hosts and their network, made by {@link HypervisorHosts.create}; `destroy()` removes what it made. */
export class HypervisorHosts {
  private readonly workers = new Set<HostWorker>();
  private readonly forwarders: { server: Server; sockets: Set<Socket> }[] = [];

  private constructor(
    readonly hosts: HypervisorHost[],
    /** Root-namespace address (on the bridge) that the hosts reach: bind the Temporal server here. */
    readonly serverIp: string,
    private readonly bridge: string,
    private readonly ownedDirs: string[],
  ) {}

  static async create(options: HypervisorHostsOptions): Promise<HypervisorHosts> {
    const users = options.users ?? ['gshostb'];
    if (options.ids.length < 1 || options.ids.length > users.length + 1)
      throw new Error(`give 1 to ${users.length + 1} host ids`);
    const n = await freeSubnet();
    const tag = `gs${n}`;
    const bridge = `${tag}br`;
    const ownedDirs: string[] = [];
    const made: HypervisorHosts = new HypervisorHosts([], `169.254.${n}.1`, bridge, ownedDirs);
    try {
      await ip('link', 'add', bridge, 'type', 'bridge', 'forward_delay', '0', 'stp_state', '0');
      await ip('addr', 'add', `169.254.${n}.1/24`, 'dev', bridge);
      await ip('link', 'set', bridge, 'up');
      for (const [i, id] of options.ids.entries()) {
        const netns = `${tag}-h${i}`;
        const veth = `${tag}h${i}`;
        const hostIp = `169.254.${n}.${10 + i}`;
        await ip('netns', 'add', netns);
        await ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', `${veth}p`);
        await ip('link', 'set', `${veth}p`, 'netns', netns);
        await ip('link', 'set', veth, 'master', bridge);
        await ip('link', 'set', veth, 'up');
        await ip('-n', netns, 'link', 'set', 'lo', 'up');
        await ip('-n', netns, 'link', 'set', `${veth}p`, 'name', 'eth0');
        await ip('-n', netns, 'addr', 'add', `${hostIp}/24`, 'dev', 'eth0');
        await ip('-n', netns, 'link', 'set', 'eth0', 'up');
        let host: HypervisorHost;
        if (i === 0) {
          let imagesDir = options.systemImagesDir;
          if (!imagesDir) {
            imagesDir = await mkdtemp(join(tmpdir(), `groupsnap-${id}-images-`));
            ownedDirs.push(imagesDir);
          }
          const { virtType } = await import('./vms');
          host = {
            id,
            uri: 'qemu:///system',
            workerUri: 'qemu:///system',
            imagesDir,
            user: undefined,
            virtType: virtType(),
            netns,
            ip: hostIp,
            veth,
          };
        } else {
          const user = await ensureHostUser(users[i - 1]);
          // A directory of this fixture's own inside the user's images dir, so destroy() removes only what it made.
          const imagesDir = join(user.home, '.local/share/libvirt/images', `${tag}-${id}`);
          mkdirSync(imagesDir, { recursive: true });
          chownSync(imagesDir, user.uid, user.gid);
          ownedDirs.push(imagesDir);
          host = {
            id,
            uri: `qemu+unix:///session?socket=${user.runtimeDir}/libvirt/libvirt-sock`,
            workerUri: 'qemu:///session',
            imagesDir,
            user,
            virtType: 'qemu',
            netns,
            ip: hostIp,
            veth,
          };
        }
        made.hosts.push(host);
      }
      return made;
    } catch (err) {
      await made.destroy();
      throw err;
    }
  }

  host(id: string): HypervisorHost {
    const h = this.hosts.find((x) => x.id === id);
    if (!h) throw new Error(`no host ${id}`);
    return h;
  }

  /**
   * Makes a TCP service of the root namespace's loopback (e.g. the Temporal dev server at `127.0.0.1:port`)
   * reachable from the hosts' namespaces at `serverIp:port`, through a forwarder in this process; returns that
   * address. (The dev server itself cannot listen on the bridge: with `--ip` other than loopback, its frontend
   * still dials its history service at 127.0.0.1 and every workflow start fails, CLI 1.5.1.)
   */
  async expose(address: string): Promise<string> {
    const [host, port] = [
      address.slice(0, address.lastIndexOf(':')),
      Number(address.slice(address.lastIndexOf(':') + 1)),
    ];
    const sockets = new Set<Socket>();
    const server = createServer((inbound) => {
      const outbound = createConnection({ host, port });
      for (const s of [inbound, outbound]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {
          inbound.destroy();
          outbound.destroy();
        });
      }
      inbound.pipe(outbound).pipe(inbound);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.serverIp, () => resolve());
    });
    this.forwarders.push({ server, sockets });
    return `${this.serverIp}:${port}`;
  }

  /** Takes the host off the network: its worker and guard can no longer reach Temporal (libvirt they still do). */
  async cut(id: string): Promise<void> {
    await ip('link', 'set', this.host(id).veth, 'down');
  }

  /** Whether a TCP connection from the host's namespace to `address` (host:port) opens within 3 s. */
  async reachable(id: string, address: string): Promise<boolean> {
    const i = address.lastIndexOf(':');
    const probe = `exec 3<>/dev/tcp/${address.slice(0, i)}/${address.slice(i + 1)}`;
    try {
      await run('ip', ['netns', 'exec', this.host(id).netns, 'timeout', '3', 'bash', '-c', probe]);
      return true;
    } catch {
      return false;
    }
  }

  /** Puts a cut host back on the network; with `address`, waits (up to 30 s) until the host reaches it again. */
  async reconnect(id: string, address?: string): Promise<void> {
    await ip('link', 'set', this.host(id).veth, 'up');
    const deadline = Date.now() + 30_000;
    while (address && !(await this.reachable(id, address))) {
      if (Date.now() > deadline) throw new Error(`host ${id} does not reach ${address} 30 s after reconnecting`);
      await sleep(200);
    }
  }

  /** Gives a file or directory made by this (root) process to the host's user, so its QEMU and worker can use it. */
  giveToHost(id: string, path: string): void {
    const user = this.host(id).user;
    if (user) chownSync(path, user.uid, user.gid);
  }

  /**
   * A `groupsnap worker` process for host `id`, inside the host's network namespace, as the host's user, against
   * the Temporal server at `address` (reachable from the namespace, e.g. `serverIp:port`). Not started yet.
   */
  async worker(
    id: string,
    address: string,
    options: {
      args?: string[];
      workflows?: boolean;
      as?: { id?: string; imagesDir?: string };
      /** Extra environment of the worker (e.g. the `AWS_*` settings of an S3 repository). */
      env?: Record<string, string>;
    } = {},
  ): Promise<HostWorker> {
    // `as`: another host id (and image directory) served by the same hypervisor, e.g. a host with a full disk.
    const host = { ...this.host(id), ...(options.as ?? {}) };
    const stateDir = await mkdtemp(join(tmpdir(), `groupsnap-state-${id}-`));
    this.giveToHost(id, stateDir);
    const w = new HostWorker(host, stateDir, address, options);
    this.workers.add(w);
    return w;
  }

  /** Stops the workers and guards started through it, removes the namespaces, the bridge and the owned dirs. */
  async destroy(): Promise<void> {
    for (const w of this.workers) await w.stop().catch(() => undefined);
    for (const f of this.forwarders) {
      for (const s of f.sockets) s.destroy();
      await new Promise((resolve) => f.server.close(resolve));
    }
    for (const h of this.hosts) {
      await ip('netns', 'del', h.netns).catch(() => undefined);
      await ip('link', 'del', h.veth).catch(() => undefined);
    }
    await ip('link', 'del', this.bridge).catch(() => undefined);
    for (const d of this.ownedDirs) await rm(d, { recursive: true, force: true });
  }
}

/** One host's `groupsnap worker` process (which starts the host's guard), in the host's namespace and as its user. */
export class HostWorker {
  private child: ChildProcess | undefined;
  /** stdout + stderr of the current process. */
  output = '';
  /** The installed package a host of another Unix user runs (set by start()). */
  private installed: HostPackage | undefined;

  constructor(
    readonly host: HypervisorHost,
    readonly stateDir: string,
    readonly address: string,
    readonly options: { args?: string[]; workflows?: boolean; env?: Record<string, string> } = {},
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** The command line: `ip netns exec` and `setpriv` exec in place, so the child's pid is the worker's. */
  private command(): string[] {
    const { host } = this;
    const worker = [
      this.installed?.cli ?? CLI_ENTRY,
      'worker',
      '--host',
      host.id,
      '--libvirt-uri',
      host.workerUri,
      '--state-dir',
      this.stateDir,
      '--images-dir',
      host.imagesDir,
      '--address',
      this.address,
      ...(this.options.workflows ? [] : ['--no-workflows']),
      ...(this.options.args ?? []),
    ];
    const user = host.user;
    const asUser = user
      ? [
          'setpriv',
          `--reuid=${user.uid}`,
          `--regid=${user.gid}`,
          '--init-groups',
          'env',
          '-i',
          `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`,
          `HOME=${user.home}`,
          `USER=${user.name}`,
          `XDG_RUNTIME_DIR=${user.runtimeDir}`,
        ]
      : ['env', `GROUPSNAP_LIBVIRT_URI=${host.workerUri}`];
    const extraEnv = Object.entries(this.options.env ?? {}).map(([k, v]) => `${k}=${v}`);
    const node = this.installed?.node ?? process.execPath;
    return ['ip', 'netns', 'exec', host.netns, ...asUser, ...extraEnv, node, ...worker];
  }

  /** Starts the worker; resolves once it polls its host queue. */
  async start(client: Client, timeoutMs = 90_000): Promise<void> {
    if (!existsSync(CLI_ENTRY)) throw new Error(`${CLI_ENTRY} is missing: run 'npm run build'`);
    // Another user cannot read a checkout in a private directory: it runs the packed package, as a real host would.
    if (this.host.user) this.installed ??= await installedHostPackage();
    const [cmd, ...args] = this.command();
    this.output = '';
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.on('data', (d) => (this.output += d));
    child.stderr!.on('data', (d) => (this.output += d));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (child.exitCode !== null)
        throw new Error(`worker ${this.host.id} exited (${child.exitCode}):\n${this.output}`);
      if (this.output.includes('"worker started"') && (await hostsWithoutWorker(client, [this.host.id])).length === 0)
        return;
      if (Date.now() > deadline)
        throw new Error(`worker ${this.host.id} not polling after ${timeoutMs} ms:\n${this.output}`);
      await sleep(100);
    }
  }

  /** Signals the worker process (SIGKILL: its guard lives on). */
  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.kill(signal);
    });
  }

  /** Stops the worker (SIGTERM) and its guard, and removes the state dir. */
  async stop(): Promise<void> {
    await this.kill('SIGTERM');
    const guard = runningGuardPid(this.stateDir);
    if (guard) {
      try {
        process.kill(guard, 'SIGTERM');
      } catch {
        // already gone
      }
      for (let i = 0; i < 50 && runningGuardPid(this.stateDir); i++) await sleep(100);
    }
    await rm(this.stateDir, { recursive: true, force: true });
  }
}

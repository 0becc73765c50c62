/**
 * Freeze-time benchmark: groupsnap (through Temporal) side by side with the libvirt floor (the same
 * pause-all / snapshot-all / resume-all through the binding in one process) and the naive virsh script, on the
 * same real VMs, interleaved round by round. Writes raw samples to bench/results/ and regenerates BENCHMARKS.md.
 *
 *   npm run bench -- [--sizes 1,2,4,8,16] [--rounds 10] [--hosts 1,2,4,8,16,32,64] [--depth 30] [--no-big]
 *                    [--bounds 1,2,3,4,8] [--out <dir>]   (default: the repository; the smoke test writes to a temp dir)
 *   npm run bench -- --hosts-only bench/results/<run>.json [--hosts 2,4,8,16,32,64] [--rounds 6] [--max-freeze-ms 60000]
 *                    runs only the simulated hosts, with latencies drawn around that run's 1-VM floor, and writes
 *                    that run's samples with its simulated-host samples replaced (`hostsRun` says when and how).
 *
 * Contenders: groupsnap in its default order (`group-paused`: overlays made before the pause, each VM resumed once
 * its own snapshot is taken and the group is paused) and in the old one (`groupsnap-old`, `group-snapshotted`);
 * the old floor (pause all, snapshot all, resume all) and the new floor (`floor-early`: overlays made beforehand,
 * pause all, at most 2 snapshots in flight with REUSE_EXT, each VM resumed when its own is done), both through the
 * binding in one process; and the naive virsh script.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { nowMs } from '../activities/clock';
import { snapshotGroup, waitForHostWorkers } from '../client';
import { startDevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { VmFleet } from '../dev/vms';
import { FakeHypervisor } from '../hypervisor/fake-hypervisor';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { groupsnapWorkflowsPlugin } from '../worker/plugins';
import { createGroupsnapWorker } from '../worker/worker';
import { simRounds, startSimHosts, type SimRun } from './sim-hosts';
import type { ResumeWhen } from '../common/types';
import { describeMachine } from './machine';
import { benchCommand, integer, integerList, parseBenchOptions } from './options';
import { keepClusterSection } from './cluster-report';
import { renderReport, type BenchResults, type HypervisorStack, type Sample } from './report';

const run = promisify(execFile);

interface FreezeBenchOptions {
  sizes: number[];
  rounds: number;
  hosts: number[];
  depth: number;
  big: boolean;
  bounds: number[];
  out: string;
  hostsOnly?: string;
  maxFreezeMs?: number;
}

const command = benchCommand('freeze', 'freeze per VM: groupsnap vs the libvirt floor vs a virsh script')
  .option('--sizes <n,...>', 'group sizes (VMs)', integerList(1), [1, 2, 4, 8, 16])
  .option('--rounds <n>', 'rounds per configuration', integer(1), 10)
  .option('--hosts <n,...>', 'simulated host counts', integerList(1), [1, 2, 4, 8, 16, 32, 64])
  .option('--depth <n>', 'chain depth reached by snapshot after snapshot', integer(1), 30)
  .option('--no-big', 'leave out the disk-size comparison (1 GiB vs 32 GiB disks)')
  .option('--bounds <n,...>', 'snapshots in flight tried by the new floor at 8 VMs', integerList(1), [1, 2, 3, 4, 8])
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT)
  .option('--hosts-only <results.json>', "run only the simulated hosts, over an earlier run's real-VM samples")
  .option('--max-freeze-ms <n>', "the simulated groups' freeze bound (default 5000)", integer(1));

type Contender = 'groupsnap' | 'groupsnap-old' | 'floor' | 'floor-early' | 'naive';

/** Every contender of the group-size comparison, in the report's order. */
export const CONTENDERS: Contender[] = ['groupsnap', 'groupsnap-old', 'floor', 'floor-early', 'naive'];

interface RoundResult {
  /** Per VM: host-measured freeze (pause issued to resume returned), ms. */
  freezeMs: Record<string, number>;
  endToEndMs: number;
  /** Floor only: wall time of each phase across the group (evidence of where the freeze goes). */
  phasesMs?: { pause: number; snapshot: number; resume: number };
}

/** QEMU-side cross-check: suspended -> resumed lifecycle events per VM, as they reach this process. */
class EventClock {
  private suspended = new Map<string, number>();
  readonly freezes = new Map<string, number>();

  onEvent(e: libvirt.LifecycleEvent): void {
    const t = Number(e.monotonicNs) / 1e6;
    if (e.event === 'suspended') this.suspended.set(e.name, t);
    if (e.event === 'resumed' && this.suspended.has(e.name)) {
      this.freezes.set(e.name, t - this.suspended.get(e.name)!);
      this.suspended.delete(e.name);
    }
  }

  reset(): void {
    this.suspended.clear();
    this.freezes.clear();
  }
}

export class Bench {
  readonly samples: Sample[] = [];
  private readonly events = new EventClock();
  private seq = 0;

  constructor(
    readonly fleet: VmFleet,
    readonly client: Client,
    readonly hostId: string,
  ) {}

  async init(): Promise<void> {
    await this.fleet.conn.onLifecycle((e) => this.events.onEvent(e));
  }

  private overlay(vm: string, target: string, tag: string): string {
    return join(this.fleet.dir, `${vm}.${target}.${tag}.qcow2`);
  }

  /** Puts every VM's disks back on their base images (active commit of the one overlay, then removal). */
  async reset(vms: string[]): Promise<void> {
    await Promise.all(
      vms.map(async (name) => {
        const dom = await this.fleet.conn.lookupByName(name);
        const base = this.fleet.vms.find((v) => v.name === name)!.disks;
        const disks = parseDomainXml(await dom.xml()).disks;
        for (const d of disks) {
          if (d.source && d.source !== base[d.target]) {
            await dom.commit({ disk: d.target, base: base[d.target], active: true });
            rmSync(d.source, { force: true });
          }
        }
        dom.free();
      }),
    );
    for (const f of (await run('sh', ['-c', `ls ${this.fleet.dir}`])).stdout.split('\n')) {
      if (f.endsWith('.manifest.json')) rmSync(join(this.fleet.dir, f));
    }
  }

  /** Snapshots in flight of the new floor. */
  bound = 2;

  async groupsnap(vms: string[], resumeWhen: ResumeWhen = 'group-paused'): Promise<RoundResult> {
    const t0 = nowMs();
    const result = await snapshotGroup(this.client, {
      group: 'bench',
      vms: vms.map((domain) => ({ domain, host: this.hostId })),
      resumeWhen,
    });
    const endToEndMs = nowMs() - t0;
    if (result.status !== 'completed') throw new Error(`groupsnap snapshot failed: ${result.error}`);
    return { freezeMs: Object.fromEntries(result.vms.map((v) => [v.domain, v.freezeMs!])), endToEndMs };
  }

  async floor(vms: string[]): Promise<RoundResult> {
    const tag = `floor${++this.seq}`;
    const doms = await Promise.all(vms.map((v) => this.fleet.conn.lookupByName(v)));
    const xml = (d: libvirt.Domain) => this.snapshotXml(d.name, tag);
    const resumed: Record<string, number> = {};
    const t0 = nowMs();
    const paused = await this.pauseAll(doms);
    const t1 = nowMs();
    await Promise.all(
      doms.map((d) => d.snapshotCreateXML(xml(d), libvirt.DISK_ONLY | libvirt.ATOMIC | libvirt.NO_METADATA)),
    );
    const t2 = nowMs();
    await Promise.all(
      doms.map(async (d) => {
        await d.resume();
        resumed[d.name] = nowMs();
      }),
    );
    const endToEndMs = nowMs() - t0;
    for (const d of doms) d.free();
    return {
      freezeMs: Object.fromEntries(vms.map((v) => [v, resumed[v] - paused[v]])),
      endToEndMs,
      phasesMs: { pause: t1 - t0, snapshot: t2 - t1, resume: t0 + endToEndMs - t2 },
    };
  }

  'groupsnap-old'(vms: string[]): Promise<RoundResult> {
    return this.groupsnap(vms, 'group-snapshotted');
  }

  /**
   * The floor of the group-paused order: overlays made beforehand (outside the window, not timed), pause all, then
   * at most `bound` snapshots in flight reusing them, each VM resumed as soon as its own snapshot is done.
   */
  async 'floor-early'(vms: string[]): Promise<RoundResult> {
    const tag = `early${++this.seq}`;
    const doms = await Promise.all(vms.map((v) => this.fleet.conn.lookupByName(v)));
    await Promise.all(
      doms.flatMap((d) =>
        ['vda', 'vdb'].map(async (t) => {
          const top = await this.activeImage(d, t);
          await run('qemu-img', [
            'create',
            '-q',
            '-f',
            'qcow2',
            '-b',
            top,
            '-F',
            'qcow2',
            this.overlay(d.name, t, tag),
          ]);
        }),
      ),
    );
    const xml = (d: libvirt.Domain) => this.snapshotXml(d.name, tag);
    const resumed: Record<string, number> = {};
    const t0 = nowMs();
    const paused = await this.pauseAll(doms);
    let next = 0;
    const flags = libvirt.DISK_ONLY | libvirt.ATOMIC | libvirt.NO_METADATA | libvirt.REUSE_EXT;
    await Promise.all(
      Array.from({ length: Math.min(this.bound, doms.length) }, async () => {
        while (next < doms.length) {
          const d = doms[next++];
          await d.snapshotCreateXML(xml(d), flags);
          await d.resume();
          resumed[d.name] = nowMs();
        }
      }),
    );
    const endToEndMs = nowMs() - t0;
    for (const d of doms) d.free();
    return { freezeMs: Object.fromEntries(vms.map((v) => [v, resumed[v] - paused[v]])), endToEndMs };
  }

  /** A disk-only snapshot of both disks onto this bench's overlay files for `tag`. */
  private snapshotXml(vm: string, tag: string): string {
    return (
      `<domainsnapshot><name>${tag}</name><disks>` +
      ['vda', 'vdb']
        .map((t) => `<disk name='${t}' snapshot='external'><source file='${this.overlay(vm, t, tag)}'/></disk>`)
        .join('') +
      `</disks></domainsnapshot>`
    );
  }

  /** Pauses every VM at once; returns when each pause was issued. */
  private async pauseAll(doms: libvirt.Domain[]): Promise<Record<string, number>> {
    const paused: Record<string, number> = {};
    await Promise.all(
      doms.map((d) => {
        paused[d.name] = nowMs();
        return d.suspend();
      }),
    );
    return paused;
  }

  private async activeImage(d: libvirt.Domain, target: string): Promise<string> {
    return parseDomainXml(await d.xml()).disks.find((k) => k.target === target)!.source!;
  }

  async naive(vms: string[]): Promise<RoundResult> {
    const tag = `naive${++this.seq}`;
    const lines = [
      'set -e',
      ...vms.map((v) => `echo "paused ${v} $(date +%s%N)"; virsh -q suspend ${v} >/dev/null`),
      ...vms.map(
        (v) =>
          `virsh -q snapshot-create-as ${v} ${tag} --disk-only --atomic --no-metadata ` +
          `--diskspec vda,file=${this.overlay(v, 'vda', tag)} --diskspec vdb,file=${this.overlay(v, 'vdb', tag)} >/dev/null`,
      ),
      ...vms.map((v) => `virsh -q resume ${v} >/dev/null; echo "resumed ${v} $(date +%s%N)"`),
    ];
    const t0 = nowMs();
    const { stdout } = await run('bash', ['-c', lines.join('\n')]);
    const endToEndMs = nowMs() - t0;
    const at: Record<string, Record<string, number>> = { paused: {}, resumed: {} };
    for (const line of stdout.trim().split('\n')) {
      const [what, vm, ns] = line.split(' ');
      at[what][vm] = Number(BigInt(ns) / 1000n) / 1000;
    }
    return { freezeMs: Object.fromEntries(vms.map((v) => [v, at.resumed[v] - at.paused[v]])), endToEndMs };
  }

  /** One round of each contender, in a rotating order, recording samples under `config`. */
  async round(
    config: Pick<Sample, 'config' | 'size' | 'disk' | 'bound'>,
    vms: string[],
    round: number,
    contenders: Contender[],
  ): Promise<void> {
    const order = contenders.map((_, i) => contenders[(i + round) % contenders.length]);
    for (const contender of order) {
      this.events.reset();
      const r = await this[contender](vms);
      await new Promise((res) => setTimeout(res, 50)); // let the last events arrive
      for (const vm of vms) {
        this.samples.push({
          ...config,
          contender,
          round,
          vm,
          freezeMs: r.freezeMs[vm],
          qemuFreezeMs: this.events.freezes.get(vm),
          endToEndMs: r.endToEndMs,
          ...(r.phasesMs ? { phasesMs: r.phasesMs } : {}),
        });
      }
      await this.reset(vms);
    }
  }
}

/**
 * The hypervisor stack a run measured (issue 15 benchmarks two: Debian 12's libvirt 9.0 / QEMU 7.2 and
 * bookworm-backports' libvirt 11.3 / QEMU 10.0). `machine.libvirt` is only the library this process loaded; this
 * records the daemon's and QEMU's versions as `virsh version --daemon` reports them, and the Debian packages. A
 * field that cannot be read is left out rather than failing the run.
 */

export async function describeStack(uri = 'qemu:///system'): Promise<HypervisorStack> {
  const stack: HypervisorStack = {};
  try {
    const { stdout } = await run('virsh', ['-c', uri, 'version', '--daemon']);
    stack.libvirtd = /Running against daemon: (\S+)/.exec(stdout)?.[1];
    stack.qemu = /Running hypervisor: QEMU (\S+)/.exec(stdout)?.[1];
  } catch {
    // virsh missing or the daemon not answering: the run itself will say so.
  }
  // dpkg-query exits 1 when a package is missing but still prints the others.
  const dpkg = await run('dpkg-query', [
    '-W',
    '-f=${Package} ${Version}\\n',
    'libvirt-daemon',
    'libvirt0',
    'qemu-system-x86',
    'qemu-utils',
  ]).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }));
  const packages = dpkg.stdout
    .trim()
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f.length === 2 && f[1] !== '');
  if (packages.length > 0) stack.packages = Object.fromEntries(packages);
  return stack;
}

export async function hostWorker(
  server: { address: string },
  hostId: string,
  hypervisor: LibvirtHypervisor | FakeHypervisor,
  stateDir: string,
  workflows: boolean,
) {
  return createGroupsnapWorker({
    connectionOptions: { address: server.address },
    namespace: 'default',
    hostId,
    hypervisor,
    stateDir,
    workflows,
  });
}

/**
 * Fake hosts whose latencies are drawn around the real figures measured in this same run: many in this process over
 * one connection (bench/sim-hosts.ts). Both barriers and both release orders, interleaved: the update barrier for
 * every size (the bench's server allows 1000 updates in flight), and thaw activities (the old order above
 * `updateBarrierMaxHosts`). Throws after the rounds if any run failed.
 */
export async function simulatedHosts(
  server: { address: string },
  client: Client,
  counts: number[],
  rounds: number,
  latency: { suspend: number; snapshot: number; resume: number },
  samples: Sample[],
  /** The groups' freeze bound (bench/cluster.ts raises it on a shared, loaded machine). @default 5000 */
  maxFreezeMs?: number,
  /** Also run a workflow worker (when no other worker does). */
  workflows = false,
) {
  const wf = workflows ? await workflowWorker(server.address) : undefined;
  try {
    for (const hostsCount of counts) {
      const sim = await startSimHosts({ address: server.address, count: hostsCount, latency, tag: `${hostsCount}` });
      let runs: SimRun[];
      try {
        const kinds = (['update', 'thaw'] as const).flatMap((barrier) =>
          (['group-paused', 'group-snapshotted'] as const).map((resumeWhen) => ({ barrier, resumeWhen })),
        );
        runs = await simRounds(client, sim, kinds, rounds, samples, maxFreezeMs);
      } finally {
        await sim.stop();
      }
      const failed = runs.find((r) => !r.completed);
      if (failed) throw new Error(`simulated snapshot failed: ${failed.error}`);
      console.error(`  simulated ${hostsCount} hosts x 8 VMs: done`);
    }
  } finally {
    await wf?.stop();
  }
}

/** A worker of groupsnap's workflows alone, on its own connection. */
export async function workflowWorker(address: string): Promise<{ stop(): Promise<void> }> {
  const connection = await NativeConnection.connect({ address });
  const plugin = groupsnapWorkflowsPlugin();
  const worker = await Worker.create({
    connection,
    namespace: 'default',
    taskQueue: plugin.taskQueue,
    plugins: [plugin],
  });
  const running = worker.run();
  return {
    async stop() {
      worker.shutdown();
      await running;
      await connection.close();
    },
  };
}

/** 1-VM floor p50 of a run: the simulated hosts' latencies are drawn around it. */
function floorOfOneVm(samples: Sample[]): number {
  const xs = samples
    .filter((s) => s.config === 'size' && s.size === 1 && s.contender === 'floor')
    .map((s) => s.freezeMs)
    .sort((a, b) => a - b);
  if (xs.length === 0) throw new Error('the run has no 1-VM floor samples (run it with --sizes including 1)');
  return xs[Math.floor(xs.length / 2)];
}

const simLatency = (floor1: number) => ({ suspend: floor1 * 0.15, snapshot: floor1 * 0.7, resume: floor1 * 0.15 });

/** Writes the raw samples to bench/results/ and regenerates BENCHMARKS.md from them. */
function writeResults(results: BenchResults, outRoot: string, name: string): void {
  const dir = join(outRoot, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(results) + '\n');
  const report = join(outRoot, 'BENCHMARKS.md');
  writeFileSync(report, keepClusterSection(report, renderReport(results, file.slice(outRoot.length + 1), outRoot)));
  console.error(`wrote ${file} and BENCHMARKS.md`);
}

/** `--hosts-only`: the simulated hosts alone, their samples put in place of an earlier run's. */
async function hostsOnly(opts: FreezeBenchOptions, from: string): Promise<void> {
  const earlier = JSON.parse(readFileSync(from, 'utf8')) as BenchResults;
  const machine = describeMachine();
  const server = await startDevServer({ dynamicConfig: { 'history.maxInFlightUpdates': 1000 } });
  const connection = await Connection.connect({ address: server.address });
  const samples: Sample[] = [];
  try {
    const client = new Client({ connection });
    await simulatedHosts(
      server,
      client,
      opts.hosts,
      opts.rounds,
      simLatency(floorOfOneVm(earlier.samples)),
      samples,
      opts.maxFreezeMs,
      true,
    );
  } finally {
    await connection.close();
    await server.stop();
  }
  const results: BenchResults = {
    ...earlier,
    samples: [...earlier.samples.filter((s) => s.config !== 'hosts'), ...samples],
    hostsRun: {
      date: machine.date,
      ...(machine.loadAvgAtStart ? { loadAvgAtStart: machine.loadAvgAtStart } : {}),
      rounds: opts.rounds,
      from: basename(from),
      ...(opts.maxFreezeMs !== undefined ? { maxFreezeMs: opts.maxFreezeMs } : {}),
    },
  };
  writeResults(results, opts.out, basename(from).replace(/\.json$/, '') + '-hosts.json');
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const opts = parseBenchOptions<FreezeBenchOptions>(command);
  if (opts.hostsOnly) return hostsOnly(opts, opts.hostsOnly);
  const { sizes, rounds, depth } = opts;
  const hostCounts = opts.hosts;
  const bigDisks = opts.big;
  const machine = describeMachine();
  const stack = await describeStack();
  console.error(`stack: ${JSON.stringify(stack)}`);
  // Lets the simulated-host runs use the update barrier at every group size.
  const server = await startDevServer({ dynamicConfig: { 'history.maxInFlightUpdates': 1000 } });
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection });
  const fleet = await VmFleet.create({ prefix: 'gs-bench', count: Math.max(...sizes) });
  const hypervisor = await LibvirtHypervisor.open('qemu:///system');
  const stateDir = join(fleet.dir, 'state');
  mkdirSync(stateDir);
  const hostId = 'bench-host';
  const worker = await hostWorker(server, hostId, hypervisor, stateDir, true);
  const running = worker.run();
  await waitForHostWorkers(client, [hostId]);
  const bench = new Bench(fleet, client, hostId);
  await bench.init();
  try {
    // Warm-up: bundle caches, connections, the server's first workflow.
    await bench.round({ config: 'warmup' }, fleet.names.slice(0, 1), 0, CONTENDERS);
    for (const size of sizes) {
      for (let round = 0; round < rounds; round++) {
        await bench.round({ config: 'size', size }, fleet.names.slice(0, size), round, CONTENDERS);
      }
      console.error(`  group of ${size}: done`);
    }
    // The new floor's bound: snapshots in flight at 8 VMs (or the largest group below it).
    const boundSize = Math.max(...sizes.filter((s) => s <= 8));
    for (let round = 0; round < rounds; round++) {
      for (const bound of opts.bounds) {
        bench.bound = bound;
        await bench.round({ config: 'bound', size: boundSize, bound }, fleet.names.slice(0, boundSize), round, [
          'floor-early',
        ]);
      }
    }
    bench.bound = 2;
    console.error(`  snapshots in flight ${opts.bounds.join(', ')}: done`);
    // Disk size: 1 GiB empty disks vs 32 GiB disks with 4 GiB written, interleaved.
    if (bigDisks) {
      let small: VmFleet | undefined;
      let big: VmFleet | undefined;
      try {
        small = await VmFleet.create({ prefix: 'gs-bench-1g', count: 2, diskSize: '1G' });
        big = await VmFleet.create({ prefix: 'gs-bench-32g', count: 2, diskSize: '32G', fillGiB: 4 });
        const benches = {
          '1G-empty': new Bench(small, client, hostId),
          '32G-4G-written': new Bench(big, client, hostId),
        };
        for (const b of Object.values(benches)) await b.init();
        for (let round = 0; round < rounds; round++) {
          for (const [disk, b] of Object.entries(benches)) {
            await b.round({ config: 'disk', disk }, b.fleet.names, round, ['groupsnap', 'floor']);
          }
        }
        for (const b of Object.values(benches)) bench.samples.push(...b.samples);
      } finally {
        await small?.destroy();
        await big?.destroy();
      }
      console.error('  disk size: done');
    }
    // Chain depth: snapshot after snapshot without retention, groupsnap vs floor at each depth.
    const depthVms = fleet.names.slice(0, Math.min(4, fleet.names.length));
    for (let d = 1; d <= depth; d++) {
      const r = await bench.groupsnap(depthVms);
      for (const vm of depthVms)
        bench.samples.push({
          config: 'depth',
          depth: d,
          contender: 'groupsnap',
          round: d,
          vm,
          freezeMs: r.freezeMs[vm],
          endToEndMs: r.endToEndMs,
        });
    }
    console.error(`  chain depth 1..${depth}: done`);
    await simulatedHosts(
      server,
      client,
      hostCounts,
      Math.max(3, Math.floor(rounds / 2)),
      simLatency(floorOfOneVm(bench.samples)),
      bench.samples,
      opts.maxFreezeMs,
    );
  } finally {
    worker.shutdown();
    await running;
    await hypervisor.close();
    await fleet.destroy();
    await connection.close();
    await server.stop();
  }
  writeResults(
    { machine, stack, rounds, samples: bench.samples },
    opts.out,
    `${machine.date.slice(0, 10)}-${machine.hostname}.json`,
  );
}

// bench/cluster.ts reuses the rounds and the simulated hosts without running this benchmark.
if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

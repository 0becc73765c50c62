/**
 * groupsnap on the production-shaped Temporal cluster (two server processes over PostgreSQL, behind a TCP load
 * balancer: dev/temporal-cluster.ts) beside the CLI's dev server (one process, SQLite), in the same run on the same
 * VMs, interleaved round by round; then the simulated-host barrier on both. Writes raw samples to
 * bench/results/cluster-<date>-<host>.json and the "Temporal cluster vs dev server" section of BENCHMARKS.md.
 *
 *   npm run bench:cluster -- [--sizes 1,4,8] [--rounds 10] [--hosts 8,64,256] [--host-rounds 3 | 10,10,3]
 *                            [--barriers update,sharded] [--latency-from bench/results/cluster-<run>.json]
 *                            [--backends dev-server,cluster] [--max-freeze-ms 60000] [--out <dir>]
 *
 * `--host-rounds` gives the rounds of every barrier at each host count (one number, or one per count).
 * `--latency-from` skips the real VMs (`--sizes`): the simulated hosts' latencies are drawn around that earlier
 * run's, so the simulated hosts alone can be measured again; the backends measured now replace theirs in that run's
 * figures, the others' are kept (one backend per run, merged: `--backends cluster --latency-from <the first run>`).
 * The simulated hosts run many per process over one connection (bench/sim-hosts.ts); every run's outcome is kept
 * (completions out of runs), with the load average when it started and the group's (and first shard's) history size.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, totalmem } from 'node:os';
import { basename, join } from 'node:path';
import * as libvirt from '@groupsnap/libvirt';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { waitForHostWorkers } from '../client';
import { startTemporalCluster, type TemporalCluster } from '../dev/temporal-cluster';
import { startDevServer, type DevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { virtType, VmFleet } from '../dev/vms';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import type { GroupsnapWorker } from '../worker/worker';
import {
  renderClusterSection,
  replaceClusterSection,
  withArmedLabels,
  type ClusterBenchResults,
} from './cluster-report';
import { Bench, hostWorker, workflowWorker } from './freeze';
import { simRounds, startSimHosts, type SimBarrier, type SimLatency } from './sim-hosts';
import type { Sample } from './report';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const listArg = (name: string, fallback: number[]) => arg(name)?.split(',').map(Number) ?? fallback;
const numArg = (name: string, fallback: number) => Number(arg(name) ?? fallback);

type Backend = 'dev-server' | 'cluster';
const BACKENDS: Backend[] = ['dev-server', 'cluster'];

/**
 * Freeze bound of the simulated groups: hundreds of hosts, two Temporal backends and PostgreSQL share this machine's
 * 2 cores (with other jobs), where a 2048-VM group can take longer than the default 5 s to freeze.
 */
const SIMULATED_MAX_FREEZE_MS = 60_000;

interface Backends {
  order: Backend[];
  of: Record<Backend, { address: string; client: Client; bench?: Bench }>;
}

/** The real-VM phase: each size on both backends, interleaved round by round; returns the 1-VM freeze p50. */
async function realVms(b: Backends, fleet: VmFleet, sizes: number[], rounds: number, samples: Sample[]) {
  // Warm-up: bundle caches, connections, each server's first workflow.
  for (const name of b.order)
    await b.of[name].bench!.round({ config: 'warmup' }, fleet.names.slice(0, 1), 0, ['groupsnap']);
  for (const size of sizes) {
    for (let round = 0; round < rounds; round++) {
      for (const name of round % 2 === 0 ? b.order : [...b.order].reverse()) {
        const bench = b.of[name].bench!;
        const from = bench.samples.length;
        await bench.round({ config: 'size', size }, fleet.names.slice(0, size), round, ['groupsnap']);
        for (const s of bench.samples.slice(from)) samples.push({ ...s, contender: name });
      }
    }
    console.error(`  group of ${size}: done`);
  }
  const floorLike = samples.filter((s) => s.config === 'size' && s.size === 1).map((s) => s.freezeMs);
  return floorLike.sort((a, c) => a - c)[Math.floor(floorLike.length / 2)] || 30;
}

/** The simulated hosts: each count on each backend (the order alternates), every barrier kind interleaved. */
async function simulated(
  b: Backends,
  opts: { hostCounts: number[]; hostRounds: number[]; barriers: SimBarrier[]; latency: SimLatency },
  results: ClusterBenchResults,
  save: () => void,
) {
  for (const [i, count] of opts.hostCounts.entries()) {
    for (const name of i % 2 === 0 ? b.order : [...b.order].reverse()) {
      const load = loadavg()[0];
      const got: Sample[] = [];
      try {
        const sim = await startSimHosts({ address: b.of[name].address, count, latency: opts.latency, tag: `${count}` });
        try {
          const kinds = opts.barriers.map((barrier) => ({ barrier, resumeWhen: 'group-paused' as const }));
          const rounds = opts.hostRounds[Math.min(i, opts.hostRounds.length - 1)];
          // Saved after every run: a run stopped by its time limit keeps what it measured.
          await simRounds(b.of[name].client, sim, kinds, rounds, got, SIMULATED_MAX_FREEZE_MS, (run, samples) => {
            results.simRuns!.push({ ...run, backend: name });
            results.samples.push(...samples.map((x) => ({ ...x, contender: name })));
            save();
          });
        } finally {
          await sim.stop();
        }
      } catch (err) {
        // A failed set-up is a finding, not a reason to lose the run's other figures.
        results.failures.push(
          `${count} simulated hosts on the ${name} (load ${load.toFixed(1)}): ${(err as Error).message}`,
        );
        console.error(`  ${results.failures[results.failures.length - 1]}`);
      }
      save();
      console.error(`  ${count} simulated hosts on the ${name}: done`);
    }
  }
}

/** Latencies drawn around a real VM's freeze: from this run's 1-VM groups, or an earlier run's file. */
function latencyAround(oneVmMs: number): SimLatency {
  return { suspend: oneVmMs * 0.15, snapshot: oneVmMs * 0.7, resume: oneVmMs * 0.15 };
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const latencyFrom = arg('latency-from');
  const sizes = latencyFrom ? [] : listArg('sizes', [1, 4, 8]);
  const rounds = numArg('rounds', 10);
  const hostCounts = listArg('hosts', [8, 64, 256]);
  // Rounds per host count: one number for all, or one per count of --hosts.
  const hostRounds = listArg('host-rounds', [3]);
  const barriers = (arg('barriers')?.split(',') ?? ['update', 'sharded']) as SimBarrier[];
  const order = (arg('backends')?.split(',') ?? BACKENDS) as Backend[];
  for (const x of barriers)
    if (!['update', 'thaw', 'sharded', 'update-unarmed', 'sharded-unarmed'].includes(x))
      throw new Error(`unknown barrier ${x}`);
  for (const x of order) if (!BACKENDS.includes(x)) throw new Error(`unknown backend ${x}`);
  const outRoot = arg('out') ?? REPO_ROOT;
  const machine = {
    hostname: hostname(),
    cores: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    virtType: virtType(),
    libvirt: libvirt.libvirtVersion(),
    node: process.version,
    loadAverageAtStart: loadavg()[0].toFixed(1),
    date: new Date().toISOString(),
  };
  console.error(`machine: ${JSON.stringify(machine)}`);
  // Both servers allow the update barrier at every simulated group size, as `npm run bench` does.
  const dynamicConfig = { 'history.maxInFlightUpdates': 1000 };
  let dev: DevServer | undefined;
  let cluster: TemporalCluster | undefined;
  let fleet: VmFleet | undefined;
  const hypervisors: LibvirtHypervisor[] = [];
  const workers: { stop(): Promise<void> }[] = [];
  const connections: Connection[] = [];
  const earlier = latencyFrom
    ? withArmedLabels(JSON.parse(readFileSync(latencyFrom, 'utf8')) as ClusterBenchResults)
    : undefined;
  const results: ClusterBenchResults = {
    armedBarrier: true,
    machine,
    rounds: earlier?.rounds ?? rounds,
    clusterStartMs: 0,
    simulatedLatencyMs: earlier?.simulatedLatencyMs ?? latencyAround(30),
    simulatedMaxFreezeMs: SIMULATED_MAX_FREEZE_MS,
    commands: [...(earlier?.commands ?? []), `npm run bench:cluster -- ${process.argv.slice(2).join(' ')}`],
    ...(latencyFrom ? { latencyFrom: earlier?.latencyFrom ?? basename(latencyFrom) } : {}),
    // An earlier run's real-VM samples, and its simulated hosts on the backends not measured now (so each backend
    // can be measured in a run of its own and the two merged).
    // Only from a run of this version (with `simRuns`): older files' simulated figures are not comparable.
    samples: (earlier?.samples ?? []).filter(
      (s) =>
        s.config !== 'hosts' ||
        (earlier?.simRuns !== undefined &&
          !(order.includes(s.contender as Backend) && hostCounts.includes(s.hosts!) && barriers.includes(s.barrier!))),
    ),
    simRuns: (earlier?.simRuns ?? []).filter(
      (r) => !(order.includes(r.backend as Backend) && hostCounts.includes(r.hosts) && barriers.includes(r.barrier)),
    ),
    failures: (earlier?.simRuns ? earlier.failures : []).filter(
      (f) => !order.some((b) => hostCounts.some((h) => f.startsWith(`${h} simulated hosts on the ${b}`))),
    ),
  };
  try {
    const t0 = Date.now();
    if (order.includes('cluster')) cluster = await startTemporalCluster({ dynamicConfig });
    results.clusterStartMs = earlier?.clusterStartMs ?? Date.now() - t0;
    if (order.includes('dev-server')) dev = await startDevServer({ dynamicConfig });
    const b: Backends = { order, of: {} as never };
    if (sizes.length > 0) fleet = await VmFleet.create({ prefix: 'gs-bench-cl', count: Math.max(...sizes) });
    for (const name of order) {
      const address = name === 'cluster' ? cluster!.address : dev!.address;
      const connection = await Connection.connect({ address });
      connections.push(connection);
      const client = new Client({ connection });
      b.of[name] = { address, client };
      if (!fleet) {
        workers.push(await workflowWorker(address));
        continue;
      }
      const hypervisor = await LibvirtHypervisor.open('qemu:///system');
      hypervisors.push(hypervisor);
      const hostId = `bench-${name}`;
      const stateDir = join(fleet.dir, 'state', name);
      mkdirSync(stateDir, { recursive: true });
      const worker: GroupsnapWorker = await hostWorker({ address }, hostId, hypervisor, stateDir, true);
      const running = worker.run();
      workers.push({ stop: () => (worker.shutdown(), running) });
      await waitForHostWorkers(client, [hostId]);
      // No QEMU lifecycle listener (Bench.init): the report does not use those figures.
      b.of[name].bench = new Bench(fleet, client, hostId);
    }
    if (fleet) results.simulatedLatencyMs = latencyAround(await realVms(b, fleet, sizes, rounds, results.samples));
    const dir = join(outRoot, 'bench', 'results');
    const file = join(dir, `cluster-${machine.date.slice(0, 10)}-${machine.hostname}.json`);
    // Written after every phase, so a crash late in the run keeps what was measured.
    const save = () => {
      mkdirSync(dir, { recursive: true });
      writeFileSync(file, JSON.stringify(results) + '\n');
      const report = join(outRoot, 'BENCHMARKS.md');
      let existing = '';
      try {
        existing = readFileSync(report, 'utf8');
      } catch {
        // a fresh output folder (the smoke test): the section alone
      }
      writeFileSync(
        report,
        replaceClusterSection(existing, renderClusterSection(results, file.slice(outRoot.length + 1))),
      );
    };
    save();
    await simulated(b, { hostCounts, hostRounds, barriers, latency: results.simulatedLatencyMs }, results, save);
    save();
    console.error(`wrote ${file} and the cluster section of BENCHMARKS.md`);
  } finally {
    for (const w of workers) await w.stop();
    for (const h of hypervisors) await h.close();
    await fleet?.destroy();
    for (const c of connections) await c.close();
    await dev?.stop();
    await cluster?.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

/**
 * groupsnap on the production-shaped Temporal cluster (two server processes over PostgreSQL, behind a TCP load
 * balancer: dev/temporal-cluster.ts) beside the CLI's dev server (one process, SQLite), in the same run on the same
 * VMs, interleaved round by round; then the simulated-host barrier on both. Writes raw samples to
 * bench/results/cluster-<date>-<host>.json and the "Temporal cluster vs dev server" section of BENCHMARKS.md.
 *
 *   npm run bench:cluster -- [--sizes 1,4,8] [--rounds 10] [--hosts 8,64] [--host-rounds 3] [--out <dir>]
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
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
import { renderClusterSection, replaceClusterSection, type ClusterBenchResults } from './cluster-report';
import { Bench, hostWorker, simulatedHosts } from './freeze';
import type { Sample } from './report';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const listArg = (name: string, fallback: number[]) => arg(name)?.split(',').map(Number) ?? fallback;
const numArg = (name: string, fallback: number) => Number(arg(name) ?? fallback);

type Backend = 'dev-server' | 'cluster';

/**
 * Freeze bound of the simulated groups: 64 workers, two Temporal backends and PostgreSQL share this machine's 2
 * cores (with other jobs), where a 512-VM group can take longer than the default 5 s to freeze.
 */
const SIMULATED_MAX_FREEZE_MS = 60_000;

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const sizes = listArg('sizes', [1, 4, 8]);
  const rounds = numArg('rounds', 10);
  const hostCounts = listArg('hosts', [8, 64]);
  const hostRounds = numArg('host-rounds', 3);
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
  const workers: { worker: GroupsnapWorker; running: Promise<void> }[] = [];
  const connections: Connection[] = [];
  const samples: Sample[] = [];
  try {
    const t0 = Date.now();
    cluster = await startTemporalCluster({ dynamicConfig });
    const clusterStartMs = Date.now() - t0;
    dev = await startDevServer({ dynamicConfig });
    console.error(`  cluster up in ${clusterStartMs} ms (${cluster.dir})`);
    fleet = await VmFleet.create({ prefix: 'gs-bench-cl', count: Math.max(...sizes) });
    const stateDir = join(fleet.dir, 'state');
    const backends: Record<Backend, { address: string; client: Client; bench: Bench }> = {} as never;
    for (const [name, address] of [
      ['dev-server', dev.address],
      ['cluster', cluster.address],
    ] as const) {
      const connection = await Connection.connect({ address });
      connections.push(connection);
      const client = new Client({ connection });
      const hypervisor = await LibvirtHypervisor.open('qemu:///system');
      hypervisors.push(hypervisor);
      const hostId = `bench-${name}`;
      mkdirSync(join(stateDir, name), { recursive: true });
      const worker = await hostWorker({ address }, hostId, hypervisor, join(stateDir, name), true);
      workers.push({ worker, running: worker.run() });
      await waitForHostWorkers(client, [hostId]);
      // No QEMU lifecycle listener (Bench.init): the report does not use those figures, and Node crashed twice here
      // with it registered during the 64-host phase ("async hook stack has become corrupted"); cause not established.
      const bench = new Bench(fleet, client, hostId);
      backends[name] = { address, client, bench };
    }
    const order: Backend[] = ['dev-server', 'cluster'];
    // Warm-up: bundle caches, connections, each server's first workflow.
    for (const b of order)
      await backends[b].bench.round({ config: 'warmup' }, fleet.names.slice(0, 1), 0, ['groupsnap']);
    for (const size of sizes) {
      for (let round = 0; round < rounds; round++) {
        for (const b of round % 2 === 0 ? order : [...order].reverse()) {
          const bench = backends[b].bench;
          const from = bench.samples.length;
          await bench.round({ config: 'size', size }, fleet.names.slice(0, size), round, ['groupsnap']);
          for (const s of bench.samples.slice(from)) samples.push({ ...s, contender: b });
        }
      }
      console.error(`  group of ${size}: done`);
    }
    const floorLike = samples.filter((s) => s.config === 'size' && s.size === 1).map((s) => s.freezeMs);
    const one = floorLike.sort((a, b) => a - b)[Math.floor(floorLike.length / 2)] || 30;
    const latency = { suspend: one * 0.15, snapshot: one * 0.7, resume: one * 0.15 };
    const failures: string[] = [];
    const dir = join(outRoot, 'bench', 'results');
    const file = join(dir, `cluster-${machine.date.slice(0, 10)}-${machine.hostname}.json`);
    // Written after every phase, so a crash late in the run keeps what was measured.
    const save = () => {
      const results: ClusterBenchResults = {
        machine,
        rounds,
        clusterStartMs,
        simulatedLatencyMs: latency,
        simulatedMaxFreezeMs: SIMULATED_MAX_FREEZE_MS,
        failures,
        samples,
      };
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
    for (const [i, count] of hostCounts.entries()) {
      for (const b of i % 2 === 0 ? order : [...order].reverse()) {
        const got: Sample[] = [];
        try {
          await simulatedHosts(
            { address: backends[b].address },
            backends[b].client,
            [count],
            hostRounds,
            latency,
            got,
            SIMULATED_MAX_FREEZE_MS,
          );
        } catch (err) {
          // A failed round is a finding, not a reason to lose the run's other figures.
          failures.push(`${count} simulated hosts on the ${b}: ${(err as Error).message}`);
          console.error(`  ${failures[failures.length - 1]}`);
        }
        samples.push(...got.map((s) => ({ ...s, contender: b })));
        save();
        console.error(`  ${count} simulated hosts on the ${b}: done`);
      }
    }
    save();
    console.error(`wrote ${file} and the cluster section of BENCHMARKS.md`);
  } finally {
    for (const w of workers) w.worker.shutdown();
    await Promise.all(workers.map((w) => w.running));
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

/**
 * Instant restore benchmark (issue 28): a group of `--vms` VMs snapshotted and exported on host A (to versitygw on
 * 127.0.0.1), host A's VMs and worker gone, then restored on host B (dev/hypervisor-hosts.ts) from the repository,
 * `--rounds` times each way, interleaved in alternating order: the full restore's RTO (request -> every VM running)
 * beside the instant restore's request -> every VM running and request -> every disk hydrated.
 *
 *   npm run bench:instant -- [--vms 4] [--vm-data 64] [--disk-size 1] [--rounds 1] [--out <dir>]
 *
 * Writes bench/results/instant-<date>.json and the "Instant restore" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { Client, Connection } from '@temporalio/client';
import { Repository } from '../backup/repository';
import { snapshotGroup } from '../client';
import { exportGroupSnapshot } from '../client/backup';
import { restoreFromRepo, startRestoreFromRepo } from '../client/repo-restore';
import type { RepoRestoreResult } from '../common/repo-restore';
import { HypervisorHosts, type HostWorker } from '../dev/hypervisor-hosts';
import { S3Server } from '../dev/s3-server';
import { startDevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { VmFleet } from '../dev/vms';
import { describeMachine, type MachineDescription } from './machine';
import { benchCommand, integer, parseBenchOptions } from './options';
import { writeSection } from './kept-sections';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Options {
  vms: number;
  vmData: number;
  diskSize: number;
  rounds: number;
  out: string;
}

interface Round {
  kind: 'full' | 'instant';
  /** Request -> every VM running (s). */
  running: number;
  /** Instant: request -> every disk hydrated (s). */
  hydrated?: number;
}

interface Results {
  machine: MachineDescription;
  options: Omit<Options, 'out'>;
  rounds: Round[];
}

const command = benchCommand(
  'instant',
  'Instant restore: time to all VMs running and to hydrated, beside a full restore',
)
  .option('--vms <n>', 'VMs of the group (two disks each)', integer(1, 16), 4)
  .option('--vm-data <MiB>', 'random data in each disk', integer(1, 8192), 64)
  .option('--disk-size <GiB>', 'virtual size of each disk', integer(1, 64), 1)
  .option('--rounds <n>', 'restores of each kind, interleaved in alternating order', integer(1, 10), 1)
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);

/** Writes `mib` MiB of random data into a qcow2 `image` at 1 MiB, 64 MiB per qemu-io call. */
async function writeRandom(image: string, mib: number, scratch: string): Promise<void> {
  for (let done = 0; done < mib; done += 64) {
    const piece = Math.min(64, mib - done);
    await writeFile(scratch, randomBytes(piece * MiB));
    await run('qemu-io', ['-f', 'qcow2', image, '-c', `write -q -s ${scratch} ${(1 + done) * MiB} ${piece * MiB}`]);
  }
  await rm(scratch, { force: true });
}

/** The group on host A, snapshotted and exported; host A's VMs and images removed. Returns the point's id. */
async function preparePoint(opts: Options, temporal: Client, hosts: HypervisorHosts, hostA: string, dir: string) {
  const fleet = await VmFleet.create({
    prefix: 'gs-bench-inst',
    count: opts.vms,
    dir: hosts.host(hostA).imagesDir,
    start: false,
    diskSize: `${opts.diskSize}G`,
  });
  try {
    for (const vm of fleet.vms)
      for (const disk of Object.values(vm.disks)) await writeRandom(disk, opts.vmData, join(dir, 'random.bin'));
    for (const vm of fleet.vms) await (await fleet.conn.lookupByName(vm.name)).create();
    const snap = await snapshotGroup(temporal, {
      group: 'inst',
      vms: fleet.names.map((domain) => ({ domain, host: hostA })),
    });
    if (snap.status !== 'completed') throw new Error(`group snapshot ${snap.status}`);
    const exported = await exportGroupSnapshot(temporal, {
      group: 'inst',
      snapshotId: snap.snapshotId,
      repository: 's3://bench/instant',
    });
    if (exported.status !== 'completed') throw new Error(`export ${exported.status}`);
    return snap.snapshotId;
  } finally {
    await fleet.destroy();
  }
}

/** Waits until `count` VMs whose names end with `suffix` run on host B. */
async function waitRunning(conn: libvirt.Connection, suffix: string, count: number): Promise<void> {
  for (;;) {
    const doms = (await conn.listAllDomains()).filter((d) => d.name.endsWith(suffix));
    if (doms.length === count && doms.every((d) => d.state === 'running')) return;
    await sleep(50);
  }
}

/** One restore of each kind; the VMs and files are removed afterwards. */
async function measure(
  kind: Round['kind'],
  ctx: { temporal: Client; conn: libvirt.Connection; hostB: string; keyFile: string; snapshotId: string; vms: number },
): Promise<Round> {
  const input = { group: 'inst', snapshotId: ctx.snapshotId, repo: 's3://bench/instant', toHost: ctx.hostB };
  const t0 = process.hrtime.bigint();
  const secs = () => Number(process.hrtime.bigint() - t0) / 1e9;
  let result: RepoRestoreResult;
  let running: number;
  let hydrated: number | undefined;
  if (kind === 'full') {
    result = await restoreFromRepo(ctx.temporal, input, { keyFile: ctx.keyFile });
    running = secs();
  } else {
    const handle = await startRestoreFromRepo(ctx.temporal, { ...input, instant: true }, { keyFile: ctx.keyFile });
    await waitRunning(ctx.conn, handle.workflowId.split('/').pop()!, ctx.vms);
    running = secs();
    result = (await handle.result()) as RepoRestoreResult;
    hydrated = secs();
  }
  if (result.status !== 'restored') throw new Error(`${kind} restore ${result.status}: ${result.error}`);
  console.error(
    `  ${kind}: all VMs running after ${running.toFixed(2)} s${hydrated ? `, hydrated after ${hydrated.toFixed(2)} s` : ''}`,
  );
  for (const vm of result.vms) {
    const dom = await ctx.conn.lookupByName(vm.domain).catch(() => undefined);
    if (dom) {
      if ((await dom.state()).state !== 'shutoff') await dom.destroy();
      await dom.undefine();
    }
    for (const d of vm.disks) await rm(d.file, { force: true });
  }
  return { kind, running, ...(hydrated !== undefined ? { hydrated } : {}) };
}

async function main(): Promise<void> {
  const opts = parseBenchOptions<Options>(command);
  const machine = describeMachine();
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-instant-');
  chmodSync(dir, 0o755);
  const hostA = `bench-ia-${randomBytes(3).toString('hex')}`;
  const hostB = `bench-ib-${randomBytes(3).toString('hex')}`;
  const closers: (() => Promise<unknown>)[] = [];
  try {
    console.error('starting two hypervisor hosts, versitygw and Temporal ...');
    const hosts = await HypervisorHosts.create({ ids: [hostA, hostB] });
    closers.push(() => hosts.destroy());
    mkdirSync(join(dir, 's3'));
    const s3 = await S3Server.start({ dir: join(dir, 's3') });
    closers.push(() => s3.stop());
    Object.assign(process.env, s3.env);
    await s3.createBucket('bench');
    const key = randomBytes(32);
    const keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    hosts.giveToHost(hostB, keyFile);
    (await Repository.init('s3://bench/instant', key)).close();
    const server = await startDevServer({});
    closers.push(() => server.stop());
    const hostAddress = await hosts.expose(server.address);
    const s3Address = await hosts.expose(`127.0.0.1:${s3.port}`);
    const connection = await Connection.connect({ address: server.address });
    closers.push(() => connection.close());
    const temporal = new Client({ connection });
    const env = { ...s3.env, AWS_ENDPOINT_URL_S3: `http://${s3Address}` };
    const workers: HostWorker[] = [
      await hosts.worker(hostA, hostAddress, { args: ['--key-file', keyFile], env }),
      await hosts.worker(hostB, hostAddress, { args: ['--key-file', keyFile], env, workflows: true }),
    ];
    closers.push(() => Promise.all(workers.map((w) => w.stop())));
    await Promise.all(workers.map((w) => w.start(temporal)));
    console.error(`group of ${opts.vms} VMs, 2 disks of ${opts.diskSize} GiB with ${opts.vmData} MiB each ...`);
    const snapshotId = await preparePoint(opts, temporal, hosts, hostA, dir);
    await workers[0].stop();
    const conn = await libvirt.open(hosts.host(hostB).uri);
    closers.push(() => conn.close());
    const ctx = { temporal, conn, hostB, keyFile, snapshotId, vms: opts.vms };
    const rounds: Round[] = [];
    for (let i = 0; i < opts.rounds; i++) {
      const order: Round['kind'][] = i % 2 === 0 ? ['instant', 'full'] : ['full', 'instant'];
      for (const kind of order) rounds.push(await measure(kind, ctx));
    }
    const { out, ...options } = opts;
    writeResults(out, { machine, options, rounds });
  } finally {
    for (const c of closers.reverse()) await c().catch((err: unknown) => console.error(err));
    await rm(dir, { recursive: true, force: true });
  }
}

function writeResults(out: string, results: Results): void {
  const rawDir = join(out, 'bench', 'results');
  mkdirSync(rawDir, { recursive: true });
  const rawFile = `bench/results/instant-${results.machine.date.slice(0, 10)}.json`;
  writeFileSync(join(out, rawFile), JSON.stringify(results, null, 2) + '\n');
  writeSection(out, 'instant', renderSection(results, rawFile));
  console.error(`wrote ${rawFile} and BENCHMARKS.md`);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export function renderSection(r: Results, rawFile: string): string {
  const o = r.options;
  const m = r.machine;
  const of = (kind: Round['kind'], k: 'running' | 'hydrated') =>
    r.rounds.filter((x) => x.kind === kind && x[k] !== undefined).map((x) => x[k]!);
  const row = (what: string, xs: number[]) =>
    `| ${what} | ${xs.map((s) => s.toFixed(2)).join(', ')} | ${xs.length ? median(xs).toFixed(2) : '-'} |`;
  return [
    '<!-- instant:begin -->',
    '## Instant restore (issue 28)',
    '',
    `Generated by \`npm run bench:instant -- --vms ${o.vms} --vm-data ${o.vmData} --disk-size ${o.diskSize} ` +
      `--rounds ${o.rounds}\` (bench/instant.ts) from \`${rawFile}\`; run ${m.date} on ${m.hostname}: ${m.cores} cores ` +
      `(${m.cpu}), libvirt ${m.libvirt}, load average ${(m.loadAvgAtStart ?? []).join(' / ')} at the start. **A shared ` +
      '2-core machine**: absolute figures are rough; the two kinds run in the same run, interleaved.',
    '',
    `A group of ${o.vms} VMs with 2 disks of ${o.diskSize} GiB and ${o.vmData} MiB of random data per disk, exported ` +
      "from host A to versitygw on 127.0.0.1, host A's VMs removed, restored on host B (TCG session libvirt) as clones.",
    '',
    '| what | seconds per round | median s |',
    '| --- | --- | --- |',
    row('full restore: request -> all VMs running (RTO)', of('full', 'running')),
    row('instant restore: request -> all VMs running', of('instant', 'running')),
    row('instant restore: request -> every disk hydrated', of('instant', 'hydrated')),
    '',
    "The instant restore's time to running is a fixed cost (plan, starting the serving process - a Node process " +
      'that opens the repository - and waiting for its sockets, the overlays, define, start), independent of the ' +
      'data; the full restore grows with the data. At small data the full restore is faster; the issue asks for the ' +
      'comparison at 1 GiB of data per disk and 4x that, not run here (a few minutes per round on this machine).',
    '<!-- instant:end -->',
  ].join('\n');
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

/**
 * Instant restore benchmark (issue 28): a group of `--vms` VMs snapshotted and exported on host A (to versitygw on
 * the hosts' bridge address, which every client reaches directly), host A's VMs and worker gone, then restored on
 * host B (dev/hypervisor-hosts.ts) from the repository,
 * `--rounds` times each way, interleaved in alternating order: the full restore's RTO (request -> every VM running)
 * beside the instant restore's request -> every VM running and request -> every disk hydrated; beside them, the
 * same data restored by restic from the same versitygw and downloaded with the plain SDK (bench/baselines.ts), so
 * hydration and full restore have throughputs (MiB/s of data) to compare with. `--vm-data` may list sizes
 * (`256,1024`): each is a point of its own, measured in the same run, so the time to running can be seen not to grow
 * with the data.
 *
 *   npm run bench:instant -- [--vms 4] [--vm-data 64[,256...]] [--disk-size 1] [--rounds 1] [--out <dir>]
 *
 * Writes bench/results/instant-<date>.json and the "Instant restore" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import * as libvirt from '@groupsnap/libvirt';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time';
import { Repository } from '../backup/repository';
import { snapshotGroup } from '../client';
import { exportGroupSnapshot } from '../client/backup';
import { startRestoreFromRepo } from '../client/repo-restore';
import type { RepoRestoreResult } from '../common/repo-restore';
import { HypervisorHosts, type HostWorker, type HypervisorHost } from '../dev/hypervisor-hosts';
import { S3Server } from '../dev/s3-server';
import { startDevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { VmFleet } from '../dev/vms';
import { describeMachine, type MachineDescription } from './machine';
import {
  plainDownload,
  prepareRestic,
  putPlainChunks,
  resticPath,
  resticRestore,
  type PlainDisk,
  type ResticRepo,
} from './baselines';
import { benchCommand, integer, integerList, parseBenchOptions } from './options';
import { writeSection } from './kept-sections';

const run = promisify(execFile);
const MiB = 1024 * 1024;
/** The groupsnap repository on versitygw. */
const REPO_URL = 's3://bench/instant';
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Options {
  vms: number;
  vmData: number[];
  diskSize: number;
  rounds: number;
  out: string;
}

interface Round {
  kind: 'full' | 'instant' | 'plain' | 'restic';
  /** Restores: request -> every VM running (s); plain and restic: the whole download or restore (s). */
  running: number;
  /** Instant: request -> every disk hydrated (s). */
  hydrated?: number;
  /**
   * Where the time went, from the workflow's history: per activity type, seconds from the workflow's start to its
   * first scheduling and to its last completion (the steps before the VMs run; hydration steps summed as one).
   */
  steps?: Step[];
}

interface Step {
  activity: string;
  count: number;
  from: number;
  to: number;
}

/** Each activity type's span in the workflow's history, in seconds from the workflow's start, in order of start. */
async function stepsOf(handle: WorkflowHandle): Promise<Step[]> {
  const events = (await handle.fetchHistory()).events ?? [];
  const at = (e: (typeof events)[number]) => tsToMs(e.eventTime);
  const start = events.length ? at(events[0]) : 0;
  const typeOf = new Map<string, string>();
  const steps = new Map<string, Step>();
  for (const e of events) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) {
      const name = scheduled.activityType?.name ?? '?';
      typeOf.set(String(e.eventId), name);
      const s = steps.get(name) ?? { activity: name, count: 0, from: (at(e) - start) / 1000, to: 0 };
      s.count++;
      steps.set(name, s);
    }
    const done = e.activityTaskCompletedEventAttributes;
    if (done) {
      const s = steps.get(typeOf.get(String(done.scheduledEventId)) ?? '');
      if (s) s.to = Math.max(s.to, (at(e) - start) / 1000);
    }
  }
  return [...steps.values()];
}

/** The rounds of one data size. */
interface SizeResults {
  /** MiB of random data per disk. */
  vmData: number;
  /** Bytes of data of the point (the disks' data chunks: what the plain download fetches). */
  dataBytes: number;
  rounds: Round[];
}

interface Results {
  machine: MachineDescription;
  options: Omit<Options, 'out'>;
  resticVersion?: string;
  sizes: SizeResults[];
}

const command = benchCommand(
  'instant',
  'Instant restore: time to all VMs running and to hydrated, beside a full restore',
)
  .option('--vms <n>', 'VMs of the group (two disks each)', integer(1, 16), 4)
  .option('--vm-data <MiB,...>', 'random data in each disk; a list: one point per size', integerList(1), [64])
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

/** What the run's points share: the servers, the hosts, the key, where to put things. */
interface PointContext {
  temporal: Client;
  hosts: HypervisorHosts;
  hostA: string;
  s3: S3Server;
  client: S3Client;
  key: Buffer;
  dir: string;
  /** restic's binary (no restic row without it). */
  resticBin?: string;
}

/** A point of the run: its group, and the same data as plain objects and in a restic repository of its own. */
interface Point {
  group: string;
  snapshotId: string;
  dataBytes: number;
  plain: { disk: PlainDisk; name: string }[];
  restic?: ResticRepo;
}

/**
 * The group on host A with `vmData` MiB per disk, snapshotted and exported; the same data put as plain objects and
 * backed up by restic (from the same base images, before they go); host A's VMs and images removed.
 */
async function preparePoint(opts: Options, vmData: number, ctx: PointContext): Promise<Point> {
  const { temporal, hosts, hostA, dir } = ctx;
  const group = `inst-${vmData}`;
  const fleet = await VmFleet.create({
    prefix: 'gs-bench-inst',
    count: opts.vms,
    dir: hosts.host(hostA).imagesDir,
    start: false,
    diskSize: `${opts.diskSize}G`,
  });
  try {
    for (const vm of fleet.vms)
      for (const disk of Object.values(vm.disks)) await writeRandom(disk, vmData, join(dir, 'random.bin'));
    for (const vm of fleet.vms) await (await fleet.conn.lookupByName(vm.name)).create();
    const snap = await snapshotGroup(temporal, { group, vms: fleet.names.map((domain) => ({ domain, host: hostA })) });
    if (snap.status !== 'completed') throw new Error(`group snapshot ${snap.status}`);
    const exported = await exportGroupSnapshot(temporal, {
      group,
      snapshotId: snap.snapshotId,
      repository: REPO_URL,
    });
    if (exported.status !== 'completed') throw new Error(`export ${exported.status}`);
    // The snapshot's base images hold the point (the guests write to the overlays on top of them).
    const repo = await Repository.open(REPO_URL, ctx.key);
    const plain: Point['plain'] = [];
    try {
      for (const vm of fleet.vms)
        for (const [target, file] of Object.entries(vm.disks)) {
          const manifest = await repo.readDiskManifest(group, snap.snapshotId, vm.name, target);
          const name = `${group}/${vm.name}/${target}`;
          const disk = await putPlainChunks(ctx.client, { file, format: 'qcow2' }, manifest, `plain/${name}/`);
          plain.push({ disk, name });
        }
    } finally {
      repo.close();
    }
    const files = fleet.vms.flatMap((vm) => Object.values(vm.disks));
    const restic = await prepareRestic(ctx.resticBin, ctx.s3.endpoint, files, 'bench', `restic-${vmData}`);
    const dataBytes = plain.reduce((n, p) => n + p.disk.bytes, 0);
    return { group, snapshotId: snap.snapshotId, dataBytes, plain, ...(restic ? { restic } : {}) };
  } finally {
    await fleet.destroy();
  }
}

/**
 * Untimed: a firmware-only VM started and removed on host B, so the first restore measured does not pay for the
 * daemon's and QEMU's first start (binaries read from disk, capabilities probed).
 */
async function warmUpHost(host: HypervisorHost): Promise<void> {
  const dir = join(host.imagesDir, 'warm-up');
  mkdirSync(dir, { recursive: true });
  if (host.user) chownSync(dir, host.user.uid, host.user.gid);
  const fleet = await VmFleet.create({
    prefix: 'gs-bench-warm',
    count: 1,
    uri: host.uri,
    dir,
    virtType: host.virtType,
    ...(host.user ? { owner: { uid: host.user.uid, gid: host.user.gid } } : {}),
  });
  await fleet.destroy();
  await rm(dir, { recursive: true, force: true });
}

/** A workflow's failure with its causes (Temporal wraps the restore's own message in WorkflowFailedError). */
function failureText(err: unknown): string {
  const parts: string[] = [];
  for (let e = err as { message?: string; cause?: unknown } | undefined; e; e = e.cause as typeof e)
    parts.push(String(e.message));
  return parts.join(': ');
}

/** Waits until `count` VMs whose names end with `suffix` run on host B. */
async function waitRunning(conn: libvirt.Connection, suffix: string, count: number): Promise<'running'> {
  for (;;) {
    const doms = (await conn.listAllDomains()).filter((d) => d.name.endsWith(suffix));
    if (doms.length === count && doms.every((d) => d.state === 'running')) return 'running';
    await sleep(50);
  }
}

interface MeasureContext {
  temporal: Client;
  conn: libvirt.Connection;
  hostB: string;
  keyFile: string;
  client: S3Client;
  vms: number;
  /** Where the plain download and restic write (host B's image directory: the restores' disk). */
  targetDir: string;
}

/** The plain download or restic's restore of the point, timed; what it wrote is removed afterwards. */
async function measureBaseline(kind: 'plain' | 'restic', point: Point, ctx: MeasureContext): Promise<Round> {
  const target = join(ctx.targetDir, `bench-inst-${kind}`);
  await rm(target, { recursive: true, force: true });
  mkdirSync(target, { recursive: true });
  // Untimed: earlier writes reach the disk now, so no kind pays for another's writeback.
  await run('sync');
  const t0 = process.hrtime.bigint();
  if (kind === 'plain')
    await plainDownload(
      ctx.client,
      point.plain.map((p) => ({ disk: p.disk, file: join(target, p.name.replaceAll('/', '_')) })),
    );
  else await resticRestore(point.restic!, target);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await rm(target, { recursive: true, force: true });
  console.error(`  ${kind}: ${seconds.toFixed(2)} s, ${(point.dataBytes / MiB / seconds).toFixed(1)} MiB/s`);
  return { kind, running: seconds };
}

/** One restore of `kind`; the VMs and files are removed afterwards. */
async function measure(kind: Round['kind'], point: Point, ctx: MeasureContext): Promise<Round> {
  if (kind === 'plain' || kind === 'restic') return measureBaseline(kind, point, ctx);
  const input = { group: point.group, snapshotId: point.snapshotId, repo: REPO_URL, toHost: ctx.hostB };
  await run('sync');
  const t0 = process.hrtime.bigint();
  const secs = () => Number(process.hrtime.bigint() - t0) / 1e9;
  let running: number;
  let hydrated: number | undefined;
  const handle = await startRestoreFromRepo(
    ctx.temporal,
    { ...input, ...(kind === 'instant' ? { instant: true } : {}) },
    { keyFile: ctx.keyFile },
  );
  if (kind === 'full') {
    await handle.result();
    running = secs();
  } else {
    // The restore's end (a failure: rolled back) also ends the wait, or a failed restore would be waited for forever.
    const ended = handle.result().then(
      () => 'ended' as const,
      () => 'ended' as const,
    );
    if ((await Promise.race([waitRunning(ctx.conn, handle.workflowId.split('/').pop()!, ctx.vms), ended])) === 'ended')
      throw new Error(
        `instant restore ended before every VM ran: ${await handle.result().then(JSON.stringify, failureText)}`,
      );
    running = secs();
    await handle.result();
    hydrated = secs();
  }
  const result = (await handle.result()) as RepoRestoreResult;
  const steps = await stepsOf(handle);
  if (result.status !== 'restored') throw new Error(`${kind} restore ${result.status}: ${result.error}`);
  console.error(
    `  ${kind}: all VMs running after ${running.toFixed(2)} s${hydrated ? `, hydrated after ${hydrated.toFixed(2)} s` : ''}`,
  );
  for (const st of steps)
    console.error(`    ${st.activity} x${st.count}: ${st.from.toFixed(2)} -> ${st.to.toFixed(2)} s`);
  for (const vm of result.vms) {
    const dom = await ctx.conn.lookupByName(vm.domain).catch(() => undefined);
    if (dom) {
      if ((await dom.state()).state !== 'shutoff') await dom.destroy();
      await dom.undefine();
    }
    for (const d of vm.disks) await rm(d.file, { force: true });
  }
  return { kind, running, ...(hydrated !== undefined ? { hydrated } : {}), steps };
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
    // On the hosts' bridge address: host B's worker and serving process reach it directly, as restic and the plain
    // download do from here (through a forwarder in this process, every byte they fetch would cost a copy more).
    const s3 = await S3Server.start({ dir: join(dir, 's3'), host: hosts.serverIp });
    closers.push(() => s3.stop());
    Object.assign(process.env, s3.env);
    await s3.createBucket('bench');
    const client = s3.client();
    closers.push(async () => client.destroy());
    const key = randomBytes(32);
    const keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    hosts.giveToHost(hostB, keyFile);
    (await Repository.init(REPO_URL, key)).close();
    const server = await startDevServer({});
    closers.push(() => server.stop());
    const hostAddress = await hosts.expose(server.address);
    const connection = await Connection.connect({ address: server.address });
    closers.push(() => connection.close());
    const temporal = new Client({ connection });
    const env = s3.env;
    const workers: HostWorker[] = [
      await hosts.worker(hostA, hostAddress, { args: ['--key-file', keyFile], env }),
      await hosts.worker(hostB, hostAddress, { args: ['--key-file', keyFile], env, workflows: true }),
    ];
    closers.push(() => Promise.all(workers.map((w) => w.stop())));
    await Promise.all(workers.map((w) => w.start(temporal)));
    const resticBin = await resticPath();
    const points: Point[] = [];
    for (const vmData of opts.vmData) {
      console.error(`group of ${opts.vms} VMs, 2 disks of ${opts.diskSize} GiB with ${vmData} MiB each ...`);
      points.push(await preparePoint(opts, vmData, { temporal, hosts, hostA, s3, client, key, dir, resticBin }));
    }
    await workers[0].stop();
    const conn = await libvirt.open(hosts.host(hostB).uri);
    closers.push(() => conn.close());
    await warmUpHost(hosts.host(hostB));
    const ctx: MeasureContext = {
      temporal,
      conn,
      hostB,
      keyFile,
      client,
      vms: opts.vms,
      targetDir: hosts.host(hostB).imagesDir,
    };
    const sizes: SizeResults[] = [];
    for (const [p, point] of points.entries()) {
      console.error(`${opts.vmData[p]} MiB per disk (${(point.dataBytes / MiB).toFixed(0)} MiB of data):`);
      const kinds: Round['kind'][] = ['instant', 'full', 'plain', ...(point.restic ? (['restic'] as const) : [])];
      const rounds: Round[] = [];
      for (let i = 0; i < opts.rounds; i++)
        for (const kind of i % 2 === 0 ? kinds : [...kinds].reverse()) rounds.push(await measure(kind, point, ctx));
      sizes.push({ vmData: opts.vmData[p], dataBytes: point.dataBytes, rounds });
    }
    const { out, ...options } = opts;
    const resticVersion = points.find((p) => p.restic)?.restic?.version;
    writeResults(out, { machine, options, ...(resticVersion ? { resticVersion } : {}), sizes });
  } finally {
    for (const c of closers.reverse()) await c().catch((err: unknown) => console.error(err));
    await rm(dir, { recursive: true, force: true });
  }
}

function writeResults(out: string, results: Results): void {
  const rawDir = join(out, 'bench', 'results');
  mkdirSync(rawDir, { recursive: true });
  const { vms, vmData } = results.options;
  const rawFile = `bench/results/instant-${results.machine.date.slice(0, 10)}-${vms}vm-${vmData.join('-')}.json`;
  writeFileSync(join(out, rawFile), JSON.stringify(results, null, 2) + '\n');
  writeSection(out, 'instant', renderSection(results, rawFile));
  console.error(`wrote ${rawFile} and BENCHMARKS.md`);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** The rounds' median of `pick` for `kind` (undefined without such rounds). */
function medianOf(size: SizeResults, kind: Round['kind'], pick: (r: Round) => number | undefined) {
  const xs = size.rounds
    .filter((r) => r.kind === kind)
    .map(pick)
    .filter((x): x is number => x !== undefined);
  return xs.length ? median(xs) : undefined;
}

/** The figures of one size: seconds (medians) and throughputs in MiB/s of data. */
export function figuresOf(size: SizeResults) {
  const mib = size.dataBytes / MiB;
  const running = medianOf(size, 'instant', (r) => r.running);
  const hydrated = medianOf(size, 'instant', (r) => r.hydrated);
  const hydration = medianOf(size, 'instant', (r) => (r.hydrated === undefined ? undefined : r.hydrated - r.running));
  const full = medianOf(size, 'full', (r) => r.running);
  const plain = medianOf(size, 'plain', (r) => r.running);
  const restic = medianOf(size, 'restic', (r) => r.running);
  const rate = (s: number | undefined) => (s ? mib / s : undefined);
  return {
    mib,
    running,
    hydrated,
    full,
    rates: { hydration: rate(hydration), full: rate(full), plain: rate(plain), restic: rate(restic) },
  };
}

const f1 = (x: number | undefined, digits = 1) => (x === undefined ? '-' : x.toFixed(digits));
const ratio = (x: number | undefined, y: number | undefined) => (x && y ? (x / y).toFixed(2) : '-');

/** Where each restore's time went (its first round): activity spans from the workflow's start, in seconds. */
function stepLines(r: Results): string[] {
  return r.sizes.flatMap((size) =>
    (['instant', 'full'] as const).flatMap((kind) => {
      const round = size.rounds.find((x) => x.kind === kind && x.steps);
      if (!round?.steps) return [];
      const steps = round.steps.map(
        (st) => `${st.activity}${st.count > 1 ? ` x${st.count}` : ''} ${f1(st.from, 2)}-${f1(st.to, 2)}`,
      );
      return [`- ${size.vmData} MiB/disk, ${kind}: ${steps.join(', ')}`];
    }),
  );
}

export function renderSection(r: Results, rawFile: string): string {
  const o = r.options;
  const m = r.machine;
  const figs = r.sizes.map((size) => ({ size, ...figuresOf(size) }));
  const rows = figs.map(
    (f) =>
      `| ${f.size.vmData} | ${f1(f.mib, 0)} | **${f1(f.running, 2)}** | ${f1(f.full, 2)} | ${f1(f.hydrated, 2)} | ` +
      `${f1(f.rates.hydration)} | ${f1(f.rates.full)} | ${f1(f.rates.restic)} | ${f1(f.rates.plain)} | ` +
      `${ratio(f.rates.hydration, f.rates.restic)} / ${ratio(f.rates.full, f.rates.restic)} | ` +
      `${ratio(f.rates.hydration, f.rates.plain)} / ${ratio(f.rates.full, f.rates.plain)} |`,
  );
  const first = figs[0];
  const last = figs[figs.length - 1];
  const growth =
    figs.length > 1 && first.running && last.running
      ? `From ${first.size.vmData} to ${last.size.vmData} MiB per disk (${(last.mib / first.mib).toFixed(1)}x the ` +
        `data) the instant restore's time to running went from ${f1(first.running, 2)} s to ${f1(last.running, 2)} s ` +
        `(${ratio(last.running, first.running)}x; the issue's target: <= 1.25x), the full restore's RTO from ` +
        `${f1(first.full, 2)} s to ${f1(last.full, 2)} s (${ratio(last.full, first.full)}x).`
      : '';
  return [
    '<!-- instant:begin -->',
    '## Instant restore (issue 28)',
    '',
    `Generated by \`npm run bench:instant -- --vms ${o.vms} --vm-data ${o.vmData.join(',')} --disk-size ${o.diskSize} ` +
      `--rounds ${o.rounds}\` (bench/instant.ts) from \`${rawFile}\`; run ${m.date} on ${m.hostname}: ${m.cores} cores ` +
      `(${m.cpu}), libvirt ${m.libvirt}, load average ${(m.loadAvgAtStart ?? []).join(' / ')} at the start. **A shared ` +
      '2-core machine**: absolute figures are rough; every kind runs in the same run, interleaved.',
    '',
    `A group of ${o.vms} VMs with 2 disks of ${o.diskSize} GiB per VM, random data in each disk (one point per size), ` +
      "exported from host A to versitygw (on the hosts' bridge address: host B and the baselines reach it directly), " +
      "host A's VMs removed, restored on host B (a session libvirt of its own) as clones. " +
      'Beside them, the same data from the same versitygw: restored by restic from its own ' +
      "backup of the same image files, and downloaded with the plain SDK (bench/baselines.ts, as bench:restore's rows)." +
      " Throughputs are MiB/s of data (the disks' data chunks): hydration = data / (all VMs running -> every disk " +
      'hydrated and its NBD backing dropped), full restore = data / RTO (request -> all VMs running).',
    '',
    '| MiB per disk | MiB of data | instant: request -> all VMs running (s) | full restore: RTO (s) | instant: request ' +
      '-> every disk hydrated (s) | hydration MiB/s | full restore MiB/s | restic restore MiB/s | plain SDK MiB/s | ' +
      'vs restic: hydration / full | vs plain SDK: hydration / full |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    `Medians of ${o.rounds} round(s). ${r.resticVersion ? `restic: ${r.resticVersion}. ` : ''}${growth}`,
    '',
    "Where the time went (each kind's first round; activity spans in seconds from the workflow's start, from its " +
      'history):',
    '',
    ...stepLines(r),
    '<!-- instant:end -->',
  ].join('\n');
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

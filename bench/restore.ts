/**
 * Restore benchmark (issue 17): how fast a point comes back from the repository onto the second hypervisor host
 * (dev/hypervisor-hosts.ts: a session libvirt daemon of another Unix user), side by side in one run with a plain
 * download of the same bytes with the same SDK from the same S3 server (versitygw on 127.0.0.1) and with restic's
 * restore of the same image file; then the RTO figure: time from "restore requested" to "all VMs running" for a
 * group of `--vms` VMs restored on host B by the real workflow, after host A's VMs and worker are gone.
 *
 *   npm run bench:restore -- [--disk 4] [--data 1024] [--rounds 2] [--vms 4] [--vm-data 64] [--out <dir>]
 *
 * Writes bench/results/restore-<date>.json and the "Restore from the repository" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import * as libvirt from '@groupsnap/libvirt';
import { Client, Connection } from '@temporalio/client';
import { createRepoRestoreActivities, restoredDiskPath } from '../activities/repo-restore';
import { RestoreRecords } from '../activities/restore-records';
import { exportDisk } from '../backup/export-disk';
import { Repository } from '../backup/repository';
import { runServe } from '../backup/serve';
import { snapshotGroup } from '../client';
import { exportGroupSnapshot } from '../client/backup';
import { restoreFromRepo } from '../client/repo-restore';
import { HypervisorHosts } from '../dev/hypervisor-hosts';
import { S3Server } from '../dev/s3-server';
import { startDevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { VmFleet } from '../dev/vms';
import type { Hypervisor } from '../hypervisor/hypervisor';
import {
  PLAIN_WHAT,
  plainDownload,
  prepareRestic,
  putPlainChunks,
  resticPath,
  resticRestore,
  resticWhat,
  type PlainDisk,
  type ResticRepo,
} from './baselines';
import { describeMachine, type MachineDescription } from './machine';
import { exportOneDiskPoint, type PointNames } from './one-disk-point';
import { benchCommand, integer, parseBenchOptions } from './options';
import { writeSection } from './kept-sections';

const run = promisify(execFile);
const MiB = 1024 * 1024;

interface Options {
  disk: number;
  data: number;
  rounds: number;
  vms: number;
  vmData: number;
  out: string;
}

const command = benchCommand('restore', 'Restore throughput and RTO from the off-host repository onto another host')
  .option('--disk <GiB>', 'virtual size of the throughput disk', integer(1, 1024), 4)
  .option('--data <MiB>', 'random data in it (a multiple of 64)', integer(64), 1024)
  .option('--rounds <n>', 'timed rounds of each restore kind, in alternating order', integer(1, 10), 2)
  .option('--vms <n>', 'VMs of the RTO group (0: no RTO run)', integer(0, 16), 4)
  .option('--vm-data <MiB>', 'random data in each disk of each RTO VM (two 1 GiB disks per VM)', integer(0, 1024), 64)
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { value, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

/** Writes `mib` MiB of random data into a qcow2 `image` from `offsetMiB`, 64 MiB per qemu-io call. */
async function writeRandom(image: string, offsetMiB: number, mib: number, scratch: string): Promise<void> {
  for (let done = 0; done < mib; done += 64) {
    const piece = Math.min(64, mib - done);
    await writeFile(scratch, randomBytes(piece * MiB));
    await run('qemu-io', [
      '-f',
      'qcow2',
      image,
      '-c',
      `write -q -s ${scratch} ${(offsetMiB + done) * MiB} ${piece * MiB}`,
    ]);
  }
  await rm(scratch, { force: true });
}

interface Row {
  what: string;
  seconds: number[];
  /** Disk data bytes restored (allocated chunks), the same for every row. */
  bytes: number;
}

interface Results {
  machine: MachineDescription;
  /** The load average (1, 5, 15 min) when the timed rounds ended (the machine is shared). */
  loadAvgAtEnd?: number[];
  options: Omit<Options, 'out'>;
  throughput: { dataBytes: number; rows: Row[]; resticVersion?: string };
  rto?: {
    vms: number;
    disksPerVm: number;
    dataBytesPerDisk: number;
    seconds: number;
    workflowMs?: number;
    bytesWritten: number;
    virtType?: string;
    states: string[];
  };
}

/** The disk's names in the throughput repository. */

/**
 * The throughput run's point: a `--disk` GiB disk with `--data` MiB of random data, exported to `url`, and the same
 * bytes as plain objects under plain/ (what a plain download fetches: each data chunk's raw content).
 */
async function preparePoint(
  opts: Options,
  ctx: { dir: string; key: Buffer; client: S3Client; url: string; names: PointNames },
) {
  const { dir, key, client, url, names } = ctx;
  console.error(`preparing a ${opts.disk} GiB disk with ${opts.data} MiB of random data ...`);
  const image = join(dir, 'vm.vda.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, `${opts.disk}G`]);
  await writeRandom(image, 0, opts.data, join(dir, 'random.bin'));
  // The NBD server reads the point by its group manifest (rebuildDisk reads the disk manifest): both are there.
  await exportOneDiskPoint(url, key, image, names);
  const manifest = await (async () => {
    const repo = await Repository.open(url, key);
    try {
      return await repo.readDiskManifest(names.group, names.snapshotId, names.domain, names.target);
    } finally {
      repo.close();
    }
  })();
  const dataChunks = manifest.chunks.map((c, i) => (c === null ? -1 : i)).filter((i) => i >= 0);
  // The same bytes as plain objects (what a plain download fetches): each data chunk's raw content.
  const plain = await putPlainChunks(client, { file: image, format: 'qcow2' }, manifest, 'plain/');
  const dataBytes = plain.bytes;
  return { image, manifest, dataChunks, dataBytes, plain };
}

/**
 * Warm-up, untimed: this process's first restore and first download load and compile code a worker that has
 * restored before would not (a small point of its own, and a few plain objects).
 */
async function warmUp(ctx: {
  dir: string;
  key: Buffer;
  client: S3Client;
  url: string;
  names: PointNames;
  planned: (what: string, round: number, format: 'raw' | 'qcow2') => string;
  activities: ReturnType<typeof createRepoRestoreActivities>;
  dataChunks: number[];
}): Promise<void> {
  const { dir, key, client, url, names, planned, activities, dataChunks } = ctx;
  const warm = join(dir, 'warm.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', warm, '256M']);
  await writeRandom(warm, 0, 64, join(dir, 'random.bin'));
  const repo = await Repository.open(url, key);
  try {
    await exportDisk({ repo, names: { ...names, snapshotId: 'warm' }, image: warm, format: 'qcow2' });
  } finally {
    repo.close();
  }
  for (const format of ['raw', 'qcow2'] as const) {
    const file = planned(`warm-${format}`, 0, format);
    await activities.rebuildDisk({ repo: url, ...names, snapshotId: 'warm', file, format });
    await rm(file, { force: true });
  }
  for (const i of dataChunks.slice(0, 8)) {
    const out = await client.send(new GetObjectCommand({ Bucket: 'bench', Key: `plain/${i}` }));
    await out.Body!.transformToByteArray();
  }
}

/** The raw results under `out`'s bench/results/, and the BENCHMARKS.md section (also printed). */
function writeResults(out: string, results: Results): void {
  const { machine } = results;
  const resultsDir = join(out, 'bench/results');
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `restore-${machine.date.slice(0, 10)}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  const section = renderSection(results, file.slice(out.length + 1));
  writeSection(out, 'restore', section);
  console.log(section);
}

/** What the RTO measurement needs of the run: the two hosts, versitygw, the key, and where to clean up. */
interface RtoContext {
  hosts: HypervisorHosts;
  s3: S3Server;
  key: Buffer;
  keyFile: string;
  dir: string;
  closers: (() => Promise<unknown>)[];
  hostA: string;
  hostB: string;
}

/** RTO: a group of VMs snapshotted and exported on host A, restored on host B after A is gone. */
async function measureRto(opts: Options, ctx: RtoContext): Promise<Results['rto']> {
  const { hosts, s3, key, keyFile, dir, closers, hostA, hostB } = ctx;
  const b = hosts.host(hostB);
  console.error(`RTO: ${opts.vms} VMs on host A, exported, restored on host B ...`);
  const server = await startDevServer({});
  closers.push(() => server.stop());
  const hostAddress = await hosts.expose(server.address);
  const s3Address = await hosts.expose(`127.0.0.1:${s3.port}`);
  const connection = await Connection.connect({ address: server.address });
  closers.push(() => connection.close());
  const temporal = new Client({ connection });
  const env = { ...s3.env, AWS_ENDPOINT_URL_S3: `http://${s3Address}` };
  const rtoUrl = 's3://bench/rto';
  (await Repository.init(rtoUrl, key)).close();
  const workerA = await hosts.worker(hostA, hostAddress, { args: ['--key-file', keyFile], env });
  const workerB = await hosts.worker(hostB, hostAddress, { args: ['--key-file', keyFile], env, workflows: true });
  await Promise.all([workerA.start(temporal), workerB.start(temporal)]);
  const a = hosts.host(hostA);
  const fleet = await VmFleet.create({
    prefix: 'gs-bench-rto',
    count: opts.vms,
    dir: a.imagesDir,
    start: false,
    diskSize: '1G',
  });
  let snapshotId: string;
  try {
    for (const vm of fleet.vms)
      for (const [t, disk] of Object.entries(vm.disks))
        await writeRandom(disk, t === 'vda' ? 1 : 0, opts.vmData, join(dir, 'random.bin'));
    for (const vm of fleet.vms) await (await fleet.conn.lookupByName(vm.name)).create();
    const snap = await snapshotGroup(temporal, {
      group: 'rto',
      vms: fleet.names.map((domain) => ({ domain, host: hostA })),
    });
    if (snap.status !== 'completed') throw new Error(`group snapshot ${snap.status}`);
    snapshotId = snap.snapshotId;
    const exported = await exportGroupSnapshot(temporal, { group: 'rto', snapshotId, repository: rtoUrl });
    if (exported.status !== 'completed') throw new Error(`export ${exported.status}`);
  } finally {
    // Host A is gone: its VMs, images and worker.
    await fleet.destroy();
    await workerA.stop();
  }
  const connB = await libvirt.open(b.uri);
  closers.push(() => connB.close());
  const t = await timed(() =>
    restoreFromRepo(temporal, { group: 'rto', snapshotId, repo: rtoUrl, toHost: hostB }, { keyFile }),
  );
  const result = t.value;
  const states: string[] = [];
  for (const vm of result.vms) {
    const dom = await connB.lookupByName(vm.domain).catch(() => undefined);
    states.push(dom ? (await dom.state()).state : 'missing');
  }
  if (result.status !== 'restored') throw new Error(`restore ${result.status}: ${result.error}`);
  const rto: Results['rto'] = {
    vms: opts.vms,
    disksPerVm: 2,
    dataBytesPerDisk: opts.vmData * MiB,
    seconds: t.seconds,
    ...(result.durationMs !== undefined ? { workflowMs: result.durationMs } : {}),
    bytesWritten: result.bytesWritten,
    ...(result.virtType ? { virtType: result.virtType } : {}),
    states,
  };
  console.error(`  RTO ${t.seconds.toFixed(2)} s (${states.join(', ')})`);
  for (const vm of result.vms) {
    const dom = await connB.lookupByName(vm.domain).catch(() => undefined);
    if (dom) {
      if ((await dom.state()).state !== 'shutoff') await dom.destroy();
      await dom.undefine();
    }
    for (const d of vm.disks) await rm(d.file, { force: true });
  }
  await workerB.stop();
  return rto;
}

/** What each timed kind of restore needs of the run. */
interface KindsContext {
  url: string;
  names: PointNames;
  dir: string;
  keyFile: string;
  plain: PlainDisk;
  client: S3Client;
  activities: ReturnType<typeof createRepoRestoreActivities>;
  planned: (what: string, round: number, format: 'raw' | 'qcow2') => string;
  target: (what: string, round: number) => string;
  restic?: ResticRepo;
}

/** The kinds of restore timed side by side, each once per round. */
function restoreKinds(ctx: KindsContext): { what: string; once: (round: number) => Promise<void> }[] {
  const { url, names, dir, keyFile, plain, client, activities, planned, target, restic } = ctx;
  return [
    {
      what: 'groupsnap restore, raw (rebuildDisk activity: 8 chunks in flight, sparse writes, fsync)',
      once: async (round) => {
        await activities.rebuildDisk({ repo: url, ...names, file: planned('gs-raw', round, 'raw'), format: 'raw' });
      },
    },
    {
      what: 'groupsnap restore, qcow2, the default format (new: written directly, rebuildDisk activity, fsync)',
      once: async (round) => {
        await activities.rebuildDisk({
          repo: url,
          ...names,
          file: planned('gs-qcow2', round, 'qcow2'),
          format: 'qcow2',
        });
      },
    },
    {
      what: 'groupsnap restore, qcow2, the old path (raw as above, then qemu-img convert -O qcow2)',
      once: async (round) => {
        const raw = planned('gs-old', round, 'raw');
        await activities.rebuildDisk({ repo: url, ...names, file: raw, format: 'raw' });
        await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, `${raw}.qcow2`]);
        await rm(raw, { force: true });
      },
    },
    {
      what: 'NBD export of the point (backup/serve.ts) read by qemu-img convert -O qcow2 -W -m 8 (the hydration fetch path)',
      once: async (round) => {
        const socket = join(dir, `nbd-${round}.sock`);
        const server = await runServe(
          {
            version: 1,
            repo: url,
            keyFile,
            group: names.group,
            snapshotId: names.snapshotId,
            exports: [{ domain: names.domain, target: names.target, socket, exportName: 'bench' }],
            dir,
          },
          { statusFile: false },
        );
        try {
          await run('qemu-img', [
            ...['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-W', '-m', '8'],
            ...[`nbd+unix:///bench?socket=${socket}`, target('nbd', round)],
          ]);
          await run('sync', [target('nbd', round)]);
        } finally {
          await server.close();
        }
      },
    },
    {
      what: PLAIN_WHAT,
      once: async (round) => plainDownload(client, [{ disk: plain, file: target('plain', round) }]),
    },
    ...(restic
      ? [{ what: resticWhat(restic), once: (round: number) => resticRestore(restic, target('restic', round)) }]
      : []),
  ];
}

async function main(): Promise<void> {
  const opts = parseBenchOptions<Options>(command);
  if (opts.data % 64 !== 0 || opts.data > opts.disk * 1024) {
    console.error('--data must be a multiple of 64 MiB and fit in --disk');
    process.exit(2);
  }
  const machine = describeMachine();
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-restore-');
  chmodSync(dir, 0o755);
  const hostA = `bench-a-${randomBytes(3).toString('hex')}`;
  const hostB = `bench-b-${randomBytes(3).toString('hex')}`;
  const closers: (() => Promise<unknown>)[] = [];
  try {
    console.error('starting two hypervisor hosts and versitygw ...');
    const hosts = await HypervisorHosts.create({ ids: [hostA, hostB] });
    closers.push(() => hosts.destroy());
    mkdirSync(join(dir, 's3'));
    const s3 = await S3Server.start({ dir: join(dir, 's3') });
    closers.push(() => s3.stop());
    Object.assign(process.env, s3.env);
    const client = s3.client();
    closers.push(async () => client.destroy());
    await s3.createBucket('bench');
    const key = randomBytes(32);
    const keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    hosts.giveToHost(hostB, keyFile);
    const b = hosts.host(hostB);

    // ---- throughput: one disk, restored to host B's image directory by groupsnap, a plain download, restic ----
    const url = 's3://bench/groupsnap';
    const names = { group: 'bench', snapshotId: 'p1', domain: 'vm', target: 'vda' };
    const { image, dataChunks, dataBytes, plain } = await preparePoint(opts, { dir, key, client, url, names });
    const restic = await prepareRestic(await resticPath(), s3.endpoint, [image]);
    const resticVersion = restic?.version;

    const activities = createRepoRestoreActivities({
      // rebuildDisk reads the repository and writes files; it does not touch libvirt.
      hypervisor: {} as Hypervisor,
      hostId: hostB,
      imagesDir: b.imagesDir,
      stateDir: join(dir, 'state'),
      keyFile,
    });
    const target = (what: string, round: number) => join(b.imagesDir, `bench-restore-${what}-${round}`);
    // rebuildDisk writes only files a restore planned on the host: each timed rebuild is planned as its own restore.
    const records = new RestoreRecords(join(dir, 'state'));
    const planned = (what: string, round: number, format: 'raw' | 'qcow2') => {
      const restoreId = `bench-${what}-${round}`;
      const file = restoredDiskPath(b.imagesDir, 'bench', names.target, restoreId, format);
      const disks = [{ target: names.target, file, format }];
      records.plan(restoreId, [{ source: names.domain, domain: 'bench', uuid: randomUUID(), disks }]);
      return file;
    };
    const kinds = restoreKinds({
      url,
      names,
      dir,
      keyFile,
      plain,
      client,
      activities,
      planned,
      target,
      restic,
    });
    await warmUp({ dir, key, client, url, names, planned, activities, dataChunks });
    const rows: Row[] = kinds.map((k) => ({ what: k.what, seconds: [], bytes: dataBytes }));
    for (let round = 0; round < opts.rounds; round++) {
      const order = kinds.map((_, i) => i);
      if (round % 2 === 1) order.reverse();
      for (const i of order) {
        console.error(`round ${round + 1}: ${kinds[i].what} ...`);
        // Untimed: the dirty pages of the preparation or of the kind before are written back now, so no kind pays
        // for another's writeback.
        await run('sync');
        const t = await timed(() => kinds[i].once(round));
        rows[i].seconds.push(t.seconds);
        console.error(`  ${t.seconds.toFixed(2)} s, ${(dataBytes / MiB / t.seconds).toFixed(1)} MiB/s`);
      }
      for (const w of ['plain', 'restic', 'nbd']) await rm(target(w, round), { recursive: true, force: true });
      for (const [w, f] of [
        ['gs-raw', 'raw'],
        ['gs-qcow2', 'qcow2'],
        ['gs-old', 'raw'],
      ] as const) {
        const file = restoredDiskPath(b.imagesDir, 'bench', names.target, `bench-${w}-${round}`, f);
        await rm(file, { force: true });
        await rm(`${file}.qcow2`, { force: true });
      }
    }

    const loadAvgAtEnd = loadavg().map((x) => Number(x.toFixed(2)));

    // ---- RTO: a group of VMs snapshotted and exported on host A, restored on host B after A is gone ----
    const rto =
      opts.vms > 0 ? await measureRto(opts, { hosts, s3, key, keyFile, dir, closers, hostA, hostB }) : undefined;

    const results: Results = {
      machine,
      loadAvgAtEnd,
      options: { disk: opts.disk, data: opts.data, rounds: opts.rounds, vms: opts.vms, vmData: opts.vmData },
      throughput: { dataBytes, rows, ...(resticVersion ? { resticVersion } : {}) },
      ...(rto ? { rto } : {}),
    };
    writeResults(opts.out, results);
  } finally {
    for (const c of closers.reverse()) await c().catch((err: unknown) => console.error(err));
    await rm(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export function renderSection(r: Results, rawFile: string): string {
  const mibs = (bytes: number, s: number) => (bytes / MiB / s).toFixed(1);
  const rows = r.throughput.rows.map(
    (row) =>
      `| ${row.what} | ${row.seconds.map((s) => s.toFixed(2)).join(', ')} | ${median(row.seconds).toFixed(2)} | ${mibs(row.bytes, median(row.seconds))} |`,
  );
  const plain = r.throughput.rows.find((row) => row.what.startsWith('plain'));
  const ratio = (row: Row | undefined) =>
    row && plain ? (median(plain.seconds) / median(row.seconds)).toFixed(2) : '?';
  const raw = r.throughput.rows.find((row) => row.what.includes(', raw'));
  const qcow2 = r.throughput.rows.find((row) => row.what.includes('the default format'));
  const old = r.throughput.rows.find((row) => row.what.includes('the old path'));
  const nbd = r.throughput.rows.find((row) => row.what.startsWith('NBD'));
  const restic = r.throughput.rows.find((row) => row.what.startsWith('restic'));
  /** How fast `row` is against `ref` (ratio of throughputs: the inverse ratio of median times). */
  const vs = (row: Row | undefined, ref: Row | undefined) =>
    row && ref ? (median(ref.seconds) / median(row.seconds)).toFixed(2) : '?';
  const m = r.machine;
  const o = r.options;
  return [
    '<!-- restore:begin -->',
    '## Restore from the repository (issues 17 and 28)',
    '',
    `Generated by \`npm run bench:restore -- --disk ${o.disk} --data ${o.data} --rounds ${o.rounds} --vms ${o.vms} ` +
      `--vm-data ${o.vmData}\` (bench/restore.ts) from \`${rawFile}\`; run ${m.date} on ${m.hostname}: ${m.cores} cores ` +
      `(${m.cpu}), ${m.memoryGiB} GiB, libvirt ${m.libvirt}, Node ${m.node}, load average ` +
      `${(m.loadAvgAtStart ?? []).join(' / ')} at the start` +
      (r.loadAvgAtEnd ? `, ${r.loadAvgAtEnd.join(' / ')} at the end of the timed rounds` : '') +
      '. **A shared 2-core machine**: other agents ran tests and ' +
      'VMs at the same time, so absolute figures are rough; the kinds run in the same run, interleaved round by ' +
      'round in alternating order, and the ratios compare medians.',
    '',
    `Throughput: a ${o.disk} GiB qcow2 disk with ${o.data} MiB of random data, exported by groupsnap (4 MiB chunks) ` +
      `to versitygw on 127.0.0.1 (posix backend), then restored ${o.rounds} times into host B's image directory ` +
      "(the session libvirt host of dev/hypervisor-hosts.ts) by the restore's `rebuildDisk` activity code (in this " +
      'process, without the Temporal round trips); beside it the same bytes as plain objects downloaded with the same ' +
      'SDK from the same server into a sparse file, and restic restoring its backup of the image file from the same ' +
      'server (then `sync` of the restored file: groupsnap and the plain download fsync theirs; an untimed `sync` ' +
      "before each kind, so none pays for another's writeback). groupsnap signs " +
      'each chunk GET with the SDK on the main thread and sends it from a worker thread on a keep-alive connection ' +
      "of the thread's own (a minimal HTTP/1.1 receiver on node:net: the body lands in a buffer it reuses), which " +
      'opens it (AES-256-GCM, inflate, keyed-hash check) and hands back only the plaintext; chunk reads skip the ' +
      "SDK's response CRC32, which GCM and the keyed hash make redundant; the plain download keeps the SDK defaults. " +
      "The NBD export answers QEMU's reads with structured replies (zero chunks as holes). MiB/s counts disk data " +
      '(the allocated chunks) for every row.',
    '',
    '| what | seconds per round | median s | MiB/s |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
    `- Against the plain download: groupsnap raw ${ratio(raw)}x, qcow2 (new) ${ratio(qcow2)}x, qcow2 (old path) ` +
      `${ratio(old)}x, the NBD export ${ratio(nbd)}x` +
      (restic ? `, restic ${ratio(restic)}x` : ''),
    ...(restic
      ? [
          `- **Against restic's restore** (issue 28's target: >= 1.0x): the default qcow2 restore ${vs(qcow2, restic)}x ` +
            `(the old raw-then-convert path ${vs(old, restic)}x), raw ${vs(raw, restic)}x, the NBD export (hydration ` +
            `fetch) ${vs(nbd, restic)}x`,
        ]
      : []),
    ...(r.rto
      ? [
          `- **RTO**: ${r.rto.vms} VMs (${r.rto.disksPerVm} disks of 1 GiB each, ${r.rto.dataBytesPerDisk / MiB} MiB ` +
            `of random data per disk) snapshotted and exported on host A, host A's VMs, images and worker removed, ` +
            `then \`restoreFromRepo\` to host B: **${r.rto.seconds.toFixed(1)} s** from the request to every VM running ` +
            `(the workflow's own figure: ${r.rto.workflowMs !== undefined ? (r.rto.workflowMs / 1000).toFixed(1) + ' s' : '?'}; ` +
            `${(r.rto.bytesWritten / MiB).toFixed(0)} MiB written as qcow2; VMs under ${r.rto.virtType ?? 'the stored domain type'}; ` +
            `states after: ${r.rto.states.join(', ')}).`,
        ]
      : []),
    '<!-- restore:end -->',
  ].join('\n');
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

/**
 * Off-host backup benchmark: groupsnap's export data path (backup/export-disk.ts, the code each host's export
 * activity runs) against a real S3 server (versitygw, posix backend, on 127.0.0.1), beside a plain upload of the
 * same bytes with the same SDK and beside restic backing up the same image files to the same server.
 *
 * Two points of one disk: point 1 is a qcow2 image with `--data` MiB of random data in a `--disk` GiB disk;
 * point 2 is an overlay on it with `--delta` MiB more random data, written in 4 MiB pieces spread over the disk.
 * Bytes uploaded are measured as the growth of the bucket (every object's size), the same way for every tool.
 * Each kind runs `--rounds` times (into fresh repositories), interleaved round by round in alternating order after
 * an untimed warm-up; the report compares medians.
 *
 *   npm run bench:backup -- [--disk 4] [--data 1024] [--delta 64] [--rounds 2] [--out <dir>]
 *   npm run bench:backup -- --disk 32 --data 4096 --delta 256      (the full size)
 *
 * Writes bench/results/backup-<date>.json and the "Off-host backup" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { exportDisk } from '../backup/export-disk';
import { ImageReader } from '../backup/image-reader';
import { Repository } from '../backup/repository';
import { S3Server } from '../dev/s3-server';
import { REPO_ROOT } from '../dev/tools';
import { describeMachine, type MachineDescription } from './machine';
import { benchCommand, integer, parseBenchOptions } from './options';
import { writeSection } from './kept-sections';

const run = promisify(execFile);
const MiB = 1024 * 1024;

interface Options {
  disk: number;
  data: number;
  delta: number;
  rounds: number;
  out: string;
}

const command = benchCommand('backup', "Off-host backup: groupsnap's export beside a plain SDK upload and restic")
  .option('--disk <GiB>', 'virtual size of the disk', integer(1, 1024), 4)
  .option('--data <MiB>', 'random data in point 1 (a multiple of 64)', integer(64), 1024)
  .option('--delta <MiB>', 'random data added for point 2 (a multiple of 4)', integer(4), 64)
  .option('--rounds <n>', 'timed rounds of each kind, in alternating order', integer(1, 10), 2)
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);

async function bucketBytes(client: S3Client, bucket: string, prefix = ''): Promise<number> {
  let total = 0;
  let token: string | undefined;
  do {
    const out = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of out.Contents ?? []) total += o.Size ?? 0;
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
  return total;
}

/** Writes `mib` MiB of random data into `image` at `offsets` (MiB), in pieces of `piece` MiB. */
async function writeRandom(image: string, offsets: number[], piece: number, dir: string): Promise<void> {
  const src = join(dir, 'random.bin');
  for (const off of offsets) {
    await writeFile(src, randomBytes(piece * MiB));
    await run('qemu-io', ['-f', 'qcow2', image, '-c', `write -s ${src} ${off * MiB} ${piece * MiB}`]);
  }
  await rm(src, { force: true });
}

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { value, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

function resticPath(): string | undefined {
  const local = join(REPO_ROOT, '.tools/bin/restic');
  try {
    readFileSync(local);
    return local;
  } catch {
    return undefined;
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** One kind's rounds: seconds of each, bytes uploaded (bucket growth) of each. */
interface Series {
  seconds: number[];
  bytes: number[];
}
const series = (): Series => ({ seconds: [], bytes: [] });

/** The measured kinds' shared state: where the images and the bucket are, and what each round adds up. */
interface Bench {
  client: S3Client;
  s3: S3Server;
  dir: string;
  key: Buffer;
  /** Point 1's image and point 2's layer over it. */
  base: string;
  top: string;
  /** The chunks point 1 holds (allocated extents), for the plain upload. */
  pieces: number[];
  chunkSize: number;
  /** restic's binary, when installed. */
  bin: string | undefined;
  resticVersion?: string;
  gs1: Series;
  gs2: Series;
  plain: Series;
  r1: Series;
  r2: Series;
  read1: number;
  read2: number;
}

const names = (snapshotId: string) => ({ group: 'bench', snapshotId, domain: 'vm', target: 'vda' });

/** Point 1's disk with `--data` MiB of random data, and point 2's layer with `--delta` MiB more. */
async function prepareImages(opts: Options, dir: string): Promise<{ base: string; top: string }> {
  const { disk: diskGiB, data: dataMiB, delta: deltaMiB } = opts;
  const images = join(dir, 'images');
  mkdirSync(images);
  const base = join(images, 'vm.vda.qcow2');
  const top = join(images, 'vm.vda.p2.qcow2');
  console.error(`preparing a ${diskGiB} GiB disk with ${dataMiB} MiB of random data, then ${deltaMiB} MiB more ...`);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, `${diskGiB}G`]);
  await writeRandom(
    base,
    Array.from({ length: dataMiB / 64 }, (_, i) => i * 64),
    64,
    dir,
  );
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  // 4 MiB pieces at 4 MiB-aligned offsets spread over the disk (a misaligned piece touches two chunks).
  const stride = Math.floor((diskGiB * 1024) / (deltaMiB / 4) / 4) * 4;
  await writeRandom(
    top,
    Array.from({ length: deltaMiB / 4 }, (_, i) => i * stride + 4),
    4,
    dir,
  );
  return { base, top };
}

/**
 * The chunks point 1 holds (allocated extents), for the plain upload: learnt from a first, untimed export that
 * also warms up this process (code loaded and compiled, connections open) for every kind alike.
 */
async function warmUp(key: Buffer, base: string): Promise<{ pieces: number[]; chunkSize: number }> {
  const repo = await Repository.init('s3://bench/warmup', key);
  try {
    const warm = await exportDisk({ repo, names: names('p1'), image: base, format: 'qcow2' });
    return {
      chunkSize: repo.chunkSize,
      pieces: warm.manifest.chunks.map((c, i) => (c === null ? -1 : i)).filter((i) => i >= 0),
    };
  } finally {
    repo.close();
  }
}

/** groupsnap: point 1 into a fresh repository, then point 2 over it. */
async function groupsnapRound(b: Bench, round: number): Promise<void> {
  const { client, key, base, top } = b;
  const prefix = `groupsnap-${round}/`;
  const repo = await Repository.init(`s3://bench/${prefix.slice(0, -1)}`, key);
  try {
    const b0 = await bucketBytes(client, 'bench', prefix);
    const first = await timed(() => exportDisk({ repo, names: names('p1'), image: base, format: 'qcow2' }));
    const b1 = await bucketBytes(client, 'bench', prefix);
    const second = await timed(() =>
      exportDisk({
        repo,
        names: names('p2'),
        image: top,
        format: 'qcow2',
        base: { snapshotId: 'p1', image: base, manifest: first.value.manifest },
      }),
    );
    const b2 = await bucketBytes(client, 'bench', prefix);
    b.gs1.seconds.push(first.seconds);
    b.gs1.bytes.push(b1 - b0);
    b.gs2.seconds.push(second.seconds);
    b.gs2.bytes.push(b2 - b1);
    b.read1 = first.value.manifest.stats.bytesRead;
    b.read2 = second.value.manifest.stats.bytesRead;
    console.error(`  groupsnap point 1 ${first.seconds.toFixed(2)} s, point 2 ${second.seconds.toFixed(2)} s`);
  } finally {
    repo.close();
  }
}

/** A plain upload of the same bytes point 1 reads (its allocated extents, 4 MiB objects, 3 in flight). */
async function plainRound(b: Bench, round: number): Promise<void> {
  const { client, base, pieces, chunkSize } = b;
  const prefix = `plain-${round}/`;
  const t = await timed(async () => {
    const reader = await ImageReader.open(base, 'qcow2');
    try {
      let next = 0;
      await Promise.all(
        [0, 1, 2].map(async () => {
          while (next < pieces.length) {
            const i = pieces[next++];
            const data = await reader.read(i * chunkSize, chunkSize);
            await client.send(new PutObjectCommand({ Bucket: 'bench', Key: `${prefix}${i}`, Body: data }));
          }
        }),
      );
    } finally {
      await reader.close();
    }
  });
  b.plain.seconds.push(t.seconds);
  b.plain.bytes.push(await bucketBytes(client, 'bench', prefix));
  console.error(`  plain upload ${t.seconds.toFixed(2)} s`);
}

/** restic: the same image files, to the same server, two snapshots (the second after point 2's layer exists). */
async function resticRound(b: Bench, round: number): Promise<void> {
  const { bin, client, s3, dir, base, top } = b;
  if (!bin) return;
  const prefix = `restic-${round}/`;
  const env = {
    ...process.env,
    RESTIC_PASSWORD: 'bench',
    RESTIC_REPOSITORY: `s3:${s3.endpoint}/bench/restic-${round}`,
  };
  b.resticVersion ??= (await run(bin, ['version'], { env })).stdout.trim();
  await run(bin, ['init'], { env });
  const b0 = await bucketBytes(client, 'bench', prefix);
  const src = join(dir, `restic-src-${round}`);
  mkdirSync(src);
  // Snapshot 1 sees point 1's image only; snapshot 2 the same directory with point 2's layer added.
  await run('cp', ['--sparse=always', base, join(src, 'vm.vda.qcow2')]);
  const first = await timed(() => run(bin, ['backup', '-q', src], { env, maxBuffer: 64 * MiB }));
  const b1 = await bucketBytes(client, 'bench', prefix);
  await run('cp', ['--sparse=always', top, join(src, 'vm.vda.p2.qcow2')]);
  const second = await timed(() => run(bin, ['backup', '-q', src], { env, maxBuffer: 64 * MiB }));
  const b2 = await bucketBytes(client, 'bench', prefix);
  await rm(src, { recursive: true, force: true });
  b.r1.seconds.push(first.seconds);
  b.r1.bytes.push(b1 - b0);
  b.r2.seconds.push(second.seconds);
  b.r2.bytes.push(b2 - b1);
  console.error(`  restic snapshot 1 ${first.seconds.toFixed(2)} s, snapshot 2 ${second.seconds.toFixed(2)} s`);
}

/** The raw results under `--out`'s bench/results/, and the BENCHMARKS.md section (also printed). */
function writeResults(opts: Options, machine: MachineDescription, b: Bench): void {
  const results: Results = {
    date: machine.date,
    machine,
    diskGiB: opts.disk,
    dataMiB: opts.data,
    deltaMiB: opts.delta,
    rounds: opts.rounds,
    groupsnap: {
      first: { ...b.gs1, bytesRead: b.read1 },
      second: { ...b.gs2, bytesRead: b.read2 },
    },
    plainUpload: b.plain,
    ...(b.bin ? { restic: { first: b.r1, second: b.r2, version: b.resticVersion ?? '?' } } : {}),
  };
  const outRoot = opts.out;
  const resultsDir = join(outRoot, 'bench/results');
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `backup-${results.date.slice(0, 10)}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  const section = renderSection(results, file.slice(outRoot.length + 1));
  writeSection(outRoot, 'backup', section);
  console.log(section);
}

async function main(): Promise<void> {
  const opts = parseBenchOptions<Options>(command);
  const { disk: diskGiB, data: dataMiB, delta: deltaMiB } = opts;
  if (dataMiB % 64 !== 0 || deltaMiB % 4 !== 0 || dataMiB > diskGiB * 1024) {
    console.error('--data must be a multiple of 64 and fit in --disk; --delta a multiple of 4');
    process.exit(2);
  }
  const machine = describeMachine();
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-backup-');
  mkdirSync(join(dir, 's3'), { recursive: true });
  const s3 = await S3Server.start({ dir: join(dir, 's3') });
  Object.assign(process.env, s3.env);
  const client = s3.client();
  try {
    await s3.createBucket('bench');
    const { base, top } = await prepareImages(opts, dir);
    const key = randomBytes(32);
    const { pieces, chunkSize } = await warmUp(key, base);
    const bin = resticPath();
    const b: Bench = {
      client,
      s3,
      dir,
      key,
      base,
      top,
      pieces,
      chunkSize,
      bin,
      gs1: series(),
      gs2: series(),
      plain: series(),
      r1: series(),
      r2: series(),
      read1: 0,
      read2: 0,
    };
    if (!bin)
      console.error('restic not found in .tools/bin (go install github.com/restic/restic/cmd/restic@latest): skipped');

    const kinds = [groupsnapRound, plainRound, resticRound];
    for (let round = 0; round < opts.rounds; round++) {
      console.error(`round ${round + 1} of ${opts.rounds}`);
      const order = round % 2 === 0 ? kinds : [...kinds].reverse();
      for (const k of order) await k(b, round);
    }
    writeResults(opts, machine, b);
  } finally {
    client.destroy();
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

type Results = {
  date: string;
  machine: MachineDescription;
  diskGiB: number;
  dataMiB: number;
  deltaMiB: number;
  rounds: number;
  groupsnap: Record<'first' | 'second', Series & { bytesRead: number }>;
  plainUpload: Series;
  restic?: { first: Series; second: Series; version: string };
};

function renderSection(r: Results, rawFile: string): string {
  const mib = (n: number) => (n / MiB).toFixed(1);
  const g = r.groupsnap;
  const s = (x: Series) => median(x.seconds);
  const each = (x: Series) => x.seconds.map((v) => v.toFixed(2)).join(', ');
  const tput = (bytes: number, sec: number) => (bytes / MiB / sec).toFixed(1);
  const delta = r.deltaMiB * MiB;
  const plainBytes = r.plainUpload.bytes[0] ?? 0;
  const rows = [
    `| groupsnap, point 1 (full: allocated extents) | ${each(g.first)} | ${s(g.first).toFixed(2)} | ${mib(g.first.bytesRead)} | ${mib(g.first.bytes[0])} | ${tput(g.first.bytesRead, s(g.first))} |`,
    `| groupsnap, point 2 (incremental) | ${each(g.second)} | ${s(g.second).toFixed(2)} | ${mib(g.second.bytesRead)} | ${mib(g.second.bytes[0])} | ${tput(g.second.bytesRead, s(g.second))} |`,
    `| plain SDK upload of point 1's bytes (4 MiB PutObject, 3 in flight, SDK defaults) | ${each(r.plainUpload)} | ${s(r.plainUpload).toFixed(2)} | ${mib(plainBytes)} | ${mib(plainBytes)} | ${tput(plainBytes, s(r.plainUpload))} |`,
    ...(r.restic
      ? [
          `| restic, snapshot 1 | ${each(r.restic.first)} | ${s(r.restic.first).toFixed(2)} | | ${mib(r.restic.first.bytes[0])} | |`,
          `| restic, snapshot 2 | ${each(r.restic.second)} | ${s(r.restic.second).toFixed(2)} | | ${mib(r.restic.second.bytes[0])} | |`,
        ]
      : []),
  ];
  const checks = [
    `- point 2 uploaded ${(Math.max(...g.second.bytes) / delta).toFixed(3)}x the bytes changed (target <= 1.05x)`,
    `- point 2 took ${(s(g.second) / s(g.first)).toFixed(3)}x point 1's time (target <= 0.15x)`,
    `- point 1's throughput was ${(g.first.bytesRead / s(g.first) / (plainBytes / s(r.plainUpload))).toFixed(2)}x the plain upload's (target >= 0.7x)`,
    ...(r.restic
      ? [
          `- restic's snapshot 2 took ${s(r.restic.second).toFixed(2)} s and uploaded ${mib(Math.min(...r.restic.second.bytes))} MiB; ` +
            `groupsnap's point 2 ${s(g.second).toFixed(2)} s and ${mib(Math.max(...g.second.bytes))} MiB ` +
            `(target: less time, no more bytes; medians of the times, the least restic and the most groupsnap uploaded)`,
        ]
      : ['- restic: not run (not installed)']),
  ];
  const m = r.machine;
  return [
    '<!-- backup:begin -->',
    '## Off-host backup',
    '',
    `Generated by \`npm run bench:backup -- --disk ${r.diskGiB} --data ${r.dataMiB} --delta ${r.deltaMiB} --rounds ${r.rounds}\` ` +
      `(bench/backup.ts) from \`${rawFile}\`; run ${r.date} on ${m.hostname}: ${m.cores} cores (${m.cpu}), ${m.memoryGiB} GiB, ` +
      `Node ${m.node}, load average ${(m.loadAvgAtStart ?? []).join(' / ')} at the start. **A shared 2-core machine**: ` +
      'other agents ran tests and VMs at the same time, so absolute times are rough; every kind ran in the same run, ' +
      'interleaved round by round in alternating order after an untimed warm-up export, and the checks compare medians.',
    '',
    `A **${r.diskGiB} GiB** qcow2 disk with **${r.dataMiB} MiB** of random data (point 1), then an overlay with ` +
      `**${r.deltaMiB} MiB** more random data in 4 MiB pieces at 4 MiB-aligned offsets spread over the disk (point 2; ` +
      "fixed-size chunks upload whole chunks, so a small write that straddles two chunks costs two): the issue's shape " +
      '(32 GiB, 4 GiB, 256 MiB) scaled down by 8 for time; `--disk 32 --data 4096 --delta 256` runs the full size. ' +
      "groupsnap's column is its export data path (`exportDisk`: qemu-img map, qemu-nbd read-only, 4 MiB chunks, " +
      'keyed hash, deflate when it pays, AES-256-GCM, dedup) without the Temporal round trips of the workflow (a few ' +
      "per disk). groupsnap hashes and seals chunks on worker threads and hands the SDK the body's SHA-256 and CRC32 " +
      'computed there (the same digests the SDK computes on the main thread for the plain upload). Everything goes ' +
      'to one versitygw on 127.0.0.1 (posix backend); bytes uploaded = growth of the bucket (first round).',
    '',
    '| what | seconds per round | median s | MiB read | MiB uploaded | MiB/s read |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
    ...checks,
    '<!-- backup:end -->',
  ].join('\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

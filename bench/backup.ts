/**
 * Off-host backup benchmark: groupsnap's export data path (backup/export-disk.ts, the code each host's export
 * activity runs) against a real S3 server (versitygw, posix backend, on 127.0.0.1), beside a plain upload of the
 * same bytes with the same SDK and beside restic backing up the same image files to the same server.
 *
 * Two points of one disk: point 1 is a qcow2 image with `--data` MiB of random data in a `--disk` GiB disk;
 * point 2 is an overlay on it with `--delta` MiB more random data, written in 4 MiB pieces spread over the disk.
 * Bytes uploaded are measured as the growth of the bucket (every object's size), the same way for every tool.
 *
 *   npm run bench:backup -- [--disk 4] [--data 1024] [--delta 64] [--out <dir>]
 *
 * Writes bench/results/backup-<date>.json and the "Off-host backup" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { exportDisk } from '../backup/export-disk';
import { Repository } from '../backup/repository';
import { S3Server } from '../dev/s3-server';
import { REPO_ROOT } from '../dev/tools';

const run = promisify(execFile);
const MiB = 1024 * 1024;

function numArg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
function strArg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

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

async function main(): Promise<void> {
  const diskGiB = numArg('disk', 4);
  const dataMiB = numArg('data', 1024);
  const deltaMiB = numArg('delta', 64);
  const outRoot = strArg('out', REPO_ROOT);
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-backup-');
  const s3 = await S3Server.start({ dir: join(dir, 's3') }).catch(async () => {
    mkdirSync(join(dir, 's3'), { recursive: true });
    return S3Server.start({ dir: join(dir, 's3') });
  });
  Object.assign(process.env, s3.env);
  const client = s3.client();
  try {
    await s3.createBucket('bench');
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

    // groupsnap: point 1 (full: reads what is allocated), then point 2 (incremental against point 1).
    const key = randomBytes(32);
    const url = 's3://bench/groupsnap';
    const repo = await Repository.init(url, key);
    const names = (snapshotId: string) => ({ group: 'bench', snapshotId, domain: 'vm', target: 'vda' });
    const b0 = await bucketBytes(client, 'bench', 'groupsnap/');
    const first = await timed(() => exportDisk({ repo, names: names('p1'), image: base, format: 'qcow2' }));
    const b1 = await bucketBytes(client, 'bench', 'groupsnap/');
    const second = await timed(() =>
      exportDisk({
        repo,
        names: names('p2'),
        image: top,
        format: 'qcow2',
        base: { snapshotId: 'p1', image: base, manifest: first.value.manifest },
      }),
    );
    const b2 = await bucketBytes(client, 'bench', 'groupsnap/');
    repo.close();

    // A plain upload of the same bytes point 1 read (its allocated extents, 4 MiB objects, 3 in flight).
    const plain = await timed(async () => {
      const { ImageReader } = await import('../backup/image-reader');
      const reader = await ImageReader.open(base, 'qcow2');
      try {
        const pieces = first.value.manifest.chunks.map((c, i) => (c === null ? -1 : i)).filter((i) => i >= 0);
        let next = 0;
        await Promise.all(
          [0, 1, 2].map(async () => {
            while (next < pieces.length) {
              const i = pieces[next++];
              const data = await reader.read(i * repo.chunkSize, repo.chunkSize);
              await client.send(new PutObjectCommand({ Bucket: 'bench', Key: `plain/${i}`, Body: data }));
            }
          }),
        );
      } finally {
        await reader.close();
      }
    });
    const plainBytes = await bucketBytes(client, 'bench', 'plain/');

    // restic: the same image files, to the same server, two snapshots (the second after point 2's layer exists).
    let restic: { first: number; second: number; bytes1: number; bytes2: number; version: string } | undefined;
    const bin = resticPath();
    if (bin) {
      const env = { ...process.env, RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: `s3:${s3.endpoint}/bench/restic` };
      const version = (await run(bin, ['version'], { env })).stdout.trim();
      await run(bin, ['init'], { env });
      const r0 = await bucketBytes(client, 'bench', 'restic/');
      const mk = join(dir, 'restic-src');
      mkdirSync(mk);
      // Snapshot 1 sees point 1's image only; snapshot 2 the same directory with point 2's layer added.
      await run('cp', ['--sparse=always', base, join(mk, 'vm.vda.qcow2')]);
      const rf = await timed(() => run(bin, ['backup', '-q', mk], { env, maxBuffer: 64 * MiB }));
      const r1 = await bucketBytes(client, 'bench', 'restic/');
      await run('cp', ['--sparse=always', top, join(mk, 'vm.vda.p2.qcow2')]);
      const rs = await timed(() => run(bin, ['backup', '-q', mk], { env, maxBuffer: 64 * MiB }));
      const r2 = await bucketBytes(client, 'bench', 'restic/');
      restic = { first: rf.seconds, second: rs.seconds, bytes1: r1 - r0, bytes2: r2 - r1, version };
    } else {
      console.error('restic not found in .tools/bin (go install github.com/restic/restic/cmd/restic@latest): skipped');
    }

    const results = {
      date: new Date().toISOString(),
      machine: {
        cpus: cpus().length,
        cpu: cpus()[0]?.model,
        memGiB: Math.round(totalmem() / 1024 ** 3),
        node: process.version,
      },
      diskGiB,
      dataMiB,
      deltaMiB,
      groupsnap: {
        first: { seconds: first.seconds, bytesRead: first.value.manifest.stats.bytesRead, bytesUploaded: b1 - b0 },
        second: { seconds: second.seconds, bytesRead: second.value.manifest.stats.bytesRead, bytesUploaded: b2 - b1 },
      },
      plainUpload: { seconds: plain.seconds, bytes: plainBytes },
      ...(restic ? { restic } : {}),
    };
    const resultsDir = join(outRoot, 'bench/results');
    mkdirSync(resultsDir, { recursive: true });
    const file = join(resultsDir, `backup-${results.date.slice(0, 10)}.json`);
    writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
    const section = renderSection(results, file.slice(outRoot.length + 1));
    const mdFile = join(outRoot, 'BENCHMARKS.md');
    let md = '';
    try {
      md = readFileSync(mdFile, 'utf8');
    } catch {
      md = '# Benchmarks\n';
    }
    const begin = '<!-- backup:begin -->';
    const end = '<!-- backup:end -->';
    md = md.includes(begin)
      ? md.slice(0, md.indexOf(begin)) + section + md.slice(md.indexOf(end) + end.length)
      : md.trimEnd() + '\n\n' + section + '\n';
    writeFileSync(mdFile, md);
    console.log(section);
  } finally {
    client.destroy();
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

type Results = {
  date: string;
  machine: { cpus: number; cpu?: string; memGiB: number; node: string };
  diskGiB: number;
  dataMiB: number;
  deltaMiB: number;
  groupsnap: Record<'first' | 'second', { seconds: number; bytesRead: number; bytesUploaded: number }>;
  plainUpload: { seconds: number; bytes: number };
  restic?: { first: number; second: number; bytes1: number; bytes2: number; version: string };
};

function renderSection(r: Results, rawFile: string): string {
  const mib = (n: number) => (n / MiB).toFixed(1);
  const g = r.groupsnap;
  const tput = (bytes: number, s: number) => (bytes / MiB / s).toFixed(1);
  const delta = r.deltaMiB * MiB;
  const rows = [
    `| groupsnap, point 1 (full: allocated extents) | ${g.first.seconds.toFixed(2)} | ${mib(g.first.bytesRead)} | ${mib(g.first.bytesUploaded)} | ${tput(g.first.bytesRead, g.first.seconds)} |`,
    `| groupsnap, point 2 (incremental) | ${g.second.seconds.toFixed(2)} | ${mib(g.second.bytesRead)} | ${mib(g.second.bytesUploaded)} | ${tput(g.second.bytesRead, g.second.seconds)} |`,
    `| plain SDK upload of point 1's bytes (4 MiB PutObject, 3 in flight) | ${r.plainUpload.seconds.toFixed(2)} | ${mib(r.plainUpload.bytes)} | ${mib(r.plainUpload.bytes)} | ${tput(r.plainUpload.bytes, r.plainUpload.seconds)} |`,
    ...(r.restic
      ? [
          `| restic, snapshot 1 | ${r.restic.first.toFixed(2)} | | ${mib(r.restic.bytes1)} | |`,
          `| restic, snapshot 2 | ${r.restic.second.toFixed(2)} | | ${mib(r.restic.bytes2)} | |`,
        ]
      : []),
  ];
  const checks = [
    `- point 2 uploaded ${(g.second.bytesUploaded / delta).toFixed(3)}x the bytes changed (target <= 1.05x)`,
    `- point 2 took ${(g.second.seconds / g.first.seconds).toFixed(3)}x point 1's time (target <= 0.15x)`,
    `- point 1's throughput was ${(g.first.bytesRead / g.first.seconds / (r.plainUpload.bytes / r.plainUpload.seconds)).toFixed(2)}x the plain upload's (target >= 0.7x)`,
    ...(r.restic
      ? [
          `- restic's snapshot 2 took ${r.restic.second.toFixed(2)} s and uploaded ${mib(r.restic.bytes2)} MiB; ` +
            `groupsnap's point 2 ${g.second.seconds.toFixed(2)} s and ${mib(g.second.bytesUploaded)} MiB ` +
            `(target: less time, no more bytes)`,
        ]
      : ['- restic: not run (not installed)']),
  ];
  return [
    '<!-- backup:begin -->',
    '## Off-host backup',
    '',
    `Generated by \`npm run bench:backup\` (bench/backup.ts) from \`${rawFile}\`; run ${r.date} on ${r.machine.cpus} cores ` +
      `(${r.machine.cpu ?? '?'}), ${r.machine.memGiB} GiB, Node ${r.machine.node}. One run, not a distribution: ` +
      'the machine is shared, so treat absolute times as rough and compare side by side.',
    '',
    `A **${r.diskGiB} GiB** qcow2 disk with **${r.dataMiB} MiB** of random data (point 1), then an overlay with ` +
      `**${r.deltaMiB} MiB** more random data in 4 MiB pieces at 4 MiB-aligned offsets spread over the disk (point 2; ` +
      "fixed-size chunks upload whole chunks, so a small write that straddles two chunks costs two): the issue's shape " +
      '(32 GiB, 4 GiB, 256 MiB) scaled down by 8 for time; `--disk 32 --data 4096 --delta 256` runs the full size. ' +
      "groupsnap's column is its export data path (`exportDisk`: qemu-img map, qemu-nbd read-only, 4 MiB chunks, " +
      'deflate, AES-256-GCM, dedup by keyed hash) without the Temporal round trips of the workflow (a few per disk). ' +
      'Everything goes to one versitygw on 127.0.0.1 (posix backend); bytes uploaded = growth of the bucket.',
    '',
    '| what | seconds | MiB read | MiB uploaded | MiB/s read |',
    '| --- | --- | --- | --- | --- |',
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

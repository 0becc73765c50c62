/**
 * Export into a large repository benchmark (issue 24, item 4): an incremental export of a small change into a
 * repository of `--chunks` chunks and `--points` points, beside the same export into an empty repository (target:
 * at most 2x its time). Both repositories are on one real S3 server (versitygw, posix backend, on 127.0.0.1).
 *
 * The large repository is made cheaply, honestly said in the report: its chunks are real sealed chunks of tiny
 * distinct plaintexts (a few bytes each, named by their keyed hash) and its points real sealed manifests naming
 * them, written straight into versitygw's posix root directory under the right object keys (the FileStore writes
 * the same layout: bucket directory / key), not uploaded through S3 one by one. Its chunk index is what the
 * exports would have left: one index object per point. The base point's export into each (untimed) compacts the
 * large one's index, as the first export after many points does; one untimed export of an overlay then warms up. The timed step is what an export
 * activity does after the repository lock: find its base by name (`hasPoint`, disk manifest) and `exportDisk` (chunk
 * index, qemu-img map, qemu-nbd reads of the changed chunks, sealing, uploads, index object, disk manifest).
 *
 *   npx tsc -p tsconfig.build.json && node dist/bench/export-index.js [--chunks 300000] [--points 500]
 *       [--change 8] [--rounds 3] [--out <dir>]
 *
 * Writes bench/results/export-index-<date>.json and the "Export into a large repository" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chunkIdOf, deriveKeys, seal } from '../backup/crypto';
import { exportDisk, type ExportBase } from '../backup/export-disk';
import { FORMAT_VERSION, type DiskManifest } from '../backup/manifest';
import { Repository } from '../backup/repository';
import { FileStore } from '../backup/store';
import { S3Server } from '../dev/s3-server';
import { REPO_ROOT } from '../dev/tools';
import { describeMachine, type MachineDescription } from './machine';
import { benchCommand, integer, parseBenchOptions } from './options';
import { writeSection } from './kept-sections';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** The bench's options (exported for the option-parsing test). */
export interface ExportIndexOptions {
  chunks: number;
  points: number;
  change: number;
  rounds: number;
  out: string;
}

/** The bench's command line. */
export function exportIndexCommand() {
  return benchCommand('export-index', 'An incremental export into a large repository vs into an empty one')
    .option('--chunks <n>', 'chunks in the large repository', integer(1000, 10_000_000), 300_000)
    .option('--points <n>', 'points in the large repository', integer(1, 100_000), 500)
    .option('--change <MiB>', 'data changed since the base point (a multiple of 4)', integer(4, 1024), 8)
    .option('--rounds <n>', 'timed rounds of each repository, in alternating order', integer(1, 10), 3)
    .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);
}

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { value, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** `mib` MiB of random data written into `image` in 4 MiB pieces at `offsets` (MiB). */
async function writeRandom(image: string, offsets: number[], dir: string): Promise<void> {
  const src = join(dir, 'random.bin');
  for (const off of offsets) {
    await writeFile(src, randomBytes(4 * MiB));
    await run('qemu-io', ['-f', 'qcow2', image, '-c', `write -s ${src} ${off * MiB} ${4 * MiB}`]);
  }
  await rm(src, { force: true });
}

/**
 * Fills the repository at `url` (bucket directory `root` of versitygw's posix backend) with `chunks` tiny sealed
 * chunks and `points` points naming them, and one index object per point, through a FileStore on that directory.
 */
async function fillLarge(url: string, root: string, key: Buffer, chunks: number, points: number): Promise<void> {
  const repo = await Repository.open(url, key, { store: new FileStore(url, root) });
  try {
    const keys = deriveKeys(key, repo.config.id);
    for (let i = 0; i < 256; i++) mkdirSync(join(root, 'chunks', i.toString(16).padStart(2, '0')), { recursive: true });
    const perPoint = Math.ceil(chunks / points);
    let made = 0;
    for (let p = 0; p < points; p++) {
      const ids: string[] = [];
      const batch: Promise<void>[] = [];
      for (let i = 0; i < perPoint && made < chunks; i++, made++) {
        const data = Buffer.from(`synthetic chunk ${made}`);
        const id = chunkIdOf(keys, data);
        ids.push(id);
        // The object's file as versitygw's posix backend keeps it: <bucket dir>/<key>.
        batch.push(seal(keys, data, id).then((sealed) => writeFile(join(root, Repository.chunkKey(id)), sealed)));
        if (batch.length >= 256) await Promise.all(batch.splice(0));
      }
      await Promise.all(batch);
      const snapshotId = `gs-2026${String(p).padStart(8, '0')}T000000Z-synth`;
      const names = { group: 'other', snapshotId, domain: 'vm' };
      const stats = { mode: 'full' as const, bytesRead: 0, bytesNew: 0, bytesUploaded: 0, chunksNew: ids.length };
      const disk = {
        target: 'vda',
        virtualSize: ids.length * repo.chunkSize,
        sourceFormat: 'qcow2',
        sourceImage: '/synthetic',
        stats: { ...stats, chunksData: ids.length },
      };
      const diskKey = await repo.writeDiskManifest({
        version: FORMAT_VERSION,
        ...names,
        ...disk,
        chunkSize: repo.chunkSize,
        chunks: ids,
      });
      await repo.indexChunks(ids);
      const vmKey = await repo.writeVmManifest({
        version: FORMAT_VERSION,
        group: 'other',
        snapshotId,
        domain: 'vm',
        host: 'synthetic',
        domainXml: '<domain/>',
        disks: [{ ...disk, manifest: diskKey }],
      });
      await repo.writeGroupManifest({
        version: FORMAT_VERSION,
        group: 'other',
        snapshotId,
        snapshotCreatedAt: new Date(Date.UTC(2026, 0, 1) + p * 3600_000).toISOString(),
        exportedAt: new Date().toISOString(),
        vms: [
          {
            domain: 'vm',
            host: 'synthetic',
            manifest: vmKey,
            disks: [{ target: 'vda', virtualSize: disk.virtualSize }],
          },
        ],
        stats: { logicalBytes: 0, bytesRead: 0, bytesNew: 0, bytesUploaded: 0, chunksNew: 0, chunksData: ids.length },
      });
      if (p % 50 === 49) console.error(`  ${p + 1} of ${points} points, ${made} chunks`);
    }
  } finally {
    repo.close();
  }
}

interface Results {
  date: string;
  machine: MachineDescription;
  chunks: number;
  points: number;
  changeMiB: number;
  rounds: number;
  fillSeconds: number;
  /** Seconds of each timed round. */
  empty: number[];
  large: number[];
  /** The untimed warm-up export of an overlay into each. */
  warmup: { empty: number; large: number };
  /** The full export of the base point into each (the large one's compacts the per-point index objects). */
  baseSeconds: { empty: number; large: number };
  /** What the old code did on the large repository before its first heartbeat: list every chunk, every point. */
  oldListings: { chunksSeconds: number; pointsSeconds: number };
  indexObjectsAfter: number;
}

async function main(): Promise<void> {
  const opts = parseBenchOptions<ExportIndexOptions>(exportIndexCommand());
  if (opts.change % 4 !== 0) {
    console.error('--change must be a multiple of 4');
    process.exit(2);
  }
  const machine = describeMachine();
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-export-index-');
  const s3dir = join(dir, 's3');
  mkdirSync(s3dir, { recursive: true });
  const s3 = await S3Server.start({ dir: s3dir });
  Object.assign(process.env, s3.env);
  try {
    await s3.createBucket('bench');
    const key = randomBytes(32);
    const urls = { empty: 's3://bench/empty', large: 's3://bench/large' };
    for (const url of Object.values(urls)) (await Repository.init(url, key)).close();
    console.error(`filling the large repository: ${opts.chunks} chunks, ${opts.points} points ...`);
    const fill = await timed(() => fillLarge(urls.large, join(s3dir, 'bench', 'large'), key, opts.chunks, opts.points));

    // The disk: 1 GiB, 64 MiB of data (the base point), then per round an overlay with `--change` MiB more.
    const images = join(dir, 'images');
    mkdirSync(images);
    const base = join(images, 'vm.vda.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '1G']);
    await writeRandom(
      base,
      Array.from({ length: 16 }, (_, i) => i * 4),
      dir,
    );
    const names = (snapshotId: string) => ({ group: 'bench', snapshotId, domain: 'vm', target: 'vda' });
    const bases: Record<string, ExportBase> = {};
    const baseSeconds = { empty: 0, large: 0 };
    for (const [kind, url] of Object.entries(urls)) {
      const repo = await Repository.open(url, key);
      try {
        const t = await timed(() => exportDisk({ repo, names: names('gs-base'), image: base, format: 'qcow2' }));
        const r = t.value;
        baseSeconds[kind as 'empty' | 'large'] = t.seconds;
        await repo.writeGroupManifest({
          version: FORMAT_VERSION,
          group: 'bench',
          snapshotId: 'gs-base',
          snapshotCreatedAt: new Date().toISOString(),
          exportedAt: new Date().toISOString(),
          vms: [],
          stats: { logicalBytes: 0, bytesRead: 0, bytesNew: 0, bytesUploaded: 0, chunksNew: 0, chunksData: 0 },
        });
        bases[kind] = { snapshotId: 'gs-base', image: base, manifest: r.manifest };
      } finally {
        repo.close();
      }
    }

    let overlayNo = 0;
    const overlay = async (): Promise<string> => {
      const top = join(images, `vm.vda.r${overlayNo++}.qcow2`);
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
      await writeRandom(
        top,
        Array.from({ length: opts.change / 4 }, (_, i) => 128 + i * 64),
        dir,
      );
      return top;
    };
    /** The timed step: the base found by name, then the export of the overlay. */
    const exportInto = async (kind: 'empty' | 'large', top: string, snapshotId: string): Promise<number> => {
      const repo = await Repository.open(urls[kind], key);
      try {
        const t = await timed(async () => {
          if (!(await repo.hasPoint('bench', 'gs-base'))) throw new Error('no base point');
          const manifest: DiskManifest = await repo.readDiskManifest('bench', 'gs-base', 'vm', 'vda');
          return exportDisk({
            repo,
            names: names(snapshotId),
            image: top,
            format: 'qcow2',
            base: { snapshotId: 'gs-base', image: base, manifest },
          });
        });
        if (t.value.manifest.stats.mode !== 'incremental') throw new Error('the export was not incremental');
        return t.seconds;
      } finally {
        repo.close();
      }
    };

    const warmTop = await overlay();
    const warmup = {
      empty: await exportInto('empty', warmTop, 'gs-warm'),
      large: await exportInto('large', warmTop, 'gs-warm'),
    };
    console.error(`warm-up: empty ${warmup.empty.toFixed(2)} s, large ${warmup.large.toFixed(2)} s`);
    const empty: number[] = [];
    const large: number[] = [];
    for (let round = 0; round < opts.rounds; round++) {
      const top = await overlay();
      const order: ('empty' | 'large')[] = round % 2 === 0 ? ['empty', 'large'] : ['large', 'empty'];
      for (const kind of order) {
        const s = await exportInto(kind, top, `gs-r${round}`);
        (kind === 'empty' ? empty : large).push(s);
        console.error(`  round ${round + 1}: ${kind} ${s.toFixed(2)} s`);
      }
    }

    // For comparison: the listings the export used to make before its first heartbeat.
    const repo = await Repository.open(urls.large, key);
    let oldListings: Results['oldListings'];
    let indexObjectsAfter = 0;
    try {
      const chunksList = await timed(() => repo.listChunks());
      const pointsList = await timed(() => repo.listPoints({ group: 'other' }));
      oldListings = { chunksSeconds: chunksList.seconds, pointsSeconds: pointsList.seconds };
      for await (const o of repo.store.list('index/')) if (o.key) indexObjectsAfter++;
    } finally {
      repo.close();
    }

    const results: Results = {
      date: machine.date,
      machine,
      chunks: opts.chunks,
      points: opts.points,
      changeMiB: opts.change,
      rounds: opts.rounds,
      fillSeconds: fill.seconds,
      empty,
      large,
      warmup,
      baseSeconds,
      oldListings,
      indexObjectsAfter,
    };
    const resultsDir = join(opts.out, 'bench/results');
    mkdirSync(resultsDir, { recursive: true });
    const file = join(resultsDir, `export-index-${results.date.slice(0, 10)}.json`);
    writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
    const section = renderSection(results, file.slice(opts.out.length + 1));
    writeSection(opts.out, 'export-index', section);
    console.log(section);
  } finally {
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

function renderSection(r: Results, rawFile: string): string {
  const m = r.machine;
  const each = (xs: number[]) => xs.map((v) => v.toFixed(2)).join(', ');
  const ratio = median(r.large) / median(r.empty);
  return [
    '<!-- export-index:begin -->',
    '## Export into a large repository',
    '',
    `Generated by \`node dist/bench/export-index.js --chunks ${r.chunks} --points ${r.points} --change ${r.changeMiB} ` +
      `--rounds ${r.rounds}\` (bench/export-index.ts) from \`${rawFile}\`; run ${r.date} on ${m.hostname}: ${m.cores} ` +
      `cores (${m.cpu}), ${m.memoryGiB} GiB, Node ${m.node}, load average ${(m.loadAvgAtStart ?? []).join(' / ')} at ` +
      'the start. **A shared 2-core machine**: other agents ran tests and VMs at the same time, so times are rough.',
    '',
    `An incremental export of **${r.changeMiB} MiB** changed (4 MiB pieces in a 1 GiB qcow2 disk with 64 MiB of ` +
      `data) into a repository of **${r.chunks} chunks and ${r.points} points**, beside the same export into an empty ` +
      'repository (only the base point in it), both on one versitygw on 127.0.0.1 (posix backend), 4 MiB chunks. ' +
      "Timed: what the export activity does after the repository lock (base point looked up by name, `exportDisk`: the chunk index, qemu-img map, qemu-nbd reads, sealing, uploads, the export's index object, the disk manifest); " +
      `rounds interleaved in alternating order after an untimed warm-up export into each. The large repository was made cheaply (in ${r.fillSeconds.toFixed(0)} s): its chunks are real sealed chunks of ` +
      'tiny distinct plaintexts (a few bytes, not 4 MiB) and its points real sealed manifests naming them, written ' +
      "straight into versitygw's posix root directory under the right keys rather than uploaded one by one, with one " +
      'index object per point as exports leave them; the first export into it (the base point, untimed) compacted ' +
      `them into a few (${r.indexObjectsAfter} index objects after the run: the compacted ones and one per later export). ` +
      'Nothing in the timed step reads those chunks, so their size does not matter to it; their number would, to a listing.',
    '',
    '| repository | seconds per round | median s |',
    '| --- | --- | --- |',
    `| empty (the base point only) | ${each(r.empty)} | ${median(r.empty).toFixed(2)} |`,
    `| ${r.chunks} chunks, ${r.points} points | ${each(r.large)} | ${median(r.large).toFixed(2)} |`,
    '',
    `- the large repository's export took ${ratio.toFixed(2)}x the empty one's (target <= 2x)`,
    `- untimed: the base point's full export (64 MiB; in the large repository it compacted ${r.points} index objects) ` +
      `empty ${r.baseSeconds.empty.toFixed(2)} s, large ${r.baseSeconds.large.toFixed(2)} s; the warm-up export ` +
      `empty ${r.warmup.empty.toFixed(2)} s, large ${r.warmup.large.toFixed(2)} s`,
    `- for comparison, what the export did before this change ahead of its first heartbeat, on the large repository: ` +
      `listing every chunk ${r.oldListings.chunksSeconds.toFixed(2)} s, listing the points of one group ` +
      `(${r.points}, each manifest read) ${r.oldListings.pointsSeconds.toFixed(2)} s`,
    '<!-- export-index:end -->',
  ].join('\n');
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

/**
 * Copy benchmark (issue 26): `repo copy` of one point into a second repository, beside restic's `copy` of the same
 * data's snapshot between two restic repositories, all on the same versitygw (127.0.0.1, posix backend). groupsnap
 * copies as a replica (the source's key: each chunk's sealed bytes checked, then stored as they are) and under another
 * key (resealed: new chunk ids, manifests rewritten); restic's copy decrypts and re-encrypts every blob under the
 * target repository's key. Each round copies into a fresh target; kinds alternate in order round by round.
 *
 *   npm run bench:copy -- [--data 1024] [--rounds 2] [--out <dir>]
 *
 * Writes bench/results/copy-<date>.json and the "Copy to a second repository" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, open as openFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { copyRepository, openCopyTarget } from '../backup/copy';
import { FORMAT_VERSION, sumStats, type DiskExportStats } from '../backup/manifest';
import { Repository } from '../backup/repository';
import { S3Server } from '../dev/s3-server';
import { REPO_ROOT } from '../dev/tools';
import { describeMachine, type MachineDescription } from './machine';
import { benchCommand, integer, parseBenchOptions } from './options';
import { writeSection } from './kept-sections';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const CHUNK = 4 * MiB;

interface Options {
  data: number;
  rounds: number;
  out: string;
}

const command = benchCommand('copy', "Copy to a second repository: groupsnap's repo copy beside restic's copy")
  .option('--data <MiB>', 'random data in the point (a multiple of 4)', integer(4), 1024)
  .option('--rounds <n>', 'timed rounds of each kind, in alternating order', integer(1, 10), 2)
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);

interface Row {
  what: string;
  seconds: number[];
}

interface Results {
  machine: MachineDescription;
  /** Load average (1 min) when the run ended. */
  loadAvgAtEnd: number;
  options: Omit<Options, 'out'>;
  dataBytes: number;
  rows: Row[];
  resticVersion?: string;
}

function resticPath(): string | undefined {
  const local = join(REPO_ROOT, '.tools/bin/restic');
  return existsSync(local) ? local : undefined;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** The image file (random data) and a groupsnap point of it: one VM, one disk, 4 MiB chunks. */
async function preparePoint(url: string, key: Buffer, image: string, mib: number): Promise<void> {
  const fh = await openFile(image, 'w');
  const repo = await Repository.init(url, key, { chunkSize: CHUNK });
  try {
    const chunks: string[] = [];
    for (let i = 0; i < mib / 4; i++) {
      const data = randomBytes(CHUNK);
      await fh.write(data, 0, CHUNK, i * CHUNK);
      chunks.push((await repo.putChunk(data)).id);
    }
    const stats: DiskExportStats = {
      mode: 'full',
      bytesRead: mib * MiB,
      bytesNew: mib * MiB,
      bytesUploaded: mib * MiB,
      chunksNew: chunks.length,
      chunksData: chunks.length,
    };
    const size = mib * MiB;
    const point = { version: FORMAT_VERSION, group: 'bench', snapshotId: 'gs-bench' };
    const dk = await repo.writeDiskManifest({
      ...point,
      domain: 'vm',
      target: 'vda',
      sourceFormat: 'raw',
      sourceImage: image,
      virtualSize: size,
      chunkSize: CHUNK,
      chunks,
      stats,
    });
    const vk = await repo.writeVmManifest({
      ...point,
      domain: 'vm',
      host: 'bench',
      domainXml: '<domain><name>vm</name></domain>',
      disks: [{ target: 'vda', manifest: dk, virtualSize: size, sourceFormat: 'raw', sourceImage: image, stats }],
    });
    await repo.writeGroupManifest({
      ...point,
      snapshotCreatedAt: new Date().toISOString(),
      exportedAt: new Date().toISOString(),
      vms: [{ domain: 'vm', host: 'bench', manifest: vk, disks: [{ target: 'vda', virtualSize: size }] }],
      stats: sumStats([{ virtualSize: size, stats }]),
    });
  } finally {
    repo.close();
    await fh.close();
  }
}

async function groupsnapCopy(from: string, to: string, key: Buffer, toKey: Buffer | undefined): Promise<void> {
  const source = await Repository.open(from, key);
  const { repo: target } = await openCopyTarget(source, key, to, toKey);
  try {
    const r = await copyRepository(source, target, { verify: 'sample' });
    if (r.points[0]?.status !== 'copied') throw new Error(`nothing copied to ${to}`);
  } finally {
    target.close();
    source.close();
  }
}

async function main(): Promise<void> {
  const opts = parseBenchOptions<Options>(command);
  if (opts.data % 4 !== 0) throw new Error('--data is a multiple of 4 (MiB)');
  const machine = describeMachine();
  const dir = await mkdtemp(join(tmpdir(), 'groupsnap-bench-copy-'));
  const s3 = await S3Server.start();
  try {
    for (const [k, v] of Object.entries(s3.env)) process.env[k] = v;
    await s3.createBucket('bench-copy');
    const key = randomBytes(32);
    const otherKey = randomBytes(32);
    const image = join(dir, 'disk.raw');
    const from = 's3://bench-copy/groupsnap/from';
    await preparePoint(from, key, image, opts.data);
    const bin = resticPath();
    const env = {
      ...process.env,
      RESTIC_PASSWORD: 'bench-a',
      RESTIC_REPOSITORY: `s3:${s3.endpoint}/bench-copy/restic/from`,
    };
    let resticVersion: string | undefined;
    if (bin) {
      resticVersion = (await run(bin, ['version'], { env })).stdout.trim();
      await run(bin, ['init'], { env });
      await run(bin, ['backup', '-q', '--host', 'bench', image], { env, maxBuffer: 64 * MiB });
    } else console.error('restic not found in .tools/bin: its row is skipped');
    const kinds: { what: string; go: (round: number) => Promise<void> }[] = [
      {
        what: 'groupsnap repo copy, same key (replica: sealed chunks checked and stored as they are, sample read back)',
        go: (r) => groupsnapCopy(from, `s3://bench-copy/groupsnap/replica-${r}`, key, undefined),
      },
      {
        what: 'groupsnap repo copy --to-key-file (resealed under another key, sample read back)',
        go: (r) => groupsnapCopy(from, `s3://bench-copy/groupsnap/resealed-${r}`, key, otherKey),
      },
    ];
    if (bin) {
      kinds.push({
        what: `restic copy to another repository (${resticVersion?.split(' ').slice(0, 2).join(' ')})`,
        go: async (r) => {
          const target = {
            ...env,
            RESTIC_REPOSITORY: `s3:${s3.endpoint}/bench-copy/restic/to-${r}`,
            RESTIC_PASSWORD: 'bench-b',
            RESTIC_FROM_REPOSITORY: env.RESTIC_REPOSITORY,
            RESTIC_FROM_PASSWORD: env.RESTIC_PASSWORD,
          };
          // restic's init (a few small objects) is timed with the copy, as groupsnap's creation of its target is.
          await run(bin, ['init', '--copy-chunker-params'], { env: target });
          await run(bin, ['copy', '-q'], { env: target, maxBuffer: 64 * MiB });
        },
      });
    }
    const rows: Row[] = kinds.map((k) => ({ what: k.what, seconds: [] }));
    for (let round = 0; round < opts.rounds; round++) {
      const order = kinds.map((_, i) => i);
      if (round % 2 === 1) order.reverse();
      for (const i of order) {
        const s = await timed(() => kinds[i].go(round));
        rows[i].seconds.push(s);
        console.error(`round ${round}: ${kinds[i].what}: ${s.toFixed(2)} s`);
      }
    }
    const results: Results = {
      machine,
      loadAvgAtEnd: Number((await import('node:os')).loadavg()[0].toFixed(2)),
      options: { data: opts.data, rounds: opts.rounds },
      dataBytes: opts.data * MiB,
      rows,
      ...(resticVersion ? { resticVersion } : {}),
    };
    writeResults(opts.out, results);
  } finally {
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

function writeResults(out: string, results: Results): void {
  const resultsDir = join(out, 'bench/results');
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `copy-${results.machine.date.slice(0, 10)}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  const section = renderSection(results, file.slice(out.length + 1));
  writeSection(out, 'copy', section);
  console.log(section);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export function renderSection(r: Results, rawFile: string): string {
  const mibs = (s: number) => (r.dataBytes / MiB / s).toFixed(1);
  const restic = r.rows.find((row) => row.what.startsWith('restic'));
  const ratio = (row: Row) => (restic ? (median(restic.seconds) / median(row.seconds)).toFixed(2) : '?');
  const m = r.machine;
  return [
    '<!-- copy:begin -->',
    '## Copy to a second repository (issue 26)',
    '',
    `Generated by \`npm run bench:copy -- --data ${r.options.data} --rounds ${r.options.rounds}\` (bench/copy.ts) ` +
      `from \`${rawFile}\`; run ${m.date} on ${m.hostname}: ${m.cores} cores (${m.cpu}), ${m.memoryGiB} GiB, ` +
      `Node ${m.node}, load average ${(m.loadAvgAtStart ?? []).join(' / ')} at the start, ${r.loadAvgAtEnd} (1 min) ` +
      'at the end. **A shared 2-core machine**: other agents ran tests and VMs at the same time, so absolute figures ' +
      'are rough; the kinds run in the same run, interleaved round by round in alternating order.',
    '',
    `One point of ${r.options.data} MiB of random data (one disk, 4 MiB chunks) in a groupsnap repository and, as ` +
      "the image file's snapshot, in a restic repository, both on versitygw on 127.0.0.1 (posix backend); each " +
      'round copies it into a fresh repository on the same server: groupsnap `repo copy` (a replica: every chunk read, ' +
      'authenticated and stored as it is; under another key: every chunk read, authenticated, sealed anew and ' +
      'stored; then every manifest and ' +
      "a sample of 1 in 16 chunks before the group manifest) and restic's `copy` (decrypts and re-encrypts every " +
      "blob; target created with `init --copy-chunker-params`, timed with the copy). MiB/s counts the point's data.",
    '',
    '| what | seconds per round | median s | MiB/s | vs restic copy |',
    '| --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (row) =>
        `| ${row.what} | ${row.seconds.map((s) => s.toFixed(2)).join(', ')} | ${median(row.seconds).toFixed(2)} | ` +
        `${mibs(median(row.seconds))} | ${row === restic ? '1.00' : ratio(row)}x |`,
    ),
    '<!-- copy:end -->',
  ].join('\n');
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

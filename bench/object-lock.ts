/**
 * Object Lock benchmark: groupsnap's export data path (backup/export-disk.ts, what each host's export activity runs)
 * into a repository with Object Lock against the same export into one without, on one real versitygw (posix
 * backend with versioning, on 127.0.0.1). Locked exports write chunks and manifests write-once with a retention date
 * and extend the locks of the chunks they share with earlier points.
 *
 * Two points of one disk: point 1 (`--data` MiB of random data in a `--disk` GiB disk, a full export) and point 2
 * (`--delta` MiB more, an incremental export whose other chunks come from point 1). Point 2 runs with the clock a
 * lock slack later, so every chunk it shares with point 1 has its lock extended: the worst case, which happens once
 * per slack period (a quarter of the lock period, at least a day), not once per export. Each kind runs `--rounds`
 * times into fresh repositories, interleaved in alternating order after an untimed warm-up; medians compared.
 *
 *   npm run bench:object-lock -- [--disk 1] [--data 256] [--delta 16] [--rounds 2] [--out <dir>]
 *
 * Writes bench/results/object-lock-<date>.json and the "Object Lock" section of BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { exportDisk } from '../backup/export-disk';
import { DAY_MS, lockSlackMs } from '../backup/object-lock';
import { Repository } from '../backup/repository';
import { S3Server } from '../dev/s3-server';
import { REPO_ROOT } from '../dev/tools';
import { writeSection } from './kept-sections';
import { describeMachine } from './machine';
import { benchCommand, integer, parseBenchOptions } from './options';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const LOCK = { days: 7, mode: 'compliance' as const };

interface Options {
  disk: number;
  data: number;
  delta: number;
  rounds: number;
  out: string;
}

const command = benchCommand('object-lock', 'Object Lock: export time into a locked repository against an unlocked one')
  .option('--disk <GiB>', 'virtual size of the disk', integer(1, 1024), 1)
  .option('--data <MiB>', 'random data in point 1 (a multiple of 16)', integer(16), 256)
  .option('--delta <MiB>', 'random data added for point 2 (a multiple of 4)', integer(4), 16)
  .option('--rounds <n>', 'timed rounds of each kind, in alternating order', integer(1, 10), 2)
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);

const names = (snapshotId: string) => ({ group: 'bench', snapshotId, domain: 'vm', target: 'vda' });
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function writeRandom(image: string, offsetsMiB: number[], pieceMiB: number, dir: string): Promise<void> {
  const src = join(dir, 'random.bin');
  for (const off of offsetsMiB) {
    await writeFile(src, randomBytes(pieceMiB * MiB));
    await run('qemu-io', ['-f', 'qcow2', image, '-c', `write -s ${src} ${off * MiB} ${pieceMiB * MiB}`]);
  }
  await rm(src, { force: true });
}

async function prepareImages(opts: Options, dir: string): Promise<{ base: string; top: string }> {
  const base = join(dir, 'vm.vda.qcow2');
  const top = join(dir, 'vm.vda.p2.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, `${opts.disk}G`]);
  await writeRandom(
    base,
    Array.from({ length: opts.data / 16 }, (_, i) => i * 16),
    16,
    dir,
  );
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  const stride = Math.floor((opts.disk * 1024) / (opts.delta / 4) / 4) * 4;
  await writeRandom(
    top,
    Array.from({ length: opts.delta / 4 }, (_, i) => i * stride + 4),
    4,
    dir,
  );
  return { base, top };
}

interface Round {
  p1: number;
  p2: number;
  extended: number;
}

/** Point 1, then point 2 (a slack later) into a fresh repository; locked or not. */
async function exportRound(key: Buffer, url: string, locked: boolean, base: string, top: string): Promise<Round> {
  let offset = 0;
  const clock = () => Date.now() + offset;
  const repo = await Repository.init(url, key, { clock, ...(locked ? { objectLock: LOCK } : {}) });
  try {
    let t = process.hrtime.bigint();
    const first = await exportDisk({ repo, names: names('p1'), image: base, format: 'qcow2' });
    const p1 = Number(process.hrtime.bigint() - t) / 1e9;
    offset = lockSlackMs(LOCK) + DAY_MS / 24;
    let extended = 0;
    const ensure = repo.ensureRetention.bind(repo);
    repo.ensureRetention = async (...a) => {
      const ids = await ensure(...a);
      extended += ids.length;
      return ids;
    };
    t = process.hrtime.bigint();
    await exportDisk({
      repo,
      names: names('p2'),
      image: top,
      format: 'qcow2',
      base: { snapshotId: 'p1', image: base, manifest: first.manifest },
    });
    return { p1, p2: Number(process.hrtime.bigint() - t) / 1e9, extended };
  } finally {
    repo.close();
  }
}

async function main(): Promise<void> {
  const opts = parseBenchOptions<Options>(command);
  if (opts.data % 16 !== 0 || opts.delta % 4 !== 0 || opts.data > opts.disk * 1024) {
    console.error('--data must be a multiple of 16 and fit in --disk; --delta a multiple of 4');
    process.exit(2);
  }
  const machine = describeMachine();
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-lock-');
  mkdirSync(join(dir, 's3'));
  const s3 = await S3Server.start({ dir: join(dir, 's3'), objectLock: true });
  Object.assign(process.env, s3.env);
  const started = new Date().toISOString();
  try {
    await s3.createBucket('plain');
    const { base, top } = await prepareImages(opts, dir);
    const key = randomBytes(32);
    await exportRound(key, 's3://plain/warmup', false, base, top);
    const runs: Record<'plain' | 'locked', Round[]> = { plain: [], locked: [] };
    for (let round = 0; round < opts.rounds; round++) {
      const order: ('plain' | 'locked')[] = round % 2 === 0 ? ['plain', 'locked'] : ['locked', 'plain'];
      for (const kind of order) {
        const url = kind === 'plain' ? `s3://plain/r${round}` : `s3://locked${round}/r`;
        const r = await exportRound(key, url, kind === 'locked', base, top);
        runs[kind].push(r);
        console.error(`round ${round + 1} ${kind}: point 1 ${r.p1.toFixed(2)} s, point 2 ${r.p2.toFixed(2)} s`);
      }
    }
    const m = (k: 'plain' | 'locked', f: 'p1' | 'p2') => median(runs[k].map((r) => r[f]));
    const total = (k: 'plain' | 'locked') => median(runs[k].map((r) => r.p1 + r.p2));
    const results = {
      started,
      machine,
      options: opts,
      lock: LOCK,
      runs,
      ratio: {
        p1: m('locked', 'p1') / m('plain', 'p1'),
        p2: m('locked', 'p2') / m('plain', 'p2'),
        total: total('locked') / total('plain'),
      },
    };
    const resultsDir = join(opts.out, 'bench', 'results');
    mkdirSync(resultsDir, { recursive: true });
    const file = join(resultsDir, `object-lock-${started.slice(0, 10)}.json`);
    writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
    const cmd = `npm run bench:object-lock -- --disk ${opts.disk} --data ${opts.data} --delta ${opts.delta} --rounds ${opts.rounds}`;
    const row = (k: 'plain' | 'locked') =>
      `| ${k === 'plain' ? 'without Object Lock' : `Object Lock (${LOCK.days} d, ${LOCK.mode})`} | ` +
      `${m(k, 'p1').toFixed(2)} | ${m(k, 'p2').toFixed(2)} | ${total(k).toFixed(2)} |`;
    const section = [
      '<!-- object-lock:begin -->',
      '## Object Lock',
      '',
      `Generated by \`${cmd}\` (bench/object-lock.ts) from \`bench/results/${file.split('/').at(-1)}\`; run ${started} on ` +
        `${machine.cores} cores (${machine.cpu}), load average ${(machine.loadAvgAtStart ?? []).join(' / ')} at the start ` +
        '(a shared machine: times are rough; kinds interleaved in alternating order after a warm-up, medians compared).',
      '',
      `Point 1: a full export of ${opts.data} MiB of data; point 2: an incremental export of ${opts.delta} MiB more, a ` +
        `lock slack later, so each of its ${runs.locked[0]?.extended ?? 0} chunks shared with point 1 has its lock ` +
        'extended (the worst case, once per slack period).',
      '',
      '| export (median s) | point 1 | point 2 | both |',
      '| --- | --- | --- | --- |',
      row('plain'),
      row('locked'),
      '',
      `Locked / unlocked: point 1 ${results.ratio.p1.toFixed(2)}x, point 2 ${results.ratio.p2.toFixed(2)}x, both ` +
        `${results.ratio.total.toFixed(2)}x (target <= 1.15x); both, round by round: ` +
        runs.locked.map((l, i) => ((l.p1 + l.p2) / (runs.plain[i].p1 + runs.plain[i].p2)).toFixed(2) + 'x').join(', ') +
        ' (the spread says how much of the difference is the machine).',
      '<!-- object-lock:end -->',
    ].join('\n');
    writeSection(opts.out, 'object-lock', section);
    console.log(section);
  } finally {
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});

/**
 * Hydration of a sparse disk through groupsnap's NBD server, with and without block status (issue 28): a point of
 * one `--disk-size` GiB disk holding `--data` MiB of random data in `--extents` pieces spread over it, exported to
 * versitygw on 127.0.0.1 and served by backup/serve.ts; a qcow2 overlay whose backing is the export (as an instant
 * restore makes), pulled by QEMU's `block-stream` (what libvirt's block pull runs) in a bare QEMU driven over QMP.
 * Each round serves the point twice, with `base:allocation` and without it (`blockStatus: false`: the server as it
 * was before), in alternating order, and records the time from `block-stream` to `BLOCK_JOB_COMPLETED`, the
 * hydrated overlay's allocation (`qemu-img map`: data, zero clusters; its size on disk) and the server's reads; the
 * hydrated overlay is checked equal to the source image (`qemu-img compare`).
 *
 *   npm run bench:hydrate -- [--disk-size 4] [--data 256] [--extents 16] [--rounds 2] [--out <dir>]
 *
 * Writes bench/results/hydrate-<date>.json and the "Hydration of a sparse disk" section of BENCHMARKS.md.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { zeroRanges } from '../backup/manifest';
import { Repository } from '../backup/repository';
import { runServe } from '../backup/serve';
import { S3Server } from '../dev/s3-server';
import { createNbdOverlay, type ImageRange } from '../hypervisor/images';
import { REPO_ROOT } from '../dev/tools';
import { writeSection } from './kept-sections';
import { describeMachine, type MachineDescription } from './machine';
import { exportOneDiskPoint } from './one-disk-point';
import { benchCommand, integer, parseBenchOptions } from './options';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const NAMES = { group: 'bench', snapshotId: 'sparse', domain: 'vm', target: 'vda' };

interface Options {
  diskSize: number;
  data: number;
  extents: number;
  rounds: number;
  out: string;
}

/**
 * The server without block status (`blockStatus: false`, as before it), with it, and with it and the overlay made as
 * an instant restore makes it now: the point's zero chunks marked in it as zero clusters (`createNbdOverlay`).
 */
type Kind = 'without' | 'with' | 'zeros';
const KIND_NAMES: Record<Kind, string> = {
  without: 'without',
  with: 'with',
  zeros: 'with, zero chunks marked in the overlay',
};
/** The kinds a method is measured with (`convert` makes no overlay: nothing to mark). */
const kindsOf = (method: Method): Kind[] => (method === 'convert' ? ['without', 'with'] : ['without', 'with', 'zeros']);

/**
 * How the disk is made local: `pull` is QEMU's `block-stream` (libvirt's block pull: an instant restore's running
 * VMs), `rebase` is `qemu-img rebase -b ''` (its offline hydration of a VM shut off meanwhile), `convert` is
 * `qemu-img convert -O qcow2` of the export (a copy, for reference).
 */
type Method = 'pull' | 'rebase' | 'convert';
const METHODS: Method[] = ['pull', 'rebase', 'convert'];

interface Round {
  kind: Kind;
  method: Method;
  round: number;
  /** Start -> hydrated (`block-stream` -> `BLOCK_JOB_COMPLETED`; the qemu-img command's run) (s). */
  seconds: number;
  /** The hydrated overlay: bytes mapped as data, as zero clusters, and its size on disk (`du`). */
  dataBytes: number;
  zeroClusterBytes: number;
  diskBytes: number;
  /** The server's read requests and the bytes they asked for (holes included), and block status requests. */
  reads: number;
  blockStatusRequests: number;
  bytesRead: number;
  bytesFetched: number;
}

interface Results {
  machine: MachineDescription;
  options: Omit<Options, 'out'>;
  qemu: string;
  chunkSize: number;
  pointDataBytes: number;
  rounds: Round[];
}

const command = benchCommand('hydrate', 'Hydration of a sparse disk over the NBD server, with and without block status')
  .option('--disk-size <GiB>', 'virtual size of the disk', integer(1, 64), 4)
  .option('--data <MiB>', 'random data in the disk', integer(1, 8192), 256)
  .option('--extents <n>', 'pieces the data is written in, spread evenly over the disk', integer(1, 1024), 16)
  .option('--rounds <n>', 'hydrations of each kind, in alternating order', integer(1, 10), 2)
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);

/** Where the data goes: `piece` MiB every `stride` MiB (checked in main: 1 <= piece <= stride). */
function layout(opts: Options): { stride: number; piece: number } {
  const stride = Math.floor((opts.diskSize * 1024) / opts.extents);
  const piece = Math.floor(opts.data / opts.extents);
  return { stride, piece };
}

/** The source image: `data` MiB of random data in `extents` pieces spread evenly over a `diskSize` GiB qcow2. */
async function prepareImage(opts: Options, dir: string): Promise<string> {
  const image = join(dir, 'source.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, `${opts.diskSize}G`]);
  const scratch = join(dir, 'random.bin');
  const { stride, piece } = layout(opts);
  for (let i = 0; i < opts.extents; i++) {
    await writeFile(scratch, randomBytes(piece * MiB));
    await run('qemu-io', ['-f', 'qcow2', image, '-c', `write -q -s ${scratch} ${i * stride * MiB} ${piece * MiB}`]);
  }
  await rm(scratch, { force: true });
  return image;
}

/** Exports `image` as the point's one disk (chunks, disk, VM and group manifests); returns the chunk size. */
async function exportPoint(url: string, key: Buffer, image: string): Promise<number> {
  return (await exportOneDiskPoint(url, key, image, NAMES)).chunkSize;
}

/**
 * `block-stream` of the qcow2 `overlay` (node `top`) in a bare QEMU (`-machine none`, QMP on stdio): resolves with
 * the seconds from the command to `BLOCK_JOB_COMPLETED`, once QEMU has quit.
 */
async function pull(overlay: string): Promise<number> {
  const blockdev = { driver: 'qcow2', 'node-name': 'top', file: { driver: 'file', filename: overlay } };
  const qemu = spawn(
    'qemu-system-x86_64',
    ['-nodefaults', '-display', 'none', '-machine', 'none', '-qmp', 'stdio', '-blockdev', JSON.stringify(blockdev)],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const exited = new Promise<number | null>((resolve) => qemu.once('exit', resolve));
  const lines = createInterface({ input: qemu.stdout! })[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, unknown>> => {
    const { value, done } = await lines.next();
    if (done) throw new Error(`QEMU ended (exit ${await exited})`);
    return JSON.parse(value as string) as Record<string, unknown>;
  };
  const send = (execute: string, args?: object) =>
    qemu.stdin!.write(JSON.stringify({ execute, ...(args ? { arguments: args } : {}) }) + '\n');
  /** The next message that is not an event other than `event`. */
  const answer = async (event?: string) => {
    for (;;) {
      const m = await next();
      if (m.error) throw new Error(`QMP: ${JSON.stringify(m.error)}`);
      if (event ? m.event === event : 'return' in m) return m;
    }
  };
  try {
    await next(); // greeting
    send('qmp_capabilities');
    await answer();
    const t0 = process.hrtime.bigint();
    send('block-stream', { 'job-id': 'pull', device: 'top' });
    await answer();
    const done = await answer('BLOCK_JOB_COMPLETED');
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const data = done.data as { error?: string; len: number; offset: number };
    if (data.error || data.offset !== data.len) throw new Error(`the pull failed: ${JSON.stringify(data)}`);
    send('quit');
    await exited;
    return seconds;
  } finally {
    qemu.kill('SIGKILL');
  }
}

/** Seconds `fn` takes. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** One hydration: serve the point (with or without block status), overlay, hydrate by `method`, measure, check. */
async function hydrate(
  ctx: { url: string; keyFile: string; dir: string; image: string; zeros: ImageRange[]; virtualSize: number },
  kind: Kind,
  method: Method,
  round: number,
) {
  const socket = join(ctx.dir, `nbd-${kind}-${round}.sock`);
  const server = await runServe(
    {
      version: 1,
      repo: ctx.url,
      keyFile: ctx.keyFile,
      group: NAMES.group,
      snapshotId: NAMES.snapshotId,
      exports: [{ domain: NAMES.domain, target: NAMES.target, socket, exportName: 'bench' }],
      dir: ctx.dir,
      blockStatus: kind !== 'without',
    },
    { statusFile: false },
  );
  const overlay = join(ctx.dir, `overlay-${kind}-${method}-${round}.qcow2`);
  try {
    const backing = `nbd+unix:///bench?socket=${socket}`;
    let seconds: number;
    if (method === 'convert') {
      seconds = await timed(() => run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', backing, overlay]));
    } else {
      if (kind === 'zeros') await createNbdOverlay(overlay, socket, 'bench', ctx.virtualSize, ctx.zeros);
      else await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', backing, overlay]);
      seconds =
        method === 'pull'
          ? await pull(overlay)
          : await timed(() => run('qemu-img', ['rebase', '-q', '-f', 'qcow2', '-b', '', overlay]));
    }
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', overlay])).stdout) as object;
    if ('backing-filename' in info) throw new Error(`${overlay} still has a backing file after the pull`);
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', overlay])).stdout) as {
      length: number;
      data: boolean;
      zero: boolean;
      present: boolean;
    }[];
    // The hydrated disk reads as the source: nothing lost, nothing made up.
    await run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', overlay, ctx.image]);
    const st = server.status().exports[0];
    const r: Round = {
      kind,
      method,
      round,
      seconds,
      dataBytes: map.filter((e) => e.data).reduce((n, e) => n + e.length, 0),
      zeroClusterBytes: map.filter((e) => e.present && e.zero && !e.data).reduce((n, e) => n + e.length, 0),
      diskBytes: (await stat(overlay)).blocks * 512,
      reads: st.requests,
      blockStatusRequests: st.blockStatusRequests,
      bytesRead: st.bytesServed,
      bytesFetched: st.bytesFetched,
    };
    return r;
  } finally {
    await server.close();
    await rm(overlay, { force: true });
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function report(res: Results, file: string): string {
  const { options: o, machine: m } = res;
  const mib = (b: number) => (b / MiB).toFixed(1);
  const how = {
    pull: 'QEMU `block-stream` (block pull)',
    rebase: "`qemu-img rebase -b ''` (offline)",
    convert: '`qemu-img convert -O qcow2` (a copy, for reference)',
  };
  const rows = METHODS.flatMap((method) =>
    kindsOf(method).map((kind) => {
      const rs = res.rounds.filter((r) => r.kind === kind && r.method === method);
      return { kind, method, rs, last: rs[rs.length - 1], median: median(rs.map((r) => r.seconds)) };
    }),
  );
  const ratio = (method: Method) => {
    const [without, ...others] = rows.filter((r) => r.method === method);
    const to = others.map(
      (o) =>
        `${o.median.toFixed(2)} s (${(without.median / o.median).toFixed(2)}x, ${mib(o.last.bytesRead)} MiB asked for)`,
    );
    return `${how[method]}: ${without.median.toFixed(2)} s (${mib(without.last.bytesRead)} MiB asked for) -> ${to.join(' -> ')}`;
  };
  return [
    '<!-- hydrate:begin -->',
    '### Hydration of a sparse disk: block status (issue 28)',
    '',
    `Generated by \`npm run bench:hydrate -- --disk-size ${o.diskSize} --data ${o.data} --extents ${o.extents} --rounds ${o.rounds}\` ` +
      `(bench/hydrate.ts) from \`${file}\`; run ${m.date} on ${m.hostname}: ${m.cores} cores (${m.cpu}), ${res.qemu}, ` +
      `Node ${m.node}, load average ${(m.loadAvgAtStart ?? []).join(' / ')} at the start. **A shared 2-core machine**: ` +
      'absolute figures are rough; every kind runs in the same run, in alternating order.',
    '',
    `One ${o.diskSize} GiB disk with ${o.data} MiB of random data in ${o.extents} pieces spread evenly (${mib(res.pointDataBytes)} MiB ` +
      `of data chunks in the point, ${res.chunkSize / MiB} MiB chunks), exported to versitygw on 127.0.0.1 and served by ` +
      'backup/serve.ts (a fresh server, cold cache, each time). A qcow2 overlay whose backing is the export (as an ' +
      'instant restore makes) is made local by each method, unthrottled (the pull in a bare QEMU over QMP); the result ' +
      'is compared equal to the source each time. "Without" is the server with `blockStatus: false`: no metadata ' +
      'context offered, as before block status. "Zero chunks marked" is the overlay an instant restore makes now: the ' +
      "point's chunks without data written as zero clusters in it (`createNbdOverlay`), so a pull or rebase skips them.",
    '',
    '| method | block status | seconds per round | median s | result: data / zero clusters / on disk (du), MiB | NBD reads / MiB asked for / block status requests |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${how[r.method]} | ${KIND_NAMES[r.kind]} | ${r.rs.map((x) => x.seconds.toFixed(2)).join(', ')} | ${r.median.toFixed(2)} | ` +
        `${mib(r.last.dataBytes)} / ${mib(r.last.zeroClusterBytes)} / ${mib(r.last.diskBytes)} | ` +
        `${r.last.reads} / ${mib(r.last.bytesRead)} / ${r.last.blockStatusRequests} |`,
    ),
    '',
    'Medians, without -> with block status (-> with the zero chunks marked): ' + METHODS.map(ratio).join('; ') + '.',
    '',
    'Why the pull and the rebase read every range of an unmarked overlay either way (QEMU 7.2), and why marking the ' +
      'zero chunks in the overlay is what makes hydration follow the data: docs/adr/0013-instant-restore.md, addenda ' +
      '"Block status and hydration" and "Zero chunks marked in the overlay".',
    '<!-- hydrate:end -->',
  ].join('\n');
}

async function main(): Promise<void> {
  const opts = parseBenchOptions<Options>(command);
  const { stride, piece } = layout(opts);
  if (piece < 1 || piece > stride) {
    console.error(
      `--data ${opts.data} in --extents ${opts.extents} must give each extent 1 MiB to its share of the disk`,
    );
    process.exit(2);
  }
  const machine = describeMachine();
  const qemu = (await run('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0];
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-hydrate-');
  chmodSync(dir, 0o700);
  let s3: S3Server | undefined;
  try {
    mkdirSync(join(dir, 's3'));
    s3 = await S3Server.start({ dir: join(dir, 's3') });
    Object.assign(process.env, s3.env);
    await s3.createBucket('bench');
    const key = randomBytes(32);
    const keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    const url = 's3://bench/groupsnap';
    console.error(`preparing a ${opts.diskSize} GiB disk with ${opts.data} MiB in ${opts.extents} pieces ...`);
    const image = await prepareImage(opts, dir);
    const chunkSize = await exportPoint(url, key, image);
    const repo = await Repository.openWithKeyFile(url, keyFile);
    const m = await repo.readDiskManifest(NAMES.group, NAMES.snapshotId, NAMES.domain, NAMES.target);
    repo.close();
    const pointDataBytes = m.chunks.filter((c) => c !== null).length * m.chunkSize;
    const zeros = zeroRanges(m);
    const rounds: Round[] = [];
    for (let round = 0; round < opts.rounds; round++) {
      for (const method of METHODS) {
        const kinds = kindsOf(method);
        for (const kind of round % 2 === 0 ? kinds : [...kinds].reverse()) {
          // Untimed: the dirty pages of the run before are written back now.
          await run('sync');
          console.error(`round ${round + 1}: ${method}, block status ${KIND_NAMES[kind]} ...`);
          const r = await hydrate({ url, keyFile, dir, image, zeros, virtualSize: m.virtualSize }, kind, method, round);
          console.error(`  ${JSON.stringify(r)}`);
          rounds.push(r);
        }
      }
    }
    const { out, ...options } = opts;
    const results: Results = { machine, options, qemu, chunkSize, pointDataBytes, rounds };
    const file = `bench/results/hydrate-${machine.date.slice(0, 10)}.json`;
    mkdirSync(join(out, 'bench/results'), { recursive: true });
    writeFileSync(join(out, file), JSON.stringify(results, null, 2) + '\n');
    const section = report(results, file);
    writeSection(out, 'hydrate', section);
    console.log(section);
  } finally {
    await s3?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

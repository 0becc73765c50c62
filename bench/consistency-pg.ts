/**
 * Crash consistency with PostgreSQL (docs/consistency.md, part 2; a benchmark-style run, not in CI).
 *
 * One TCG VM (scripts/build-guest-pg.sh: Debian 12, PostgreSQL 15) with its root on vda, the data directory on vdb
 * and the WAL on vdc, runs pgbench (2 clients) in a loop (scripts/guest-pg-init.sh, `gs.mode=load`). While it
 * runs, snapshots are taken in two ways, alternately:
 *
 * - `group`: groupsnap's saga, `snapshotGroup` of the VM through an in-process host worker (the VM is paused and
 *   its three disks switch to overlays atomically);
 * - `naive`: the data disk (with the root disk) and the WAL disk snapshotted one after the other, without pausing,
 *   `--gap-ms` apart (one-disk external snapshots through the hypervisor); every other one takes the WAL first.
 *
 * Then the load VM is stopped and every snapshot is restored as a throwaway clone and booted, one at a time: a group
 * snapshot through groupsnap's own restore (`restoreGroup`, mode `clone`, as users restore; the clone is removed
 * with the host's `removeClone` activity), a naive one, which groupsnap never catalogued, by hand (qcow2 overlays
 * on its images and a domain of the same shape). Each clone boots with `gs.mode=check`: the guest starts PostgreSQL
 * (crash recovery), runs `pg_amcheck --all --heapallindexed` and the pgbench invariant (sum of account, teller and
 * branch balances each equal the sum of history deltas) and prints one `GSPG-RESULT` line on its console, which is
 * read here.
 *
 *   npm run build && node dist/bench/consistency-pg.js [--group 6] [--naive 6] [--interval-s 15] [--gap-ms 300]
 *       [--warmup-s 20] [--checkpoint-s 0] [--check-timeout-s 900] [--out <file.json>]
 *
 * --gap-ms takes a list (e.g. 300,3000): naive snapshots cycle through the gaps, each gap taken data-first then
 * WAL-first. --checkpoint-s S: the load also runs CHECKPOINT every S seconds (a stress setting; 0: only
 * PostgreSQL's own, every 30 s as configured by the image).
 *
 * Needs root (libvirt qemu:///system, the image build). Raw results go to --out (default
 * bench/results/consistency-pg-<date>.json). Exit status 1 when a restored group snapshot failed a check.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { restoreGroup, snapshotGroup, waitForHostWorkers } from '../client';
import { removeClones, serialLogOf, type RestoreHost } from '../dev/consistency-restore';
import { startDevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { escapeXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { createGroupsnapWorker } from '../worker/worker';
import { describeMachine } from './machine';
import { benchCommand, integer, integerList, parseBenchOptions } from './options';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TARGETS = ['vda', 'vdb', 'vdc'] as const;
type Target = (typeof TARGETS)[number];
const HOST = 'pg-host';
const GROUP = 'consistency-pg';

interface PgBenchOptions {
  group: number;
  naive: number;
  intervalS: number;
  gapMs: number[];
  warmupS: number;
  checkpointS: number;
  checkTimeoutS: number;
  out?: string;
}

const command = benchCommand('consistency-pg', 'PostgreSQL (data and WAL on two disks) under pgbench: group vs naive')
  .option('--group <n>', 'group snapshots (groupsnap)', integer(), 6)
  .option('--naive <n>', 'naive snapshots (one disk after the other, no pause)', integer(), 6)
  .option('--interval-s <s>', 'time between two snapshots', integer(), 15)
  .option('--gap-ms <ms,...>', 'gaps between the disks of a naive snapshot, cycled through', integerList(), [300])
  .option('--warmup-s <s>', 'load time before the first snapshot', integer(), 20)
  .option('--checkpoint-s <s>', "also CHECKPOINT every S seconds (0: only PostgreSQL's own)", integer(), 0)
  .option('--check-timeout-s <s>', "a restored clone's time to print its result", integer(1), 900)
  .option('--out <file.json>', 'raw results (default: bench/results/consistency-pg-<date>.json)');

interface PgImage {
  dir: string;
  versions: string;
}

async function ensurePgImage(): Promise<PgImage> {
  const { stdout } = await run('bash', [join(REPO_ROOT, 'scripts/build-guest-pg.sh')], { maxBuffer: 1 << 20 });
  const dir = stdout.trim().split('\n').pop()!;
  return { dir, versions: readFileSync(join(dir, 'VERSIONS'), 'utf8').trim() };
}

function domainXml(name: string, image: PgImage, disks: Record<Target, string>, mode: string, log: string): string {
  const cmdline = `console=ttyS0 quiet panic=-1 gs.mode=${mode}`;
  const diskXml = TARGETS.map(
    (t) =>
      `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>` +
      `<source file='${escapeXml(disks[t])}'/><target dev='${t}' bus='virtio'/></disk>`,
  ).join('');
  return (
    `<domain type='qemu'><name>${escapeXml(name)}</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>` +
    `<os><type arch='x86_64' machine='q35'>hvm</type><kernel>${escapeXml(join(image.dir, 'vmlinuz'))}</kernel>` +
    `<initrd>${escapeXml(join(image.dir, 'initrd.img'))}</initrd><cmdline>${cmdline}</cmdline></os>` +
    `<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>` +
    `<devices>${diskXml}<serial type='file'><source path='${escapeXml(log)}'/><target port='0'/></serial>` +
    `<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>`
  );
}

function readConsole(file: string): string {
  try {
    return readFileSync(file, 'latin1');
  } catch {
    return '';
  }
}

async function overlay(base: string, file: string): Promise<void> {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', file]);
}

type Mode = 'group' | 'naive';

interface Snap {
  mode: Mode;
  index: number;
  /** naive: which disk went first. */
  order?: 'data-first' | 'wal-first';
  /** naive: pause between the two disks' snapshots. */
  gapMs?: number;
  at: string;
  /** group: groupsnap's snapshot id, restored by it. */
  snapshotId?: string;
  images?: Record<Target, string>;
  error?: string;
  snapshotMs: number;
  freezeMs?: number;
  result?: CheckResult;
}

interface CheckResult {
  /** Parsed GSPG-RESULT fields, or undefined when the clone printed none before the timeout. */
  fields?: Record<string, string>;
  ok: boolean;
  bootToResultS: number;
  log: string[];
}

/** Tracks every domain this run defines, so that `finally` can remove them all. */
class Domains {
  readonly names = new Set<string>();
  constructor(readonly conn: libvirt.Connection) {}

  async start(xml: string, name: string): Promise<void> {
    this.names.add(name);
    const dom = await this.conn.defineXML(xml);
    await dom.create();
    dom.free();
  }

  async running(name: string): Promise<boolean> {
    try {
      const dom = await this.conn.lookupByName(name);
      const s = (await dom.state()).state;
      dom.free();
      return s !== 'shutoff';
    } catch {
      return false;
    }
  }

  async remove(name: string): Promise<void> {
    try {
      const dom = await this.conn.lookupByName(name);
      if ((await dom.state()).state !== 'shutoff') await dom.destroy().catch(() => undefined);
      await dom.undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA).catch(() => dom.undefine());
      dom.free();
    } catch (err) {
      if (!(err instanceof libvirt.DomainNotFoundError)) throw err;
    }
    this.names.delete(name);
  }

  async removeAll(): Promise<void> {
    for (const n of [...this.names]) await this.remove(n);
  }
}

async function waitForConsole(
  file: string,
  pattern: RegExp,
  timeoutMs: number,
  alive?: () => Promise<boolean>,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; Date.now() < deadline; i++) {
    if (pattern.test(readConsole(file))) return true;
    if (alive && i % 10 === 9 && !(await alive())) return pattern.test(readConsole(file));
    await sleep(500);
  }
  return false;
}

/** Waits for a booted clone's check (`GSPG-END`) on its console and reads its result. */
async function readCheck(
  log: string,
  t0: number,
  timeoutMs: number,
  alive: () => Promise<boolean>,
): Promise<CheckResult> {
  await waitForConsole(log, /GSPG-END/, timeoutMs, alive);
  const text = readConsole(log);
  const line = /GSPG-RESULT ([^\r\n]*)/.exec(text)?.[1];
  const fields = line
    ? Object.fromEntries(
        line
          .trim()
          .split(/\s+/)
          .map((kv) => kv.split('=', 2) as [string, string]),
      )
    : undefined;
  const logLines = text
    .split(/\r?\n/)
    .filter((l) => l.startsWith('GSPG-LOG'))
    .map((l) => l.slice(9));
  if (!fields) logLines.push(...text.split(/\r?\n/).slice(-20));
  return { fields, ok: fields?.ok === '1', bootToResultS: (performance.now() - t0) / 1000, log: logLines };
}

/**
 * A group snapshot, restored as users restore it: `restoreGroup` (mode `clone`) defines and starts a clone of the VM
 * on overlays of the snapshot's images; it is removed afterwards with the host's `removeClone` activity.
 */
async function restoreGroupSnapshot(
  s: Snap,
  o: { client: Client; vm: string; host: RestoreHost; timeoutMs: number },
): Promise<CheckResult> {
  const t0 = performance.now();
  const r = await restoreGroup(o.client, {
    group: GROUP,
    snapshotId: s.snapshotId!,
    mode: 'clone',
    suffix: `-r${s.index + 1}`,
  });
  const made = r.vms.filter((v) => v.clone);
  let log: string | undefined;
  try {
    if (r.status !== 'restored') throw new Error(`restore of ${s.snapshotId} failed: ${r.error}`);
    const clone = made[0].clone!;
    log = serialLogOf(await o.host.hypervisor.domainXml(clone));
    if (!log) throw new Error(`clone ${clone} has no file-backed serial port`);
    const alive = async () => (await o.host.hypervisor.state(clone)) !== 'shutoff';
    return await readCheck(log, t0, o.timeoutMs, alive);
  } finally {
    await removeClones({ [HOST]: o.host }, made);
    if (log) await rm(log, { force: true });
  }
}

/** A naive snapshot (never catalogued by groupsnap): a clone made by hand, overlays on its images. */
async function restoreNaive(
  s: Snap,
  image: PgImage,
  domains: Domains,
  dir: string,
  timeoutMs: number,
): Promise<CheckResult> {
  const name = `gs-pg-clone-${process.pid}-${s.mode}-${s.index}`;
  const files = Object.fromEntries(TARGETS.map((t) => [t, join(dir, `${name}.${t}.qcow2`)])) as Record<Target, string>;
  const log = join(dir, `${name}.console.log`);
  for (const t of TARGETS) await overlay(s.images![t], files[t]);
  const t0 = performance.now();
  try {
    await domains.start(domainXml(name, image, files, 'check', log), name);
    return await readCheck(log, t0, timeoutMs, () => domains.running(name));
  } finally {
    await domains.remove(name);
    await rm(log, { force: true });
    for (const t of TARGETS) await rm(files[t], { force: true });
  }
}

/**
 * One snapshot of the load VM into `snap`: a group snapshot through groupsnap, or a naive one (the data disks and
 * the WAL disk in two parts, `gapMs` apart, the order alternating with `naiveSeq`). A failure is kept in `snap.error`.
 */
async function takeSnapshot(
  snap: Snap,
  ctx: { client: Client; hypervisor: LibvirtHypervisor; vm: string; dir: string; gapMs: number; naiveSeq: number },
): Promise<void> {
  const { client, hypervisor, vm, dir, gapMs, naiveSeq } = ctx;
  const mode = snap.mode;
  try {
    if (mode === 'group') {
      const r = await snapshotGroup(client, { group: GROUP, vms: [{ domain: vm, host: HOST }] });
      if (r.status !== 'completed') throw new Error(r.error ?? `snapshot ${r.status}`);
      snap.snapshotId = r.snapshotId;
      snap.images = Object.fromEntries(r.vms[0].disks.map((d) => [d.target, d.image])) as Record<Target, string>;
      snap.freezeMs = r.vms[0].freezeMs;
    } else {
      snap.order = naiveSeq % 2 === 0 ? 'data-first' : 'wal-first';
      snap.gapMs = gapMs;
      const desc = await hypervisor.describe(vm);
      const source = (t: Target) => desc.disks.find((d) => d.target === t)!.source!;
      const images = { vda: source('vda'), vdb: source('vdb'), vdc: source('vdc') };
      const parts: Target[][] = snap.order === 'data-first' ? [['vda', 'vdb'], ['vdc']] : [['vdc'], ['vda', 'vdb']];
      for (const [k, part] of parts.entries()) {
        if (k > 0 && gapMs) await sleep(gapMs);
        await hypervisor.snapshotDisks(
          vm,
          part.map((t) => ({ target: t, file: join(dir, `load.${t}.naive-${snap.index}.qcow2`) })),
          TARGETS.filter((t) => !part.includes(t)),
        );
      }
      snap.images = images;
    }
  } catch (err) {
    snap.error = (err as Error).message;
  }
}

/** One row of the summary table: a mode (naive ones also by order and gap), and why restores failed. */
interface Row {
  mode: string;
  taken: number;
  restored: number;
  passed: number;
  failed: Record<string, number>;
}

/** The summary: group, all naive, and naive by order and gap. */
function summaryRows(snaps: Snap[], gaps: number[]): Row[] {
  const rows: Row[] = [];
  const groups: [string, Snap[]][] = [
    ['group', snaps.filter((s) => s.mode === 'group')],
    ['naive (all)', snaps.filter((s) => s.mode === 'naive')],
    ...gaps.flatMap((g): [string, Snap[]][] =>
      (['data-first', 'wal-first'] as const).map((o) => [
        `naive ${o}, gap ${g} ms`,
        snaps.filter((s) => s.order === o && s.gapMs === g),
      ]),
    ),
  ];
  for (const [mode, list] of groups) {
    if (!list.length) continue;
    const restored = list.filter((s) => s.result);
    const failed: Record<string, number> = {};
    for (const s of restored.filter((x) => !x.result!.ok)) {
      const f = s.result!.fields;
      const why = !f
        ? 'no result'
        : f.mount !== '1'
          ? 'mount'
          : f.start !== '1'
            ? 'start/recovery'
            : f.amcheck !== '1' && f.invariant !== '1'
              ? 'amcheck+invariant'
              : f.amcheck !== '1'
                ? 'amcheck'
                : 'invariant';
      failed[why] = (failed[why] ?? 0) + 1;
    }
    rows.push({
      mode,
      taken: list.filter((s) => s.images).length,
      restored: restored.length,
      passed: restored.filter((s) => s.result!.ok).length,
      failed,
    });
  }
  return rows;
}

/** The summary as a Markdown table. */
function printRows(rows: Row[]): void {
  console.log('| mode | snapshots taken | restored | passed | failed (why) |');
  console.log('| --- | ---: | ---: | ---: | --- |');
  for (const r of rows) {
    const failedN = r.restored - r.passed;
    const why = Object.entries(r.failed)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
    console.log(`| ${r.mode} | ${r.taken} | ${r.restored} | ${r.passed} | ${failedN}${why ? ` (${why})` : ''} |`);
  }
}

/** Restores every snapshot taken, one at a time, into `s.result` (the load VM is off; each clone boots alone). */
async function restoreAll(
  snaps: Snap[],
  ctx: {
    client: Client;
    vm: string;
    host: RestoreHost;
    image: PgImage;
    domains: Domains;
    dir: string;
    timeoutMs: number;
  },
): Promise<void> {
  const { client, vm, host, image, domains, dir, timeoutMs } = ctx;
  for (const s of snaps.filter((x) => x.images)) {
    s.result =
      s.mode === 'group'
        ? await restoreGroupSnapshot(s, { client, vm, host, timeoutMs })
        : await restoreNaive(s, image, domains, dir, timeoutMs);
    const f = s.result.fields;
    console.error(
      `  restore ${s.mode}${s.order ? ` (${s.order}, gap ${s.gapMs} ms)` : ''} #${s.index + 1}: ` +
        `${
          f
            ? Object.entries(f)
                .map(([k, v]) => `${k}=${v}`)
                .join(' ')
            : 'no result'
        } ` +
        `(${s.result.bootToResultS.toFixed(0)} s)` +
        (s.result.ok ? '' : `\n    ${s.result.log.slice(-8).join('\n    ')}`),
    );
  }
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const opts = parseBenchOptions<PgBenchOptions>(command);
  const { intervalS, warmupS, checkTimeoutS, checkpointS } = opts;
  const groupCount = opts.group;
  const naiveCount = opts.naive;
  const gaps = opts.gapMs;
  const machine = describeMachine('TCG, 1 vCPU, 512 MiB, Debian 12 + PostgreSQL 15 (scripts/build-guest-pg.sh)');
  const t0 = performance.now();
  const image = await ensurePgImage();
  console.error(`guest image: ${image.dir}\n${image.versions}`);

  const dir = await mkdtemp(join(tmpdir(), 'gs-pg-'));
  const conn = await libvirt.open('qemu:///system');
  const domains = new Domains(conn);
  const server = await startDevServer({});
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection });
  const hypervisor = await LibvirtHypervisor.open('qemu:///system');
  const stateDir = join(dir, 'state');
  mkdirSync(stateDir);
  const worker = await createGroupsnapWorker({
    connectionOptions: { address: server.address },
    namespace: 'default',
    hostId: HOST,
    hypervisor,
    stateDir,
    workflows: true,
  });
  const workerRun = worker.run();
  const snaps: Snap[] = [];
  let loadConsole = '';
  let loadS = 0;
  try {
    await waitForHostWorkers(client, [HOST], 120_000);
    const vm = `gs-pg-load-${process.pid}`;
    const disks = Object.fromEntries(TARGETS.map((t) => [t, join(dir, `load.${t}.qcow2`)])) as Record<Target, string>;
    await overlay(join(image.dir, 'root.qcow2'), disks.vda);
    await overlay(join(image.dir, 'data.qcow2'), disks.vdb);
    await overlay(join(image.dir, 'wal.qcow2'), disks.vdc);
    const loadLog = join(dir, 'load.console.log');
    const tBoot = performance.now();
    await domains.start(domainXml(vm, image, disks, `load gs.checkpoint=${checkpointS}`, loadLog), vm);
    if (!(await waitForConsole(loadLog, /GSPG-LOAD started/, 1_200_000, () => domains.running(vm)))) {
      throw new Error(`the load VM did not start pgbench:\n${readConsole(loadLog).slice(-3000)}`);
    }
    console.error(`load running after ${((performance.now() - tBoot) / 1000).toFixed(0)} s; warm-up ${warmupS} s`);
    const tLoad = performance.now();
    await sleep(warmupS * 1000);

    // Alternate the modes so both see the same load; the naive mode alternates which disk goes first.
    const plan: Mode[] = [];
    for (let k = 0; k < Math.max(groupCount, naiveCount); k++) {
      if (k < groupCount) plan.push('group');
      if (k < naiveCount) plan.push('naive');
    }
    let naiveSeq = 0;
    for (const [i, mode] of plan.entries()) {
      if (i > 0) await sleep(intervalS * 1000);
      const snap: Snap = { mode, index: snaps.filter((s) => s.mode === mode).length, at: '', snapshotMs: 0 };
      const ts = performance.now();
      snap.at = new Date().toISOString();
      await takeSnapshot(snap, {
        client,
        hypervisor,
        vm,
        dir,
        gapMs: gaps[Math.floor(naiveSeq / 2) % gaps.length],
        naiveSeq,
      });
      if (mode === 'naive') naiveSeq++;
      snap.snapshotMs = performance.now() - ts;
      snaps.push(snap);
      console.error(
        `  ${mode}${snap.order ? ` (${snap.order}, gap ${snap.gapMs} ms)` : ''} #${snap.index + 1}: ` +
          `${snap.error ? `not taken: ${snap.error}` : `taken in ${snap.snapshotMs.toFixed(0)} ms`}`,
      );
    }
    loadS = (performance.now() - tLoad) / 1000;
    loadConsole = readConsole(loadLog);
    // The load VM stays defined (restoreGroup clones its definition), powered off and switched to check mode: the
    // kernel command line is the guest's only switch between its two roles, and a clone inherits it.
    await hypervisor.destroy(vm);
    const loadXml = await hypervisor.domainXml(vm);
    await hypervisor.defineDomain(loadXml.replace(/gs\.mode=load( gs\.checkpoint=\d+)?/, 'gs.mode=check'));

    // Restore every snapshot, one at a time (the load VM is off; each clone boots alone).
    await restoreAll(snaps, {
      client,
      vm,
      host: { hypervisor, stateDir },
      image,
      domains,
      dir,
      timeoutMs: checkTimeoutS * 1000,
    });
  } finally {
    await domains.removeAll();
    worker.shutdown();
    await workerRun;
    await hypervisor.close();
    await connection.close();
    await server.stop();
    await conn.close();
    await rm(dir, { recursive: true, force: true });
  }

  const elapsedS = (performance.now() - t0) / 1000;
  const rounds = [...loadConsole.matchAll(/GSPG-LOAD round \d+: tps = ([\d.]+)/g)].map((m) => Number(m[1]));
  const rows = summaryRows(snaps, gaps);
  printRows(rows);
  console.log(
    `\ninterval ${intervalS} s, naive gaps ${gaps.join(', ')} ms, forced checkpoint every ${checkpointS || '-'} s, load ${loadS.toFixed(0)} s (pgbench tps per round: ` +
      `${rounds.join(', ') || 'none finished'}), elapsed ${elapsedS.toFixed(0)} s`,
  );
  const out = opts.out ?? join(REPO_ROOT, 'bench', 'results', `consistency-pg-${machine.date.slice(0, 10)}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    JSON.stringify(
      {
        machine,
        guest: image.versions,
        options: { groupCount, naiveCount, intervalS, gapsMs: gaps, warmupS, checkpointS },
        loadS,
        pgbenchTpsPerRound: rounds,
        elapsedS,
        summary: rows,
        snapshots: snaps.map((s) => ({
          mode: s.mode,
          index: s.index,
          order: s.order,
          gapMs: s.gapMs,
          at: s.at,
          error: s.error,
          snapshotMs: Math.round(s.snapshotMs),
          freezeMs: s.freezeMs,
          restoreS: s.result ? Math.round(s.result.bootToResultS) : undefined,
          result: s.result?.fields,
          log: s.result && !s.result.ok ? s.result.log : undefined,
        })),
      },
      null,
      1,
    ) + '\n',
  );
  console.error(`raw results: ${out}`);
  if (rows[0]?.mode === 'group' && rows[0].passed < rows[0].restored) process.exitCode = 1;
}

main().catch((err: Error) => {
  console.error(err);
  process.exit(2);
});

/**
 * Recovery of a multi-VM application by a recovery plan (issue 27): the replicated PostgreSQL application of
 * dev/pgrep-app.ts (primary, synchronous standby, client committing transactions) runs on the host, is
 * group-snapshotted under load and exported to a repository; then the disaster: its three VMs are destroyed and
 * undefined. A 2-tier plan brings it back from the repository as the original VMs (a failover, so the UDP links
 * between the tiers pair again): tier `db` (primary and standby, each ready when PostgreSQL has finished its crash
 * recovery and started), then tier `app` (the client, ready once it found every commit its log says was acknowledged
 * on the primary - `present` equal to `after` - and its first new commit was acknowledged, which also needs the
 * standby streaming, as commits are synchronous). RTO to "application ready" is the run's start to the client's
 * ready line; every round is rolled back (everything the run made removed) for the next.
 *
 * Full restore, and with `--instant` also instant restore (the tiers checked while their disks hydrate; a refusal
 * before anything was restored is recorded as such), interleaved in alternating order.
 *
 *   npm run bench:recover -- [--rounds 1] [--instant] [--warmup-s 20] [--check-timeout-s 900] [--out <dir>]
 *
 * Needs root (libvirt qemu:///system, the image build). Writes bench/results/recover-<date>.json and the
 * "Recovery plan" section of BENCHMARKS.md. Exit status 1 when a full recovery did not reach application ready.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { Repository } from '../backup/repository';
import { snapshotGroup, waitForHostWorkers } from '../client';
import { exportGroupSnapshot } from '../client/backup';
import { createGroup } from '../client/groups';
import { applyPlan, decideRecovery, recoveryProgress, startRecovery } from '../client/plans';
import type { RecoverProgress } from '../common/plans';
import { serialLogOf } from '../dev/consistency-restore';
import {
  ackedOnConsole,
  domainXml,
  ensureMultiVmImage,
  freeUdpPort,
  prepareDisks,
  readConsole,
  ROLES,
  vmSpecs,
  waitForConsole,
  type Role,
  type VmSpec,
} from '../dev/pgrep-app';
import { startDevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { createGroupsnapWorker } from '../worker/worker';
import { writeSection } from './kept-sections';
import { describeMachine, type MachineDescription } from './machine';
import { benchCommand, integer, parseBenchOptions } from './options';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOST = 'rc-host';
const GROUP = 'recover-pgrep';
const PLAN = 'recover-pgrep-plan';
const CLIENT_READY = /GSMV-LOAD ready role=client after=(\d+) present=(\S+) acked=(\d+)/;

interface Options {
  rounds: number;
  instant: boolean;
  warmupS: number;
  checkTimeoutS: number;
  out: string;
}

const command = benchCommand(
  'recover',
  'replicated PostgreSQL on three VMs recovered by a 2-tier plan from the repository: RTO to application ready',
)
  .option('--rounds <n>', 'recoveries of each kind, interleaved in alternating order', integer(1, 10), 1)
  .option('--instant', 'also instant restore (a refusal before anything was restored is recorded as such)', false)
  .option('--warmup-s <s>', 'client load time before the snapshot', integer(), 20)
  .option('--check-timeout-s <s>', "each VM's readiness check timeout", integer(10), 900)
  .option('--out <dir>', 'where bench/results/ and BENCHMARKS.md are written', REPO_ROOT);

type Kind = 'full' | 'instant';

interface Round {
  kind: Kind;
  /** Why the run was refused before anything started (instant restore on an old QEMU). */
  refused?: string;
  state?: string;
  error?: string;
  /** Run start -> the client's ready line (application ready), s. */
  rtoS?: number;
  /** Request -> awaiting the decision, as the bench saw it (s). */
  requestToReadyS?: number;
  tiers?: { name: string; startedS?: number; readyS?: number; vms: { vm: string; readyS?: number }[] }[];
  /** The recovered client's ready line: its acknowledged commits at the cut, how many the primary held, its first. */
  client?: { after: number; present: number | string; acked: number };
  /** Rollback: every VM and file the run made removed. */
  rolledBack?: boolean;
  /** Each tier's restore (`<run>-t<tier>-h1`): request -> its VMs defined and started (s). */
  restores?: { restoreId: string; durationS?: number }[];
}

interface Results {
  machine: MachineDescription;
  guest: string;
  options: Omit<Options, 'out'>;
  qemu: string;
  /** The application before the disaster. */
  bootS: Partial<Record<Role, number>>;
  ackedAtSnapshot: number;
  freezeMs?: number;
  exportS: number;
  /** The export's data read from the disks, and new in the repository (bytes). */
  exported?: { bytesRead: number; bytesNew: number };
  rounds: Round[];
  loadAvgAtEnd?: number[];
}

/** The plan: tier db (primary, standby) then tier app (client), on this host, as the original VMs. */
function planDocument(url: string, kind: Kind, vms: Record<Role, VmSpec>, timeoutS: number) {
  const check = (serial: string) => ({ serial, timeout: `${timeoutS}s` });
  return {
    name: PLAN,
    group: GROUP,
    repository: url,
    restore: kind,
    placement: { default: HOST },
    tiers: [
      {
        name: 'db',
        vms: [
          { vm: vms.primary.name, check: check('GSMV-LOAD started role=primary') },
          { vm: vms.standby.name, check: check('GSMV-LOAD started role=standby') },
        ],
      },
      // Every acknowledged commit on the primary (present = after), and a new commit acknowledged.
      {
        name: 'app',
        vms: [{ vm: vms.client.name, check: check('GSMV-LOAD ready role=client after=(\\d+) present=\\1 ') }],
      },
    ],
    decision: { timeout: '1h', onTimeout: 'rollback' },
  };
}

/** Polls the run until it waits for the decision, stopped or ended. */
async function untilSettled(client: Client, runId: string): Promise<RecoverProgress> {
  for (;;) {
    const p = await recoveryProgress(client, runId).catch(() => undefined);
    if (p && !['starting', 'recovering'].includes(p.state)) return p;
    await sleep(500);
  }
}

/** One recovery by the plan with `kind` restores, measured, then rolled back. */
async function recoverOnce(
  kind: Kind,
  ctx: { client: Client; hypervisor: LibvirtHypervisor; url: string; vms: Record<Role, VmSpec>; timeoutS: number },
): Promise<Round> {
  const { client, hypervisor, vms } = ctx;
  await applyPlan(client, planDocument(ctx.url, kind, vms, ctx.timeoutS));
  const t0 = performance.now();
  let handle;
  try {
    handle = await startRecovery(client, PLAN, { mode: 'failover' });
  } catch (err) {
    return { kind, refused: (err as Error).message };
  }
  const runId = handle.workflowId.split('/').at(-1)!;
  const p = await untilSettled(client, runId).catch((err: Error) => ({ state: 'failed', error: err.message }) as never);
  const round: Round = { kind, state: p.state, ...(p.error ? { error: p.error } : {}) };
  // Refused before anything was restored (bad input: nothing was made).
  if (p.state === 'failed' && p.error && p.tiers?.length && p.tiers.every((t) => t.state === 'waiting'))
    round.refused = p.error;
  const s = (ms?: number) => (ms === undefined ? undefined : Math.round(ms / 100) / 10);
  if (p.state === 'awaiting-decision') {
    round.requestToReadyS = s(performance.now() - t0);
    round.rtoS = s(p.rtoMs);
    const log = serialLogOf(await hypervisor.domainXml(vms.client.name));
    const m = log ? CLIENT_READY.exec(readConsole(log)) : null;
    if (m)
      round.client = { after: Number(m[1]), present: /^\d+$/.test(m[2]) ? Number(m[2]) : m[2], acked: Number(m[3]) };
  }
  round.tiers = (p.tiers ?? []).map((t) => ({
    name: t.name,
    startedS: s(t.startedMs),
    readyS: s(t.readyMs),
    vms: t.vms.map((v) => ({ vm: v.vm, readyS: s(v.readyMs) })),
  }));
  if (p.state === 'awaiting-decision' || p.state === 'stopped') {
    const r = await decideRecovery(client, runId, 'rollback');
    round.rolledBack = r.state === 'rolled-back';
    round.restores = r.restores.map((x) => ({ restoreId: x.restoreId, durationS: s(x.durationMs) }));
  }
  console.error(
    `  ${kind}: ${round.refused ? `refused: ${round.refused}` : `${p.state}, RTO ${round.rtoS ?? '-'} s`}` +
      (round.client ? ` (client: after ${round.client.after}, present ${round.client.present})` : ''),
  );
  return round;
}

/** The application running under load on the host, then snapshotted and exported; the disaster: its VMs gone. */
async function prepareApplication(
  ctx: { client: Client; hypervisor: LibvirtHypervisor; dir: string; url: string },
  image: Awaited<ReturnType<typeof ensureMultiVmImage>>,
  opts: Options,
  out: Pick<Results, 'bootS' | 'ackedAtSnapshot' | 'freezeMs' | 'exportS' | 'exported'>,
): Promise<Record<Role, VmSpec>> {
  const { client, hypervisor, dir } = ctx;
  const ports = await Promise.all([freeUdpPort(), freeUdpPort(), freeUdpPort(), freeUdpPort()]);
  const vms = vmSpecs(randomBytes(3).toString('hex'), ports, join(dir, 'app'), 0);
  mkdirSync(join(dir, 'app'));
  await prepareDisks(vms, image, join(dir, 'app'));
  const tBoot = performance.now();
  try {
    for (const vm of Object.values(vms)) {
      await hypervisor.defineDomain(domainXml(image, vm));
      await hypervisor.start(vm.name);
    }
    const alive = (name: string) => async () => (await hypervisor.state(name)) !== 'shutoff';
    await Promise.all(
      ROLES.map(async (role) => {
        const pattern = role === 'client' ? /GSMV-LOAD acked \d+/ : /GSMV-LOAD started/;
        if (!(await waitForConsole(vms[role].log, pattern, 1_800_000, alive(vms[role].name))))
          throw new Error(`the ${role} VM did not start its load:\n${readConsole(vms[role].log).slice(-3000)}`);
        out.bootS[role] = Math.round((performance.now() - tBoot) / 1000);
        console.error(`${role} running after ${out.bootS[role]} s`);
      }),
    );
    await sleep(opts.warmupS * 1000);
    out.ackedAtSnapshot = ackedOnConsole(readConsole(vms.client.log));
    const snap = await snapshotGroup(client, {
      group: GROUP,
      vms: ROLES.map((r) => ({ domain: vms[r].name, host: HOST })),
    });
    if (snap.status !== 'completed') throw new Error(`group snapshot ${snap.status}: ${snap.error}`);
    out.freezeMs = Math.round(snap.groupFreezeMs ?? 0);
    console.error(`snapshot ${snap.snapshotId} (client acknowledged >= ${out.ackedAtSnapshot}); exporting ...`);
    const te = performance.now();
    const exported = await exportGroupSnapshot(client, {
      group: GROUP,
      snapshotId: snap.snapshotId,
      repository: ctx.url,
    });
    if (exported.status !== 'completed') throw new Error(`export ${exported.status}: ${exported.error}`);
    out.exportS = Math.round((performance.now() - te) / 100) / 10;
    out.exported = exported.stats && { bytesRead: exported.stats.bytesRead, bytesNew: exported.stats.bytesNew };
    console.error(`exported in ${out.exportS} s`);
  } finally {
    // The disaster: the application's VMs are gone (their images stay in the run's directory).
    for (const vm of Object.values(vms)) {
      if ((await hypervisor.state(vm.name).catch(() => 'shutoff')) !== 'shutoff')
        await hypervisor.destroy(vm.name).catch(() => undefined);
      await hypervisor.undefine(vm.name).catch(() => undefined);
    }
  }
  await createGroup(client, {
    name: GROUP,
    selector: { vms: ROLES.map((r) => ({ domain: vms[r].name, host: HOST })) },
    repository: ctx.url,
  });
  return vms;
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const opts = parseBenchOptions<Options>(command);
  const machine = describeMachine(
    'TCG, 1 vCPU each; primary and standby 384 MiB, client 192 MiB; Debian 12 + PostgreSQL 15 (scripts/build-guest-pgrep.sh)',
  );
  const image = await ensureMultiVmImage();
  const dir = await mkdtemp('/var/tmp/groupsnap-bench-recover-');
  const url = pathToFileURL(join(dir, 'repo')).href;
  const keyFile = join(dir, 'repo.key');
  const key = randomBytes(32);
  writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
  (await Repository.init(url, key)).close();
  process.env.GROUPSNAP_REPO_KEY_FILE = keyFile;
  mkdirSync(join(dir, 'images'));
  mkdirSync(join(dir, 'state'));
  const server = await startDevServer({});
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection });
  const hypervisor = await LibvirtHypervisor.open('qemu:///system');
  const qemu = /version (\d+\.\d+)/.exec(execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }))?.[1];
  const worker = await createGroupsnapWorker({
    connectionOptions: { address: server.address },
    namespace: 'default',
    hostId: HOST,
    hypervisor,
    stateDir: join(dir, 'state'),
    imagesDir: join(dir, 'images'),
    bootFileDirs: [image.dir],
    workflows: true,
  });
  const workerRun = worker.run();
  const results: Results = {
    machine,
    guest: image.versions,
    options: { rounds: opts.rounds, instant: opts.instant, warmupS: opts.warmupS, checkTimeoutS: opts.checkTimeoutS },
    qemu: qemu ?? 'unknown',
    bootS: {},
    ackedAtSnapshot: 0,
    exportS: 0,
    rounds: [],
  };
  try {
    await waitForHostWorkers(client, [HOST], 120_000);
    const vms = await prepareApplication({ client, hypervisor, dir, url }, image, opts, results);
    const ctx = { client, hypervisor, url, vms, timeoutS: opts.checkTimeoutS };
    for (let i = 0; i < opts.rounds; i++) {
      const kinds: Kind[] = !opts.instant ? ['full'] : i % 2 === 0 ? ['full', 'instant'] : ['instant', 'full'];
      for (const kind of kinds) results.rounds.push(await recoverOnce(kind, ctx));
    }
  } finally {
    worker.shutdown();
    await workerRun;
    await hypervisor.close();
    await connection.close();
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
  results.loadAvgAtEnd = loadavg().map((x) => Number(x.toFixed(2)));
  writeResults(opts.out, results);
  if (results.rounds.some((r) => r.kind === 'full' && !(r.state === 'awaiting-decision' && r.client)))
    process.exitCode = 1;
}

function writeResults(out: string, results: Results): void {
  mkdirSync(join(out, 'bench', 'results'), { recursive: true });
  const rawFile = `bench/results/recover-${results.machine.date.slice(0, 10)}.json`;
  writeFileSync(join(out, rawFile), JSON.stringify(results, null, 2) + '\n');
  writeSection(out, 'recover', renderSection(results, rawFile));
  console.error(`wrote ${rawFile} and BENCHMARKS.md`);
}

/** The BENCHMARKS.md section of a run. */
export function renderSection(r: Results, rawFile: string): string {
  const m = r.machine;
  const o = r.options;
  const mib = (b: number) => Math.round(b / 2 ** 20);
  const cell = (x?: number) => (x === undefined ? '-' : x.toFixed(1));
  const restoreOf = (x: Round, t: number) => x.restores?.find((y) => y.restoreId.endsWith(`-t${t}-h1`))?.durationS;
  const tier = (x: Round, name: string) => x.tiers?.find((t) => t.name === name);
  const rows = r.rounds.map((x) =>
    x.refused
      ? `| ${x.kind} | refused: ${x.refused.replace(/\|/g, '/')} | | | | | | |`
      : `| ${x.kind} | ${x.state === 'awaiting-decision' ? 'every tier ready (then rolled back)' : x.state}` +
        `${x.error ? `: ${x.error.replace(/\|/g, '/').slice(0, 200)}` : ''} | ` +
        `${cell(restoreOf(x, 1))} | ${cell(tier(x, 'db')?.readyS)} | ${cell(restoreOf(x, 2))} | ` +
        `${cell(x.rtoS)} | ${cell(x.requestToReadyS)} | ` +
        `${x.client ? `${x.client.present} of ${x.client.after}, first new ${x.client.acked}` : '-'} |`,
  );
  return [
    '<!-- recover:begin -->',
    '## Recovery plan: the replicated PostgreSQL application (issue 27)',
    '',
    `Generated by \`npm run bench:recover -- --rounds ${o.rounds}${o.instant ? ' --instant' : ''} --warmup-s ` +
      `${o.warmupS}\` (bench/recover.ts) from \`${rawFile}\`; run ${m.date} on ${m.hostname}: ${m.cores} cores ` +
      `(${m.cpu}), libvirt ${m.libvirt}, QEMU ${r.qemu}, load average ${(m.loadAvgAtStart ?? []).join(' / ')} at ` +
      `the start, ${(r.loadAvgAtEnd ?? []).join(' / ')} at the end. **A shared 2-core machine** (other helpers ran VMs and tests meanwhile): absolute figures are rough.`,
    '',
    `The three VMs of dev/pgrep-app.ts (${m.guest}) booted to load in ` +
      `${ROLES.map((x) => `${x} ${r.bootS[x] ?? '-'} s`).join(', ')}; after ${o.warmupS} s of load (the client had ` +
      `acknowledged >= ${r.ackedAtSnapshot} commits) a group snapshot (freeze ${r.freezeMs ?? '-'} ms), exported to a ` +
      `file repository in ${r.exportS} s` +
      (r.exported ? ` (${mib(r.exported.bytesRead)} MiB read, ${mib(r.exported.bytesNew)} MiB new)` : '') +
      '; then the three VMs destroyed and undefined. A failover by a 2-tier plan ' +
      'brings them back from the repository on the same host as the original VMs: tier `db` (primary, standby: ready ' +
      'when PostgreSQL has recovered and started), then tier `app` (client: ready when the primary holds every commit ' +
      'its log says was acknowledged, and its first new commit is acknowledged - synchronous, so through the standby). ' +
      'Each run is rolled back for the next.',
    '',
    '| restore | outcome | tier db: restore (s) | tier db ready (s) | tier app: restore (s) | tier app ready = RTO to application ready (s) | request -> awaiting decision, polled (s) | acknowledged commits present on the primary |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |',
    ...rows,
    '',
    ...summary(r),
    '<!-- recover:end -->',
  ].join('\n');
}

/** What the rounds say, in words: the full restore's RTO and where it went; the instant restore's figure or refusal. */
function summary(r: Results): string[] {
  const median = (xs: number[]) => {
    const v = [...xs].sort((a, b) => a - b);
    return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  };
  const out: string[] = [];
  for (const kind of ['full', 'instant'] as const) {
    const done = r.rounds.filter((x) => x.kind === kind && x.rtoS !== undefined);
    const refused = r.rounds.find((x) => x.kind === kind && x.refused);
    if (done.length) {
      const restores = done.flatMap((x) => (x.restores ?? []).map((y) => y.durationS ?? 0));
      const restoreShare = median(done.map((x) => (x.restores ?? []).reduce((n, y) => n + (y.durationS ?? 0), 0)));
      out.push(
        `${kind === 'full' ? 'Full' : 'Instant'} restore: RTO to application ready ${done.map((x) => x.rtoS).join(', ')} s ` +
          `(median ${median(done.map((x) => x.rtoS!)).toFixed(1)} s); the two tiers' restores took ` +
          `${restoreShare.toFixed(1)} s of it (median; ${restores.length} restores), the rest is the guests booting ` +
          "under TCG, PostgreSQL's crash recovery, the client's first synchronous commit and the serial checks' 0.5 s polling.",
      );
    } else if (refused) {
      out.push(
        `${kind === 'full' ? 'Full' : 'Instant'} restore: refused on QEMU ${r.qemu} before anything was restored: ` +
          `no figure here (${refused.refused})`,
      );
    }
  }
  return out.flatMap((x, i) => (i ? ['', x] : [x]));
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

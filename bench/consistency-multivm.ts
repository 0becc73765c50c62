/**
 * Crash consistency of a multi-VM application (docs/consistency.md, part 3; issue 19): a replicated PostgreSQL
 * across three TCG VMs (scripts/build-guest-pgrep.sh, scripts/guest-pgrep-init.sh):
 *
 * - `primary`: PostgreSQL 15, data (vdb) and WAL (vdc) on separate disks, synchronous_standby_names = 'standby',
 *   synchronous_commit = on;
 * - `standby`: a synchronous streaming standby (same disks layout);
 * - `client`: runs pgbench-like transactions against the primary, each also inserting its commit id n, and writes
 *   "acknowledged n" to its own disk (vdb, O_DIRECT + fsync) once COMMIT returned, before starting n + 1.
 *
 * The VMs are linked by QEMU UDP socket links on 127.0.0.1 (`<interface type='udp'>`: primary eth0 <-> standby,
 * primary eth1 <-> client), with link-local addresses in the guests; no bridge, no routed network, and a VM can
 * start before its peer (a TCP `client` link would need its `server` up first).
 *
 * While the client runs, every round takes, --interval-s apart:
 * - `group`: groupsnap's saga, `snapshotGroup` of the three VMs (real Temporal dev server, in-process host worker,
 *   real libvirt): all paused, all disks switched, all resumed;
 * - `naive db-first`: one-VM snapshots (`snapshotGroup` of one VM each, so each VM is consistent in itself) one after
 *   the other, primary, standby, then client, `--gap-ms` apart: the order of an operator snapshotting the database tier
 *   before the application tier;
 * - `naive client-first`: the same, client first (a control: this order cannot lose an acknowledged commit).
 *
 * Then the three VMs are stopped (as in a disaster; their clones reuse their UDP ports, see "Port collisions" in
 * docs/consistency.md) and redefined with gs.mode=check, which their clones inherit, and every snapshot is restored
 * through groupsnap's restore (`restoreGroup`, mode `clone`; a naive cut: one call per VM snapshot), one cut at a
 * time, its three clones booting side by side: the client's clone reports its acknowledged id, the primary's
 * recovers, the standby's recovers and is promoted (the failover drill), both run pg_amcheck, pgbench's balance
 * invariant and count their commit ids (dev/consistency-multivm-check.ts evaluates them). The clones are removed
 * with the host's `removeClone` activity.
 *
 *   npm run bench:consistency-multivm -- [--rounds 2] [--modes group,naive-db-first,naive-client-first]
 *       [--interval-s 10] [--gap-ms 0] [--warmup-s 20] [--checkpoint-s 0] [--out <file.json>]
 *
 * Needs root (libvirt qemu:///system, the image build). Exit status 1 when a restored group snapshot violated an
 * invariant.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { restoreGroup, snapshotGroup, waitForHostWorkers, type RestoreResult } from '../client';
import {
  evaluateMultiVmCut,
  formatMultiVmCut,
  parseMultiVmResult,
  type MultiVmCutReport,
} from '../dev/consistency-multivm-check';
import { removeClones, serialLogOf, type RestoreHost } from '../dev/consistency-restore';
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
import { describeMachine } from './machine';
import { benchCommand, integer, nameList, parseBenchOptions } from './options';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOST = 'mv-host';
const GROUP = 'consistency-multivm';
const NAIVE_GROUP = 'consistency-multivm-naive';
const MODES = ['group', 'naive-db-first', 'naive-client-first'] as const;
type Mode = (typeof MODES)[number];
const NAIVE_ORDER: Record<Exclude<Mode, 'group'>, Role[]> = {
  'naive-db-first': ['primary', 'standby', 'client'],
  'naive-client-first': ['client', 'primary', 'standby'],
};

interface Options {
  rounds: number;
  modes: Mode[];
  intervalS: number;
  gapMs: number;
  warmupS: number;
  checkpointS: number;
  checkTimeoutS: number;
  out?: string;
}

const command = benchCommand(
  'consistency-multivm',
  'replicated PostgreSQL on three VMs (primary, synchronous standby, client): group vs naive per-VM snapshots',
)
  .option('--rounds <n>', 'rounds, each one snapshot of every mode', integer(1), 2)
  .option('--modes <list>', `modes, of ${MODES.join(', ')}`, nameList(MODES), [...MODES])
  .option('--interval-s <s>', 'time between two snapshots', integer(), 10)
  .option(
    '--gap-ms <ms>',
    'naive: pause between two VMs snapshots (on top of the snapshot calls themselves)',
    integer(),
    0,
  )
  .option('--warmup-s <s>', 'client load time before the first snapshot', integer(), 20)
  .option(
    '--checkpoint-s <s>',
    "the primary also runs CHECKPOINT every S seconds (0: only PostgreSQL's own)",
    integer(),
    0,
  )
  .option('--check-timeout-s <s>', "a restored cut's time to print its results", integer(1), 1200)
  .option('--out <file.json>', 'raw results (default: bench/results/consistency-multivm-<date>.json)');

interface Snap {
  mode: Mode;
  round: number;
  at: string;
  /** The client's console progress when the snapshot started (a lower bound of its acknowledged id). */
  ackedBefore: number;
  /** group: one id; naive: one per VM, in the order taken. */
  snapshots: { group: string; snapshotId: string; roles: Role[] }[];
  snapshotMs: number;
  freezeMs?: number;
  error?: string;
  results?: Partial<Record<Role, Record<string, string>>>;
  report?: MultiVmCutReport;
  restoreS?: number;
  logs?: Partial<Record<Role, string[]>>;
}

/** One cut into `snap`: a group snapshot of the three VMs, or naive ones, one VM after the other. */
async function takeCut(snap: Snap, client: Client, vms: Record<Role, VmSpec>, gapMs: number): Promise<void> {
  const mode = snap.mode;
  try {
    if (mode === 'group') {
      const r = await snapshotGroup(client, {
        group: GROUP,
        vms: ROLES.map((role) => ({ domain: vms[role].name, host: HOST })),
      });
      if (r.status !== 'completed') throw new Error(r.error ?? `snapshot ${r.status}`);
      snap.snapshots.push({ group: GROUP, snapshotId: r.snapshotId, roles: [...ROLES] });
      snap.freezeMs = r.groupFreezeMs;
    } else {
      for (const [k, role] of NAIVE_ORDER[mode].entries()) {
        if (k > 0 && gapMs) await sleep(gapMs);
        const r = await snapshotGroup(client, {
          group: NAIVE_GROUP,
          vms: [{ domain: vms[role].name, host: HOST }],
        });
        if (r.status !== 'completed') throw new Error(r.error ?? `snapshot ${r.status}`);
        snap.snapshots.push({ group: NAIVE_GROUP, snapshotId: r.snapshotId, roles: [role] });
      }
    }
  } catch (err) {
    snap.error = (err as Error).message;
  }
}

/**
 * Restores cut `s` (number `n`) as clones, boots them in check mode and reads what each guest found; the clones are
 * removed afterwards. The result, or the error, goes into `s`.
 */
async function restoreCut(
  s: Snap,
  n: number,
  ctx: {
    client: Client;
    hypervisor: LibvirtHypervisor;
    vms: Record<Role, VmSpec>;
    restoreHost: RestoreHost;
    /** Every clone made, for the final clean-up. */
    made: RestoreResult['vms'];
    checkTimeoutS: number;
  },
): Promise<void> {
  const { client, hypervisor, vms, restoreHost, made } = ctx;
  const alive = (name: string) => async () => (await hypervisor.state(name)) !== 'shutoff';
  const tr = performance.now();
  const clones: RestoreResult['vms'] = [];
  try {
    for (const snapshot of s.snapshots) {
      const r = await restoreGroup(client, {
        group: snapshot.group,
        snapshotId: snapshot.snapshotId,
        mode: 'clone',
        suffix: `-r${n}`,
      });
      const ours = r.vms.filter((v) => v.clone);
      made.push(...ours);
      clones.push(...ours);
      if (r.status !== 'restored') throw new Error(`restore of ${snapshot.snapshotId} failed: ${r.error}`);
    }
    const results: Partial<Record<Role, Record<string, string>>> = {};
    const logs: Partial<Record<Role, string[]>> = {};
    await Promise.all(
      clones.map(async (c) => {
        const role = ROLES.find((r) => vms[r].name === c.domain)!;
        const log = serialLogOf(await hypervisor.domainXml(c.clone!));
        if (!log) throw new Error(`clone ${c.clone} has no file-backed serial port`);
        await waitForConsole(log, /GSMV-END/, ctx.checkTimeoutS * 1000, alive(c.clone!));
        const text = readConsole(log);
        results[role] = parseMultiVmResult(text);
        const lines = text.split(/\r?\n/).filter((l) => l.startsWith('GSMV-LOG'));
        if (!results[role]) lines.push(...text.split(/\r?\n/).slice(-15));
        if (lines.length) logs[role] = lines;
        await rm(log, { force: true });
      }),
    );
    s.results = results;
    s.logs = logs;
    s.report = evaluateMultiVmCut(results);
  } catch (err) {
    s.error = `restore: ${(err as Error).message}`;
  } finally {
    await removeClones({ [HOST]: restoreHost }, clones);
  }
  s.restoreS = Math.round((performance.now() - tr) / 1000);
  console.error(
    `  restored round ${s.round + 1} ${s.mode}: ${s.report ? formatMultiVmCut(s.report) : s.error} (${s.restoreS} s)` +
      (s.report && !s.report.ok && s.logs && Object.keys(s.logs).length
        ? `\n    ${Object.entries(s.logs)
            .flatMap(([r, l]) => l!.slice(-6).map((x) => `${r}: ${x}`))
            .join('\n    ')}`
        : ''),
  );
}

/** The summary: per mode, cuts checked, violating, by invariant, the most acknowledged commits lost. */
function summaryRows(modes: Mode[], snaps: Snap[]) {
  return modes.map((mode) => {
    const list = snaps.filter((s) => s.mode === mode);
    const checked = list.filter((s) => s.report);
    const count = (inv: string) => checked.filter((s) => s.report!.violations.some((v) => v.invariant === inv)).length;
    const lost = checked.map((s) => Math.max(s.report!.lost.primary, s.report!.lost.standby));
    return {
      mode,
      taken: list.filter((s) => s.snapshots.length && !s.error?.startsWith('snapshot')).length,
      checked: checked.length,
      violating: checked.filter((s) => !s.report!.ok).length,
      acked: count('acked'),
      start: count('start'),
      amcheck: count('amcheck'),
      balance: count('balance'),
      contiguous: count('contiguous'),
      maxLost: lost.length ? Math.max(...lost) : 0,
      errors: list.filter((s) => s.error).length,
    };
  });
}

/** The summary as a Markdown table. */
function printRows(rows: ReturnType<typeof summaryRows>): void {
  console.log(
    '| mode | cuts checked | violating | `acked` | `start` | `amcheck` | `balance` | `contiguous` | most acknowledged commits lost | errors |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows)
    console.log(
      `| ${r.mode} | ${r.checked} | ${r.violating} | ${r.acked} | ${r.start} | ${r.amcheck} | ${r.balance} | ` +
        `${r.contiguous} | ${r.maxLost} | ${r.errors} |`,
    );
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const opts = parseBenchOptions<Options>(command);
  const machine = describeMachine(
    'TCG, 1 vCPU each; primary and standby 384 MiB, client 192 MiB; Debian 12 + PostgreSQL 15 (scripts/build-guest-pgrep.sh)',
  );
  const t0 = performance.now();
  const image = await ensureMultiVmImage();
  console.error(`guest image: ${image.dir}`);
  const dir = await mkdtemp(join(tmpdir(), 'gs-mv-'));
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
  const defined = new Set<string>();
  const made: RestoreResult['vms'] = [];
  const restoreHost: RestoreHost = { hypervisor, stateDir };
  const snaps: Snap[] = [];
  let loadS = 0;
  let clientConsole = '';
  const bootS: Partial<Record<Role, number>> = {};
  try {
    await waitForHostWorkers(client, [HOST], 120_000);
    const id = Math.random().toString(36).slice(2, 8);
    const [p1, p2, p3, p4] = await Promise.all([freeUdpPort(), freeUdpPort(), freeUdpPort(), freeUdpPort()]);
    const vms = vmSpecs(id, [p1, p2, p3, p4], dir, opts.checkpointS);
    await prepareDisks(vms, image, dir);
    const tBoot = performance.now();
    for (const vm of Object.values(vms)) {
      defined.add(vm.name);
      await hypervisor.defineDomain(domainXml(image, vm));
      await hypervisor.start(vm.name);
    }
    const alive = (name: string) => async () => (await hypervisor.state(name)) !== 'shutoff';
    await Promise.all(
      ROLES.map(async (role) => {
        const pattern = role === 'client' ? /GSMV-LOAD acked \d+/ : /GSMV-LOAD started/;
        if (!(await waitForConsole(vms[role].log, pattern, 1_800_000, alive(vms[role].name))))
          throw new Error(`the ${role} VM did not start its load:\n${readConsole(vms[role].log).slice(-3000)}`);
        bootS[role] = Math.round((performance.now() - tBoot) / 1000);
        console.error(`${role} running after ${bootS[role]} s`);
      }),
    );
    console.error(`warm-up ${opts.warmupS} s`);
    const tLoad = performance.now();
    await sleep(opts.warmupS * 1000);

    for (let round = 0; round < opts.rounds; round++) {
      for (const mode of opts.modes) {
        if (snaps.length > 0) await sleep(opts.intervalS * 1000);
        const snap: Snap = {
          mode,
          round,
          at: new Date().toISOString(),
          ackedBefore: ackedOnConsole(readConsole(vms.client.log)),
          snapshots: [],
          snapshotMs: 0,
        };
        const ts = performance.now();
        await takeCut(snap, client, vms, opts.gapMs);
        snap.snapshotMs = Math.round(performance.now() - ts);
        snaps.push(snap);
        console.error(
          `  round ${round + 1} ${mode}: ${snap.error ? `not taken: ${snap.error}` : `taken in ${snap.snapshotMs} ms`}` +
            ` (client had acknowledged >= ${snap.ackedBefore})`,
        );
      }
    }
    loadS = (performance.now() - tLoad) / 1000;
    clientConsole = readConsole(vms.client.log);

    // The disaster: the three VMs stop. They stay defined (restoreGroup clones their definitions), switched to
    // check mode, which their clones inherit; their clones reuse their UDP ports, free now.
    for (const vm of Object.values(vms)) {
      await hypervisor.destroy(vm.name);
      const xml = await hypervisor.domainXml(vm.name);
      await hypervisor.defineDomain(xml.replace('gs.mode=load', 'gs.mode=check'));
    }

    for (const s of snaps.filter((x) => !x.error)) {
      await restoreCut(s, snaps.indexOf(s) + 1, {
        client,
        hypervisor,
        vms,
        restoreHost,
        made,
        checkTimeoutS: opts.checkTimeoutS,
      });
    }
  } finally {
    await removeClones({ [HOST]: restoreHost }, made).catch(() => undefined);
    for (const name of defined) {
      if ((await hypervisor.state(name).catch(() => 'shutoff')) !== 'shutoff')
        await hypervisor.destroy(name).catch(() => undefined);
      await hypervisor.undefine(name).catch((err: Error) => console.error(`cannot undefine ${name}: ${err.message}`));
    }
    worker.shutdown();
    await workerRun;
    await hypervisor.close();
    await connection.close();
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }

  const elapsedS = (performance.now() - t0) / 1000;
  const rows = summaryRows(opts.modes, snaps);
  printRows(rows);
  const finalAcked = ackedOnConsole(clientConsole);
  console.log(
    `\nboot to load ${ROLES.map((r) => `${r} ${bootS[r]} s`).join(', ')}; load ${loadS.toFixed(0)} s, client acknowledged ` +
      `>= ${finalAcked} commits (${(finalAcked / Math.max(loadS, 1)).toFixed(1)}/s); elapsed ${elapsedS.toFixed(0)} s`,
  );
  const out = opts.out ?? join(REPO_ROOT, 'bench', 'results', `consistency-multivm-${machine.date.slice(0, 10)}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    JSON.stringify(
      {
        machine,
        guest: image.versions,
        options: opts,
        bootS,
        loadS,
        finalAcked,
        elapsedS,
        summary: rows,
        snapshots: snaps,
      },
      null,
      1,
    ) + '\n',
  );
  console.error(`raw results: ${out}`);
  if (rows.some((r) => r.mode === 'group' && (r.violating > 0 || r.errors > 0))) process.exitCode = 1;
}

main().catch((err: Error) => {
  console.error(err);
  process.exit(2);
});

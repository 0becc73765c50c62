/**
 * Crash consistency under a real workload, long form (docs/consistency.md; the short form is
 * test/consistency.test.ts). Runs the writer/acker workload VMs of dev/guest.ts, takes snapshots in each mode of
 * dev/consistency-run.ts while it runs, checks every cut offline, and prints the counts per mode.
 *
 *   npm run build && node dist/bench/consistency.js [--group 200] [--naive 50] [--modes group,naive-vm,naive-disk]
 *       [--batch 50] [--hosts 2] [--gap-ms 0] [--restore 0] [--restore-naive 0] [--out <file.json>]
 *
 * --group / --naive: snapshots per mode (groupsnap / each naive mode); --batch: snapshots per workload pair (a
 * fresh pair then starts, so backing chains stay short); --hosts 1|2: the writer and the acker under one host
 * worker or two; --gap-ms: pause between the parts (VMs, disks) of a naive snapshot; --restore n: restore n of the
 * group snapshots as clones (spread over the batches), boot them and check them from inside the guests
 * (dev/consistency-restore.ts); --restore-naive n: the same for n violating naive-vm cuts (the inside check must
 * find their violation too). Raw per-cut results go to --out (default bench/results/consistency-<date>.json). Exit
 * status 1 when a group snapshot cut had a violation, or a restored cut's inside check did not agree with the
 * offline one.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { waitForHostWorkers } from '../client';
import { formatCut } from '../dev/consistency-check';
import {
  formatRestoreCheck,
  pickRestoreSample,
  restoreAndCheckAll,
  type RestoreCheck,
  type RestoreHost,
} from '../dev/consistency-restore';
import { formatSummary, runMode, SNAPSHOT_MODES, type ModeSummary, type SnapshotMode } from '../dev/consistency-run';
import { WorkloadPair } from '../dev/guest';
import { scopedHypervisor } from '../dev/scoped-hypervisor';
import { startDevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { createGroupsnapWorker } from '../worker/worker';
import { describeMachine, type MachineDescription } from './machine';
import { benchCommand, integer, nameList, parseBenchOptions } from './options';

interface ConsistencyBenchOptions {
  group: number;
  naive: number;
  modes: SnapshotMode[];
  batch: number;
  hosts: number;
  gapMs: number;
  restore: number;
  restoreNaive: number;
  out?: string;
}

const command = benchCommand('consistency', 'crash consistency of group vs naive snapshots under a running workload')
  .option('--group <n>', 'group snapshots (groupsnap)', integer(), 200)
  .option('--naive <n>', 'snapshots per naive mode', integer(), 50)
  .option('--modes <mode,...>', 'snapshot modes to run', nameList(SNAPSHOT_MODES), [...SNAPSHOT_MODES])
  .option('--batch <n>', 'snapshots per workload pair (then a fresh pair starts)', integer(1), 50)
  .option('--hosts <n>', 'the writer and the acker under one host worker (1) or two (2)', integer(1, 2), 2)
  .option('--gap-ms <ms>', 'pause between the parts of a naive snapshot', integer(), 0)
  .option('--restore <n>', 'group snapshots restored as clones and checked from inside', integer(), 0)
  .option('--restore-naive <n>', 'violating naive-vm cuts restored and checked from inside', integer(), 0)
  .option('--out <file.json>', 'raw per-cut results (default: bench/results/consistency-<date>.json)');

function merge(into: ModeSummary | undefined, s: ModeSummary): ModeSummary {
  if (!into) return s;
  into.attempted += s.attempted;
  into.checked += s.checked;
  into.failedSnapshots += s.failedSnapshots;
  into.violatingCuts += s.violatingCuts;
  into.midStepCuts += s.midStepCuts;
  for (const [k, n] of Object.entries(s.byInvariant)) into.byInvariant[k] = (into.byInvariant[k] ?? 0) + n;
  into.steps += s.steps;
  into.elapsedMs += s.elapsedMs;
  into.cuts.push(...s.cuts.map((c) => ({ ...c, index: into.cuts.length + c.index })));
  return into;
}

/** The table of each mode's snapshots, as printed at the end of a run. */
function printSummaries(summaries: Partial<Record<SnapshotMode, ModeSummary>>): void {
  console.log('');
  console.log(
    '| mode | snapshots checked | with violations | cross-disk | cross-vm | cross-vm-lockstep | not taken | consistent mid-step | workload steps |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const s of Object.values(summaries)) {
    const inv = (k: string) => s.byInvariant[k] ?? 0;
    console.log(
      `| ${s.mode} | ${s.checked} | ${s.violatingCuts} | ${inv('cross-disk')} | ${inv('cross-vm')} | ` +
        `${inv('cross-vm-lockstep')} | ${s.failedSnapshots} | ${s.midStepCuts} | ${s.steps} |`,
    );
  }
}

/** The table of the restored cuts and the restore timings (nothing when none were restored). */
function printRestores(restored: RestoreCheck[], restoreErrors: string[]): void {
  if (restored.length || restoreErrors.length) {
    console.log('');
    console.log(
      '| restored from | clones booted | checked from inside | with violations inside | agree with offline |',
    );
    console.log('| --- | --- | --- | --- | --- |');
    for (const mode of ['group', 'naive-vm'] as const) {
      const rs = restored.filter((r) => r.mode === mode);
      if (rs.length === 0 && !restoreErrors.some((e) => e.startsWith(`${mode} `))) continue;
      console.log(
        `| ${mode} | ${rs.reduce((n, r) => n + r.vms.length, 0)} | ${rs.length} | ` +
          `${rs.filter((r) => r.inside.violations.length).length} | ${rs.filter((r) => !r.mismatches.length).length} |`,
      );
    }
    const ms = (xs: number[]) => {
      const v = [...xs].sort((a, b) => a - b);
      return v.length ? `${Math.round(v[Math.floor(v.length / 2)])} / ${Math.round(v[v.length - 1])}` : '-';
    };
    console.log(
      `\nrestore (ms, p50 / max): restoreGroup ${ms(restored.map((r) => r.restoreMs))}, boot to recovery line ` +
        `${ms(restored.map((r) => r.bootMs))}, clone removal ${ms(restored.map((r) => r.removeMs))}` +
        (restoreErrors.length ? `; ${restoreErrors.length} restore(s) failed: ${restoreErrors.join('; ')}` : ''),
    );
  }
}

/** The raw per-cut results, compact, to `--out` (default bench/results/consistency-<date>.json); returns the file. */
function writeRaw(
  opts: ConsistencyBenchOptions,
  run: {
    machine: MachineDescription;
    restoreCounts: Partial<Record<SnapshotMode, number>>;
    elapsedS: number;
    summaries: Partial<Record<SnapshotMode, ModeSummary>>;
    restored: RestoreCheck[];
    restoreErrors: string[];
  },
): string {
  const { machine, restoreCounts, elapsedS, summaries, restored, restoreErrors } = run;
  const { hosts: hostCount, batch, gapMs } = opts;
  const out = opts.out ?? join(REPO_ROOT, 'bench', 'results', `consistency-${machine.date.slice(0, 10)}.json`);
  mkdirSync(dirname(out), { recursive: true });
  const compact = Object.fromEntries(
    Object.entries(summaries).map(([mode, s]) => [
      mode,
      {
        ...s,
        cuts: s.cuts.map((c) => ({
          i: c.index,
          completed: c.completed,
          error: c.error,
          snapshotMs: Math.round(c.snapshotMs),
          freezeMs: c.freezeMs,
          cut: c.report ? formatCut(c.report) : undefined,
        })),
      },
    ]),
  );
  writeFileSync(
    out,
    JSON.stringify(
      {
        machine,
        options: { hostCount, batch, gapMs, restore: restoreCounts },
        elapsedS,
        summaries: compact,
        restored: restored.map((r) => ({
          mode: r.mode,
          i: r.index,
          snapshotIds: r.snapshotIds,
          inside: formatCut(r.inside),
          mismatches: r.mismatches,
          lines: r.vms.map((v) => `${v.clone}: ${v.line}`),
          restoreMs: Math.round(r.restoreMs),
          bootMs: Math.round(r.bootMs),
          removeMs: Math.round(r.removeMs),
        })),
        restoreErrors,
      },
      null,
      1,
    ) + '\n',
  );
  return out;
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const opts = parseBenchOptions<ConsistencyBenchOptions>(command);
  const { batch, modes, gapMs } = opts;
  const groupCount = opts.group;
  const naiveCount = opts.naive;
  const hostCount = opts.hosts;
  const restoreCounts: Partial<Record<SnapshotMode, number>> = { group: opts.restore, 'naive-vm': opts.restoreNaive };
  const machine = describeMachine('TCG, 1 vCPU, 96 MiB, Debian cloud kernel + busybox-static initramfs');
  const t0 = performance.now();

  const server = await startDevServer({});
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection });
  const stateRoot = await mkdtemp(join(tmpdir(), 'gs-consistency-state-'));
  const hostIds = hostCount === 1 ? ['cons-host'] : ['cons-host-w', 'cons-host-k'];
  const hypervisors = await Promise.all(hostIds.map(() => LibvirtHypervisor.open('qemu:///system')));
  // Each host worker sees only its VMs (and their clones), as on separate machines: the writers and the ackers of
  // this run's pairs, or both with one host.
  const prefix = `gs-consb-${Date.now().toString(36)}`;
  const scopes = hostCount === 1 ? [`${prefix}-`] : [`${prefix}-writer-`, `${prefix}-acker-`];
  const restoreHosts: Record<string, RestoreHost> = Object.fromEntries(
    hostIds.map((hostId, i) => [
      hostId,
      { hypervisor: scopedHypervisor(hypervisors[i], scopes[i]), stateDir: join(stateRoot, hostId) },
    ]),
  );
  const workers = await Promise.all(
    hostIds.map(async (hostId, i) => {
      mkdirSync(restoreHosts[hostId].stateDir);
      return createGroupsnapWorker({
        connectionOptions: { address: server.address },
        namespace: 'default',
        hostId,
        hypervisor: restoreHosts[hostId].hypervisor,
        stateDir: restoreHosts[hostId].stateDir,
        workflows: i === 0,
      });
    }),
  );
  const runs = workers.map((w) => w.run());
  const summaries: Partial<Record<SnapshotMode, ModeSummary>> = {};
  const restored: RestoreCheck[] = [];
  const restoreErrors: string[] = [];
  try {
    await waitForHostWorkers(client, hostIds, 120_000);
    for (const mode of modes) {
      const total = mode === 'group' ? groupCount : naiveCount;
      for (let done = 0; done < total; done += batch) {
        const pair = await WorkloadPair.create({ prefix });
        const count = Math.min(batch, total - done);
        try {
          await pair.waitForSteps(3);
          const s = await runMode({
            mode,
            pair,
            count,
            client,
            hosts: { writer: hostIds[0], acker: hostIds[hostIds.length - 1] },
            hypervisor: hypervisors[0],
            gapMs,
            onCut: (c) =>
              console.error(
                `  ${mode} #${done + c.index + 1}: ${c.completed ? formatCut(c.report!) : `not taken: ${c.error}`}`,
              ),
          });
          // This batch's share of the restores, taken before its pair (and the snapshots) go.
          const share = (k: number) => Math.round(((restoreCounts[mode] ?? 0) * k) / total);
          const base = summaries[mode]?.cuts.length ?? 0;
          const sample = pickRestoreSample(s.cuts, share(done + count) - share(done));
          // Two cuts (four clones) at a time: restored one after the other, booting side by side.
          for (let k = 0; k < sample.length; k += 2) {
            const cuts = sample.slice(k, k + 2);
            try {
              const rs = await restoreAndCheckAll({
                client,
                cuts,
                suffix: (c) => `-r${base + c.index + 1}`,
                hosts: restoreHosts,
              });
              for (const r of rs) {
                r.index += base;
                restored.push(r);
                console.error(`  ${formatRestoreCheck(r)}`);
              }
            } catch (err) {
              const which = cuts.map((c) => `${mode} #${base + c.index + 1}`).join(', ');
              restoreErrors.push(`${which}: ${(err as Error).message}`);
              console.error(`  restore of ${which} failed: ${(err as Error).message}`);
            }
          }
          summaries[mode] = merge(summaries[mode], s);
        } finally {
          await pair.destroy();
        }
      }
      console.log(formatSummary(summaries[mode]!));
    }
  } finally {
    for (const w of workers) w.shutdown();
    await Promise.all(runs);
    for (const h of hypervisors) await h.close();
    await rm(stateRoot, { recursive: true, force: true });
    await connection.close();
    await server.stop();
  }

  const elapsedS = (performance.now() - t0) / 1000;
  printSummaries(summaries);
  printRestores(restored, restoreErrors);
  console.log(`\nhosts: ${hostCount}, batch: ${batch}, gap: ${gapMs} ms, elapsed: ${elapsedS.toFixed(0)} s`);
  const out = writeRaw(opts, { machine, restoreCounts, elapsedS, summaries, restored, restoreErrors });
  console.error(`raw results: ${out}`);
  // A restored cut passes when the guests' view agrees with the offline check (group cuts: no violation either).
  const restoreBad = restored.filter(
    (r) => r.mismatches.length > 0 || (r.mode === 'group' && r.inside.violations.length),
  );
  if ((summaries.group?.violatingCuts ?? 0) > 0 || restoreBad.length > 0 || restoreErrors.length > 0)
    process.exitCode = 1;
}

main().catch((err: Error) => {
  console.error(err);
  process.exit(2);
});

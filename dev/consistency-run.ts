/**
 * Takes snapshots of a running {@link WorkloadPair} in one of three ways and checks every cut with
 * dev/consistency-check.ts (shared by test/consistency.test.ts and bench/consistency.ts; see docs/consistency.md):
 *
 * - `group`: groupsnap's saga, one `snapshotGroup` of both VMs (on the hosts given);
 * - `naive-vm`: each VM snapshotted on its own, one after the other (two one-VM `snapshotGroup` calls, writer
 *   first): every VM's disks are consistent, the pair is not;
 * - `naive-disk`: each disk snapshotted on its own, one after the other, without pausing anything (one-disk
 *   external snapshots through the hypervisor, writer's A, B, then acker's A, B).
 *
 * The naive modes take their parts back to back, or `gapMs` apart (as a slower script or a bigger group would).
 */
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { snapshotGroup } from '../client';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { checkCut, type CutReport, type CutVm } from './consistency-check';
import type { WorkloadPair } from './guest';

export type SnapshotMode = 'group' | 'naive-vm' | 'naive-disk';
export const SNAPSHOT_MODES: readonly SnapshotMode[] = ['group', 'naive-vm', 'naive-disk'];

export interface ModeOptions {
  mode: SnapshotMode;
  pair: WorkloadPair;
  count: number;
  /** For `group` and `naive-vm`. */
  client?: Client;
  /** Host ids of the writer's and the acker's workers. */
  hosts?: { writer: string; acker: string };
  /** For `naive-disk`. */
  hypervisor?: Hypervisor;
  /** Naive modes: pause between one part's snapshot (a VM's, a disk's) and the next. @default 0 */
  gapMs?: number;
  /** Steps the workload must make between two snapshots. @default 2 */
  stepsBetween?: number;
  /** Called after each checked cut. */
  onCut?: (cut: CheckedCut) => void;
}

export interface CheckedCut {
  mode: SnapshotMode;
  index: number;
  /** The snapshot (all of its parts) completed and was checked. */
  completed: boolean;
  /**
   * The groupsnap snapshots the cut is made of (`group`: one; `naive-vm`: one per VM), each restorable with
   * `restoreGroup` under its ad hoc group name. None for `naive-disk` (not catalogued).
   */
  snapshots?: { group: string; snapshotId: string }[];
  error?: string;
  report?: CutReport;
  /** Start of the first snapshot call to end of the last one. */
  snapshotMs: number;
  /** groupsnap's per-VM freeze, where it paused. */
  freezeMs?: number[];
}

export interface ModeSummary {
  mode: SnapshotMode;
  attempted: number;
  checked: number;
  failedSnapshots: number;
  /** Cuts with at least one violation. */
  violatingCuts: number;
  /**
   * Consistent cuts that caught the workload between two dependent writes (a VM's A ahead of its B, or the writer
   * ahead of the acker): evidence that the cuts land anywhere in the loop, not only at quiet points.
   */
  midStepCuts: number;
  /** Per invariant, the cuts that violate it. */
  byInvariant: Record<string, number>;
  /** Workload steps (the acker's acknowledgements) made while this mode ran. */
  steps: number;
  elapsedMs: number;
  cuts: CheckedCut[];
}

let overlaySeq = 0;

/** Takes one snapshot; returns the cut to check (its images) or why it was not taken. */
async function snapshotOnce(o: ModeOptions, index: number): Promise<{ cut: CheckedCut; vms?: CutVm[] }> {
  const { pair } = o;
  const t0 = performance.now();
  const cut: CutVm[] = [];
  const freezeMs: number[] = [];
  const snapshots: { group: string; snapshotId: string }[] = [];
  const fail = (error: string) => ({
    cut: { mode: o.mode, index, completed: false, error, snapshotMs: performance.now() - t0 },
  });
  if (o.mode === 'group' || o.mode === 'naive-vm') {
    if (!o.client || !o.hosts) throw new Error(`mode ${o.mode} needs a client and hosts`);
    const refs = [
      { domain: pair.writer.name, host: o.hosts.writer },
      { domain: pair.acker.name, host: o.hosts.acker },
    ];
    const calls = o.mode === 'group' ? [refs] : refs.map((r) => [r]);
    for (const [k, vms] of calls.entries()) {
      if (k > 0 && o.gapMs) await new Promise((r) => setTimeout(r, o.gapMs));
      const result = await snapshotGroup(o.client, { group: `consistency-${o.mode}`, vms });
      if (result.status !== 'completed') return fail(result.error ?? 'snapshot failed');
      snapshots.push({ group: result.group, snapshotId: result.snapshotId });
      for (const vm of result.vms) {
        if (vm.freezeMs !== undefined) freezeMs.push(vm.freezeMs);
        cut.push({
          domain: vm.domain,
          role: pair.vms.find((v) => v.name === vm.domain)!.role,
          disks: vm.disks.map((d) => ({ target: d.target, image: d.image })),
        });
      }
    }
  } else {
    if (!o.hypervisor) throw new Error('mode naive-disk needs a hypervisor');
    for (const vm of pair.vms) {
      const desc = await o.hypervisor.describe(vm.name);
      const entry: CutVm = { domain: vm.name, role: vm.role, disks: [] };
      for (const disk of desc.disks) {
        const file = join(pair.dir, `${vm.role}.${disk.target}.naive-${process.pid}-${++overlaySeq}.qcow2`);
        const others = desc.disks.filter((d) => d.target !== disk.target).map((d) => d.target);
        if (entry.disks.length + cut.length > 0 && o.gapMs) await new Promise((r) => setTimeout(r, o.gapMs));
        await o.hypervisor.snapshotDisks(vm.name, [{ target: disk.target, file }], others);
        entry.disks.push({ target: disk.target, image: disk.source! });
      }
      cut.push(entry);
    }
  }
  const snapshotMs = performance.now() - t0;
  const cutInfo: CheckedCut = { mode: o.mode, index, completed: true, snapshotMs, freezeMs };
  if (snapshots.length > 0) cutInfo.snapshots = snapshots;
  return { cut: cutInfo, vms: cut };
}

function isMidStep(r: CutReport): boolean {
  const n = (vm: CutReport['vms'][number], target: string) => vm.disks.find((d) => d.target === target)?.n;
  return r.vms.some((vm) => n(vm, 'vda') !== n(vm, 'vdb')) || r.written !== r.acked;
}

/** Takes `count` snapshots of the running pair in one mode, checking each cut right after it is taken. */
export async function runMode(o: ModeOptions): Promise<ModeSummary> {
  const t0 = performance.now();
  const relay = o.pair.relay!;
  const from = relay.lastAcked;
  const summary: ModeSummary = {
    mode: o.mode,
    attempted: 0,
    checked: 0,
    failedSnapshots: 0,
    violatingCuts: 0,
    midStepCuts: 0,
    byInvariant: {},
    steps: 0,
    elapsedMs: 0,
    cuts: [],
  };
  const record = (cut: CheckedCut) => {
    summary.attempted++;
    summary.cuts.push(cut);
    if (!cut.completed) summary.failedSnapshots++;
    else {
      summary.checked++;
      const v = cut.report!.violations;
      if (v.length) summary.violatingCuts++;
      else if (isMidStep(cut.report!)) summary.midStepCuts++;
      for (const inv of new Set(v.map((x) => x.invariant)))
        summary.byInvariant[inv] = (summary.byInvariant[inv] ?? 0) + 1;
    }
    o.onCut?.(cut);
  };
  // Each cut is checked while the workload moves on to the next one (one check in flight at a time).
  let checking: Promise<void> = Promise.resolve();
  let checkError: unknown;
  for (let i = 0; i < o.count; i++) {
    // The workload must be running, and have moved on since the last cut.
    await o.pair.waitForSteps(relay.lastAcked + (o.stepsBetween ?? 2), 60_000);
    const taken = await snapshotOnce(o, i);
    await checking;
    if (checkError) throw checkError;
    checking = (async () => {
      if (taken.vms) taken.cut.report = await checkCut(taken.vms);
      record(taken.cut);
    })().catch((err: unknown) => {
      checkError = err;
    });
  }
  await checking;
  if (checkError) throw checkError;
  summary.steps = relay.lastAcked - from;
  summary.elapsedMs = performance.now() - t0;
  return summary;
}

/** `group: 20 snapshots checked, 0 with violations (...)` */
export function formatSummary(s: ModeSummary): string {
  const inv = Object.entries(s.byInvariant)
    .map(([k, n]) => `${k} x${n}`)
    .join(', ');
  return (
    `${s.mode}: ${s.checked} snapshot(s) checked, ${s.violatingCuts} with violations` +
    `${s.midStepCuts ? ` (${s.midStepCuts} consistent cuts caught mid-step)` : ''}` +
    `${inv ? ` (${inv})` : ''}, ${s.failedSnapshots} failed to take, ${s.steps} workload steps` +
    `, ${(s.elapsedMs / 1000).toFixed(1)} s`
  );
}

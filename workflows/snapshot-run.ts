/**
 * The state of one group snapshot run: its input, what each phase learned (plans, freeze reports, resume times),
 * the per-VM results, the live progress shown in the Temporal UI and the cross-host barrier. The phases in
 * snapshot-phases.ts read and change it; the saga in group-snapshot.ts strings them together.
 */
import {
  condition,
  defineQuery,
  defineSignal,
  defineUpdate,
  log,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { FreezeRequest, FreezeVmReport, PlannedVm } from '../common/host-types';
import { formatSnapshotId, HOST_ARMED_UPDATE, HOST_FROZEN_UPDATE, HOST_PAUSED_SIGNAL } from '../common/names';
import {
  GroupsnapGroup,
  GroupsnapMaxFreezeMs,
  GroupsnapSnapshotId,
  GroupsnapVmCount,
} from '../common/search-attributes';
import type { GroupSnapshotResult, ResumeWhen, SnapshotPhase, SnapshotProgress, VmResult } from '../common/types';
import type { NormalizedSnapshotInput } from '../common/validation';
import { DetailsBatcher, progressDetails } from './ui';

export const progressQuery = defineQuery<SnapshotProgress>('progress');

/**
 * The cross-host barrier: each host's freeze, once its VMs are paused and snapshotted, calls this update and waits
 * in it; all calls return together, `true` when every host has reported (release) or `false` (abort).
 */
export const hostFrozenUpdate = defineUpdate<boolean, [string]>(HOST_FROZEN_UPDATE);

/**
 * The armed barrier (docs/adr/0014): each host's freeze, planned again and ready to pause, calls this update and waits
 * for the group's go (true, once every host is ready) or abort (false) before it pauses anything.
 */
export const hostArmedUpdate = defineUpdate<boolean, [string]>(HOST_ARMED_UPDATE);

/**
 * The barrier above `updateBarrierMaxHosts` hosts in the `group-paused` order: each host's freeze signals once its
 * VMs are paused; the workflow then releases every host with its `releaseFreeze` activity.
 */
export const hostPausedSignal = defineSignal<[string]>(HOST_PAUSED_SIGNAL);

export class SnapshotRun {
  readonly snapshotId: string;
  /** Leases belong to this run, never to a name a caller chose: two runs given the same snapshot id stay apart. */
  readonly leaseOwner = workflowInfo().runId;
  readonly hosts: string[];
  readonly byHost: Map<string, string[]>;
  readonly vmResults: VmResult[];
  readonly progress: SnapshotProgress;
  readonly plans = new Map<string, PlannedVm[]>();
  readonly freezeReports = new Map<string, FreezeVmReport[]>();
  /** Hosts whose leases were asked for (released at the end, whatever happened). */
  readonly leasedHosts: string[] = [];
  /** Hosts whose freeze was started: compensation resumes and undoes there. */
  freezeStartedOn: string[] = [];
  /** Settles when every freeze activity has ended. */
  freezesSettled: Promise<unknown> = Promise.resolve();
  /** Host wall-clock times of each VM's pause and resume, keyed `domain@host`. */
  readonly times = new Map<string, { pausedAtMs: number; resumedAtMs?: number }>();
  barrier: 'waiting' | 'release' | 'abort' = 'waiting';
  readonly frozenHosts = new Set<string>();
  /** Hosts ready to pause (the armed barrier), and the group's go once all are (false: aborted before it). */
  readonly armedHosts = new Set<string>();
  go: boolean | undefined;
  /** Hosts whose `hostPaused` signal arrived (the `signal` barrier). */
  readonly pausedHosts = new Set<string>();
  /** How the hosts are released (set by the freeze). */
  release: FreezeRequest['release'] | undefined;
  createdAt: string | undefined;
  /** The release order of this run (set by the freeze). */
  resumeWhen: ResumeWhen | undefined;
  /** A sharded freeze (snapshot-shards.ts): tells every shard to abort; set while its shards run. */
  abortShards: (() => Promise<void>) | undefined;
  /** Per-VM results and progress rows by `domain@host` (lookups in O(1): groups of thousands of VMs). */
  private readonly resultsByVm: Map<string, VmResult>;
  private readonly progressByVm: Map<string, SnapshotProgress['vms'][number]>;
  private readonly details = new DetailsBatcher(() => setCurrentDetails(progressDetails(this.progress)));
  /** Saga compensations, run newest first when a later step fails. */
  readonly compensations: (() => Promise<void>)[] = [];

  constructor(readonly input: NormalizedSnapshotInput) {
    this.snapshotId = input.snapshotId ?? formatSnapshotId(new Date(workflowInfo().startTime), uuid4().slice(0, 6));
    this.hosts = [...new Set(input.vms.map((v) => v.host))].sort();
    this.byHost = new Map(this.hosts.map((h) => [h, input.vms.filter((v) => v.host === h).map((v) => v.domain)]));
    this.vmResults = input.vms.map((v) => ({ ...v, outcome: 'not-snapshotted', pausedByUs: false, disks: [] }));
    this.progress = {
      phase: 'planning',
      snapshotId: this.snapshotId,
      vms: input.vms.map((v) => ({ ...v, state: 'pending' })),
    };
    this.resultsByVm = new Map(this.vmResults.map((v) => [`${v.domain}@${v.host}`, v]));
    this.progressByVm = new Map(this.progress.vms.map((v) => [`${v.domain}@${v.host}`, v]));
  }

  /** Query and update handlers, search attributes and the first "current details". */
  register(): void {
    setHandler(progressQuery, () => this.progress, {
      description: 'Phase of the group snapshot and the state of each VM',
    });
    this.show();
    setHandler(
      hostFrozenUpdate,
      async (h) => {
        this.frozenHosts.add(h);
        await condition(() => this.barrier !== 'waiting');
        return this.barrier === 'release';
      },
      {
        description:
          "A host's freeze reports its VMs paused (snapshotted, in the old order) and waits for the group's release (true) or abort",
        validator: (h) => {
          if (!this.hosts.includes(h)) throw new Error(`host ${h} is not part of this snapshot`);
        },
      },
    );
    setHandler(
      hostArmedUpdate,
      async (h) => {
        this.armedHosts.add(h);
        await condition(() => this.go !== undefined || this.barrier === 'abort');
        return this.go === true && this.barrier !== 'abort';
      },
      {
        description: "A host's freeze reports itself ready to pause and waits for the group's go (true) or abort",
        validator: (h) => {
          if (!this.hosts.includes(h)) throw new Error(`host ${h} is not part of this snapshot`);
        },
      },
    );
    setHandler(
      hostPausedSignal,
      (h) => {
        if (this.hosts.includes(h)) this.pausedHosts.add(h);
        else log.warn('hostPaused signal from a host not in this snapshot', { host: h });
      },
      { description: "A host's freeze reports its VMs paused (groups over updateBarrierMaxHosts hosts)" },
    );
    upsertSearchAttributes([
      { key: GroupsnapGroup, value: this.input.group },
      { key: GroupsnapSnapshotId, value: this.snapshotId },
      { key: GroupsnapVmCount, value: this.input.vms.length },
      { key: GroupsnapMaxFreezeMs, value: this.input.maxFreezeMs },
    ]);
  }

  domains(h: string): string[] {
    return this.byHost.get(h)!;
  }

  vm(h: string, domain: string): VmResult {
    return this.resultsByVm.get(`${domain}@${h}`)!;
  }

  /** The live "current details" in the Temporal UI: phase and per-VM progress (and the result once known). */
  show(final?: GroupSnapshotResult): void {
    this.details.now(() => setCurrentDetails(progressDetails(this.progress, final)));
  }

  setPhase(phase: SnapshotPhase): void {
    this.progress.phase = phase;
    this.show();
    log.info('group snapshot phase', { snapshotId: this.snapshotId, phase });
  }

  markVm(h: string, domain: string, state: SnapshotProgress['vms'][number]['state']): void {
    const vm = this.progressByVm.get(`${domain}@${h}`);
    if (vm && vm.state !== state) {
      vm.state = state;
      // Once for every VM marked in this activation, not once per VM (O(VMs^2) at hundreds of hosts).
      this.details.request();
    }
  }

  /** Records a VM's pause and resume times (from a freeze or thaw report). */
  applyResume(
    h: string,
    r: { domain: string; pausedAtMs?: number; resumedAtMs?: number; resumedByGuard?: boolean },
  ): void {
    const vm = this.vm(h, r.domain);
    if (r.resumedAtMs !== undefined) vm.resumedAtMs = r.resumedAtMs;
    if (r.pausedAtMs !== undefined)
      this.times.set(`${r.domain}@${h}`, { pausedAtMs: r.pausedAtMs, resumedAtMs: r.resumedAtMs });
    if (r.pausedAtMs !== undefined && r.resumedAtMs !== undefined) vm.freezeMs = round(r.resumedAtMs - r.pausedAtMs);
    if (r.resumedByGuard) vm.resumedByGuard = true;
  }

  /** When the last VM this run paused was paused (host clocks), once every VM's pause is known. */
  get allPausedAtMs(): number | undefined {
    const paused = this.vmResults.filter((v) => v.pausedByUs && v.pausedAtMs !== undefined);
    return paused.length > 0 ? Math.max(...paused.map((v) => v.pausedAtMs!)) : undefined;
  }

  /** The run's result as it stands, shown in the UI. */
  result(status: GroupSnapshotResult['status'], error?: string): GroupSnapshotResult {
    const spans = [...this.times.values()];
    const ends = spans.map((t) => t.resumedAtMs).filter((t): t is number => t !== undefined);
    const res: GroupSnapshotResult = {
      snapshotId: this.snapshotId,
      workflowId: workflowInfo().workflowId,
      group: this.input.group,
      ...(this.input.label !== undefined ? { label: this.input.label } : {}),
      status,
      ...(this.createdAt ? { createdAt: this.createdAt } : {}),
      ...(this.resumeWhen ? { resumeWhen: this.resumeWhen } : {}),
      ...(this.allPausedAtMs !== undefined ? { allPausedAtMs: this.allPausedAtMs } : {}),
      groupFreezeMs: ends.length ? round(Math.max(...ends) - Math.min(...spans.map((t) => t.pausedAtMs))) : 0,
      maxVmFreezeMs: Math.max(0, ...this.vmResults.map((v) => v.freezeMs ?? 0)),
      vms: this.vmResults,
      ...(error ? { error } : {}),
    };
    this.show(res);
    return res;
  }
}

export function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

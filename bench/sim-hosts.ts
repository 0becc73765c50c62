/**
 * Simulated hypervisor hosts for the cross-host barrier benchmarks (bench/freeze.ts, bench/cluster.ts): many fake
 * hosts in one process, each its own Worker on its own task queue (`groupsnap-host/<host>`) over groupsnap's host
 * plugin, all sharing one NativeConnection and the process's one Temporal runtime, with one activity poller each.
 * A simulated host then costs its Temporal traffic and little else, so 256 of them fit on a 2-core machine beside
 * the Temporal server. Pause, snapshot and resume latencies are drawn around a real VM's figures (jitter 0.8-1.2x).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import type { Client } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { nowMs } from '../activities/clock';
import { snapshotGroup, waitForHostWorkers } from '../client';
import type { GroupSnapshotInput, VmRef } from '../common/types';
import { FakeHypervisor } from '../hypervisor/fake-hypervisor';
import { groupsnapHostPlugin } from '../worker/plugins';
import type { Sample } from './sample';

/** Per-VM latencies of the simulated hosts, ms (each call drawn 0.8-1.2x around them). */
export interface SimLatency {
  suspend: number;
  snapshot: number;
  resume: number;
}

export interface SimHosts {
  hostIds: string[];
  vms: VmRef[];
  stop(): Promise<void>;
}

/** Hosts started at once while setting up (each registers itself and reads its state dir). */
const START_BATCH = 16;

/**
 * Starts `count` simulated hosts of `vmsPerHost` VMs (2 disks each) against the server at `address`, in this
 * process, over one connection. Their state dirs live under `/tmp/groupsnap-bench-sim-<tag>` (removed by `stop`).
 */
export async function startSimHosts(options: {
  address: string;
  namespace?: string;
  count: number;
  vmsPerHost?: number;
  latency: SimLatency;
  tag: string;
}): Promise<SimHosts> {
  const { count, latency, tag } = options;
  const vmsPerHost = options.vmsPerHost ?? 8;
  const namespace = options.namespace ?? 'default';
  const stateRoot = `/tmp/groupsnap-bench-sim-${tag}`;
  // A crashed earlier run's journal and leases must not block this one (issue 29: a lock left behind).
  rmSync(stateRoot, { recursive: true, force: true });
  const jitter = (ms: number) => () => Math.max(0.5, ms * (0.8 + 0.4 * Math.random()));
  const connection = await NativeConnection.connect({ address: options.address });
  const workers: Worker[] = [];
  const runs: Promise<void>[] = [];
  const vms: VmRef[] = [];
  const hostIds = Array.from({ length: count }, (_, h) => `sim${tag}-${h}`);
  const startOne = async (hostId: string) => {
    const fake = new FakeHypervisor({
      touchFiles: false,
      latencyMs: {
        suspend: jitter(latency.suspend),
        snapshot: jitter(latency.snapshot),
        resume: jitter(latency.resume),
      },
    });
    for (let v = 0; v < vmsPerHost; v++) {
      const domain = `vm${v}`;
      fake.addDomain({
        name: domain,
        state: 'running',
        disks: ['vda', 'vdb'].map((target) => ({
          target,
          format: 'qcow2',
          type: 'file',
          device: 'disk',
          // Each host's images in a directory of its own, as on separate machines (overlays are made beside them).
          chain: [`${stateRoot}/${hostId}-images/${domain}-${target}.qcow2`],
        })),
      });
      vms.push({ domain, host: hostId });
    }
    mkdirSync(`${stateRoot}/${hostId}`, { recursive: true });
    mkdirSync(`${stateRoot}/${hostId}-images`, { recursive: true });
    const plugin = groupsnapHostPlugin({ hostId, hypervisor: fake, stateDir: `${stateRoot}/${hostId}` });
    const worker = await Worker.create({
      connection,
      namespace,
      taskQueue: plugin.taskQueue,
      plugins: [plugin],
      // One long poll per host is enough: the poller polls again as soon as a task is taken, while slots are free.
      // (Through the poller behavior: SDK 1.24 ignores `maxConcurrentActivityTaskPolls`.)
      activityTaskPollerBehavior: { type: 'simple-maximum', maximum: 1 },
    });
    workers.push(worker);
    runs.push(worker.run());
  };
  try {
    for (let i = 0; i < hostIds.length; i += START_BATCH)
      await Promise.all(hostIds.slice(i, i + START_BATCH).map(startOne));
  } catch (err) {
    await stopAll(workers, runs, connection, stateRoot);
    throw err;
  }
  return { hostIds, vms, stop: () => stopAll(workers, runs, connection, stateRoot) };
}

async function stopAll(workers: Worker[], runs: Promise<void>[], connection: NativeConnection, stateRoot: string) {
  for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
  await Promise.allSettled(runs);
  await connection.close();
  rmSync(stateRoot, { recursive: true, force: true });
}

/**
 * How a simulated group is released: `update`, one workflow's update barrier over every host (the server must allow
 * that many Updates in flight); `thaw`, thaw activities (the old order above `updateBarrierMaxHosts`); `sharded`,
 * shard child workflows of 8 hosts, each with its own update barrier (docs/adr/0014). Both are armed (no host pauses
 * before every host is ready); `-unarmed` pauses each host as soon as its freeze starts, as before the armed barrier.
 */
export type SimBarrier = 'update' | 'thaw' | 'sharded' | 'update-unarmed' | 'sharded-unarmed';

/** The snapshot options that select `barrier`. */
export function barrierOptions(barrier: SimBarrier): Partial<GroupSnapshotInput> {
  if (barrier.endsWith('-unarmed'))
    return { ...barrierOptions(barrier.replace('-unarmed', '') as SimBarrier), armedBarrier: false };
  if (barrier === 'update') return { updateBarrierMaxHosts: 10_000, shardAboveHosts: 100_000 };
  if (barrier === 'thaw') return { updateBarrierMaxHosts: 0, shardAboveHosts: 100_000 };
  return { shardAboveHosts: 1, shardHosts: 8 };
}

/** One simulated group snapshot: completed or not, with what Temporal kept of it. */
export interface SimRun {
  hosts: number;
  barrier: SimBarrier;
  resumeWhen: string;
  round: number;
  completed: boolean;
  error?: string;
  endToEndMs: number;
  /** 1-minute load average when the run started. */
  load1: number;
  /** The group's workflow: history events and bytes, and its result's size as JSON. */
  historyEvents?: number;
  historyBytes?: number;
  resultBytes?: number;
  /** Workflow tasks of the group's workflow that failed or timed out (e.g. an activation past the SDK's 5 s). */
  workflowTaskProblems?: number;
  /** What went wrong in Temporal (distinct): workflow task failures and timeouts, activity timeouts (shards too). */
  problems?: string[];
  /** Its first shard, for a sharded run. */
  shardHistoryEvents?: number;
  shardHistoryBytes?: number;
}

/**
 * `rounds` simulated group snapshots of every kind, interleaved; per VM samples of completed runs go to `samples`,
 * every run (failed ones too, with their error) to the returned list. Never throws on a failed run.
 */
export async function simRounds(
  client: Client,
  sim: SimHosts,
  kinds: { barrier: SimBarrier; resumeWhen: 'group-paused' | 'group-snapshotted' }[],
  rounds: number,
  samples: Sample[],
  maxFreezeMs?: number,
  /** Called after every run with it and its samples. */
  onRun?: (run: SimRun, samples: Sample[]) => void,
): Promise<SimRun[]> {
  const out: SimRun[] = [];
  await waitForHostWorkers(client, sim.hostIds, 300_000);
  const hosts = sim.hostIds.length;
  for (let n = 0; n < rounds * kinds.length; n++) {
    const round = Math.floor(n / kinds.length);
    const { barrier, resumeWhen } = kinds[(n + round) % kinds.length];
    const load1 = loadavg()[0];
    const t0 = nowMs();
    const run: SimRun = { hosts, barrier, resumeWhen, round, completed: false, endToEndMs: 0, load1 };
    const from = samples.length;
    try {
      const result = await snapshotGroup(client, {
        group: 'sim',
        vms: sim.vms,
        resumeWhen,
        ...barrierOptions(barrier),
        ...(maxFreezeMs !== undefined ? { maxFreezeMs } : {}),
      });
      run.endToEndMs = nowMs() - t0;
      run.completed = result.status === 'completed';
      if (!run.completed) run.error = result.error;
      run.resultBytes = Buffer.byteLength(JSON.stringify(result));
      await describeHistories(client, result.workflowId, barrier, run);
      if (run.completed) {
        for (const v of result.vms) {
          samples.push({
            config: 'hosts',
            hosts,
            barrier,
            resumeWhen,
            contender: 'groupsnap',
            round,
            vm: `${v.domain}@${v.host}`,
            freezeMs: v.freezeMs!,
            endToEndMs: run.endToEndMs,
            load1,
          });
        }
      }
    } catch (err) {
      run.endToEndMs = nowMs() - t0;
      run.error = (err as Error).message;
    }
    out.push(run);
    onRun?.(run, samples.slice(from));
    console.error(
      `    ${hosts} hosts ${barrier}/${resumeWhen} round ${round}: ${run.completed ? 'completed' : `FAILED (${run.error?.slice(0, 300)})`} ` +
        `${Math.round(run.endToEndMs)} ms, load ${load1.toFixed(1)}, history ${run.historyEvents ?? '?'} events, ` +
        `${run.workflowTaskProblems ?? '?'} workflow tasks failed or timed out; ${JSON.stringify(run.problems ?? [])}`,
    );
  }
  return out;
}

async function describeHistories(client: Client, workflowId: string, barrier: SimBarrier, run: SimRun) {
  try {
    const d = await client.workflow.getHandle(workflowId).describe();
    run.historyEvents = d.historyLength;
    run.historyBytes = d.historySize;
    const history = await client.workflow.getHandle(workflowId).fetchHistory();
    run.workflowTaskProblems = (history.events ?? []).filter(
      (e) => e.workflowTaskFailedEventAttributes || e.workflowTaskTimedOutEventAttributes,
    ).length;
    const problems = new Set(problemsOf(history.events ?? [], 'group'));
    const children = (history.events ?? []).flatMap(
      (e) => e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId ?? [],
    );
    for (const id of children) {
      const h = await client.workflow.getHandle(id).fetchHistory();
      for (const p of problemsOf(h.events ?? [], 'shard')) problems.add(p);
    }
    if (problems.size > 0) run.problems = [...problems];
    if (barrier.startsWith('sharded')) {
      const s = await client.workflow.getHandle(`${workflowId}/shard-0`).describe();
      run.shardHistoryEvents = s.historyLength;
      run.shardHistoryBytes = s.historySize;
    }
  } catch {
    // figures, not results: a run whose history cannot be described keeps its outcome
  }
}

type HistoryEvent = NonNullable<
  Awaited<ReturnType<ReturnType<Client['workflow']['getHandle']>['fetchHistory']>>['events']
>[number];

/** Distinct problems in a history: failed or timed-out workflow tasks, timed-out activities (with their kind). */
function problemsOf(events: HistoryEvent[], where: string): string[] {
  const out: string[] = [];
  for (const e of events) {
    const f = e.workflowTaskFailedEventAttributes;
    if (f) out.push(`${where} workflow task failed: ${f.cause ?? ''} ${f.failure?.message ?? ''}`.trim());
    const t = e.workflowTaskTimedOutEventAttributes;
    if (t) out.push(`${where} workflow task timed out (${t.timeoutType ?? '?'})`);
    const a = e.activityTaskTimedOutEventAttributes;
    if (a)
      out.push(
        `${where} activity timed out: ${a.failure?.message ?? ''} ${a.failure?.timeoutFailureInfo?.timeoutType ?? ''}`,
      );
  }
  return out;
}

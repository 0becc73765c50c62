import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Client, Connection } from '@temporalio/client';
import { Context } from '@temporalio/activity';
import { groupSnapshotResult, startGroupSnapshot, waitForHostWorkers, type GroupSnapshotHandle } from '../client';
import { cutViolations } from '../common/cut';
import type { GroupSnapshotInput, GroupSnapshotResult } from '../common/types';
import { restartablePort } from '../dev/free-port';
import { startDevServer, type DevServer } from '../dev/temporal-dev-server';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { FakeHost } from './helpers/fake-hosts';
import { uniqueId } from './helpers/temporal';
import { maybeRecordHistory } from './helpers/histories';
import { serverPid } from './helpers/server-outage';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * A brief outage of the orchestrator (issue 29): the Temporal server is SIGKILLed at a phase of a group snapshot and
 * started again 2 s later on the same port and data. The hosts' freeze windows run on without it; a point the hosts
 * took with an intact cut must be kept, and one they could not take (a VM resumed by its deadline before the group
 * was released) must fail and be compensated. No VM stays paused past its deadline, whatever happens.
 */
jest.setTimeout(60_000);

type Op = 'describe' | 'suspend' | 'snapshotDisks' | 'resume';
type Phase =
  | 'as the freeze plans again, before the go'
  | 'before the pause'
  | 'at the first paused VM'
  | 'during the snapshots'
  | 'after the resume';

/** Whether the caller runs inside a `freezeVms` activity (the hooks run in the activity's own context). */
function inFreeze(): boolean {
  try {
    return Context.current().info.activityType === 'freezeVms';
  } catch {
    return false;
  }
}

/** Calls of `describe`, `suspend`, `snapshotDisks` and `resume` on `inner`, with `hook` run before and after each. */
function hooked(inner: Hypervisor, hook: (op: Op, when: 'before' | 'after', domain: string) => void): Hypervisor {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      if (prop !== 'describe' && prop !== 'suspend' && prop !== 'snapshotDisks' && prop !== 'resume')
        return value.bind(target);
      return async (domain: string, ...rest: unknown[]) => {
        hook(prop, 'before', domain);
        const out = await (value as (...a: unknown[]) => Promise<unknown>).call(target, domain, ...rest);
        hook(prop, 'after', domain);
        return out;
      };
    },
  });
}

describe('orchestrator outage mid-freeze (fake hypervisors, real Temporal SIGKILLed and restarted)', () => {
  let dir: string;
  let port: number;
  let server: DevServer;
  const servers: DevServer[] = [];
  let hostA: FakeHost;
  let hostB: FakeHost;
  let hosts: RunningHosts;
  /** Per test: what the hooks do, and the pauses and resumes they saw (performance.now()). */
  let trigger: (op: Op, when: 'before' | 'after', domain: string) => void = () => {};
  let paused = new Map<string, number>();
  let resumed = new Map<string, number>();
  let longestPauseMs = 0;

  const record = (op: Op, when: 'before' | 'after', domain: string) => {
    const now = performance.now();
    if (op === 'suspend' && when === 'after') paused.set(domain, now);
    if (op === 'resume' && when === 'before' && paused.has(domain) && !resumed.has(domain)) {
      resumed.set(domain, now);
      longestPauseMs = Math.max(longestPauseMs, now - paused.get(domain)!);
    }
    trigger(op, when, domain);
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'groupsnap-outage-'));
    port = await restartablePort();
    server = await startDevServer({ port, dbFilename: join(dir, 'temporal.db') });
    servers.push(server);
    const latencyMs = { suspend: 5, snapshot: 40, resume: 5 };
    hostA = new FakeHost(uniqueId('oa'), { latencyMs });
    hostB = new FakeHost(uniqueId('ob'), { latencyMs });
    hosts = await startHosts(
      [
        { hostId: hostA.hostId, hypervisor: hooked(hostA.hypervisor, record) },
        { hostId: hostB.hostId, hypervisor: hooked(hostB.hypervisor, record) },
      ],
      { address: server.address },
    );
  }, 120_000);

  afterAll(async () => {
    await hosts?.stop();
    for (const s of servers) await s.stop().catch(() => undefined);
    hostA?.cleanup();
    hostB?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  /** SIGKILLs the server now and starts it again on the same port and data 2 s later. */
  function outage(): Promise<void> {
    process.kill(serverPid(server), 'SIGKILL');
    return (async () => {
      await new Promise((r) => setTimeout(r, 2000));
      server = await startDevServer({ port, dbFilename: join(dir, 'temporal.db') });
      servers.push(server);
    })();
  }

  /** Whether the hook at (op, when) is where `phase` begins, given the calls seen so far on the killed host. */
  function at(phase: Phase, op: Op, when: 'before' | 'after', n: { resumes: number; vms: number }): boolean {
    // The freeze's own plan under the leases: with two hosts, before this host reports itself ready for the go.
    if (phase === 'as the freeze plans again, before the go')
      return op === 'describe' && when === 'after' && inFreeze();
    if (phase === 'before the pause') return op === 'suspend' && when === 'before';
    if (phase === 'at the first paused VM') return op === 'suspend' && when === 'after';
    if (phase === 'during the snapshots') return op === 'snapshotDisks' && when === 'after';
    return op === 'resume' && when === 'after' && n.resumes === n.vms;
  }

  /**
   * Snapshots `vms` (per host) with the server killed at `phase` on `killOn`, and returns the result once the
   * restarted server has it.
   */
  async function snapshotThroughOutage(
    group: Record<string, string[]>,
    killOn: FakeHost,
    phase: Phase,
    maxFreezeMs?: number,
    options: Partial<GroupSnapshotInput> = {},
  ): Promise<GroupSnapshotResult> {
    paused = new Map();
    resumed = new Map();
    longestPauseMs = 0;
    let restarted: Promise<void> | undefined;
    const killVms = new Set(group[killOn.hostId]);
    const n = { resumes: 0, vms: killVms.size };
    trigger = (op, when, domain) => {
      if (!killVms.has(domain)) return;
      if (op === 'resume' && when === 'after') n.resumes++;
      if (!restarted && at(phase, op, when, n)) restarted = outage();
    };
    const vms = Object.entries(group).flatMap(([host, domains]) => domains.map((domain) => ({ domain, host })));
    let handle: GroupSnapshotHandle;
    {
      const connection = await Connection.connect({ address: server.address });
      try {
        // After a restart, the server lists a host's pollers only once they poll it again.
        await waitForHostWorkers(new Client({ connection }), Object.keys(group));
        handle = await startGroupSnapshot(new Client({ connection }), {
          group: uniqueId('outage'),
          vms,
          ...(maxFreezeMs ? { maxFreezeMs } : {}),
          ...options,
        });
      } finally {
        await connection.close();
      }
    }
    // The outage starts from a hook on the host; wait for the server to be back, then for the result.
    for (let i = 0; i < 200 && !restarted; i++) await new Promise((r) => setTimeout(r, 50));
    expect(restarted).toBeDefined();
    await restarted;
    const connection = await Connection.connect({ address: server.address });
    try {
      const h = new Client({ connection }).workflow.getHandle(handle.workflowId);
      return await groupSnapshotResult(h as GroupSnapshotHandle);
    } finally {
      trigger = () => {};
      await connection.close();
    }
  }

  /** Saves the run's history for test/replay.test.ts (with GROUPSNAP_RECORD_HISTORIES=1). */
  async function recordHistory(result: GroupSnapshotResult, name: string): Promise<void> {
    const connection = await Connection.connect({ address: server.address });
    try {
      await maybeRecordHistory(new Client({ connection }), result.workflowId, name);
    } finally {
      await connection.close();
    }
  }

  const fakeOf = (host: string) => (host === hostA.hostId ? hostA : hostB);

  /** The point is kept, its cut holds (by the result and by the pauses and resumes the hosts really made). */
  function expectKept(result: GroupSnapshotResult): void {
    expect({ status: result.status, error: result.error }).toEqual({ status: 'completed', error: undefined });
    expect(cutViolations(result)).toEqual([]);
    const lastPause = Math.max(...paused.values());
    for (const at of resumed.values()) expect(at).toBeGreaterThanOrEqual(lastPause);
    expect(resumed.size).toBe(paused.size);
    for (const vm of result.vms) {
      expect(vm.outcome).toBe('snapshotted');
      const host = fakeOf(vm.host);
      expect(host.state(vm.domain)).toBe('running');
      for (const d of vm.disks) expect(host.chain(vm.domain, d.target)).toEqual([d.image, d.overlay]);
    }
  }

  /** Every VM ran again within its deadline. */
  function expectNoLongPause(maxFreezeMs: number): void {
    expect(resumed.size).toBe(paused.size);
    expect(longestPauseMs).toBeLessThan(maxFreezeMs + 500);
  }

  const addVms = (host: FakeHost, n: number) =>
    Array.from({ length: n }, (_, i) => {
      const vm = uniqueId(`v${i + 1}`);
      host.addVm(vm);
      return vm;
    });

  const PHASES: Phase[] = [
    'as the freeze plans again, before the go',
    'before the pause',
    'at the first paused VM',
    'during the snapshots',
    'after the resume',
  ];

  it.each(PHASES)('one host, server killed %s: the point is kept', async (phase) => {
    const vms = addVms(hostA, 3);
    const result = await snapshotThroughOutage({ [hostA.hostId]: vms }, hostA, phase);
    expectKept(result);
    expectNoLongPause(5000);
    if (phase === 'at the first paused VM') await recordHistory(result, 'completed-after-outage');
  });

  it('one host, group-snapshotted order, outage longer than the freeze deadline: the point is kept', async () => {
    const vms = addVms(hostA, 2);
    const result = await snapshotThroughOutage({ [hostA.hostId]: vms }, hostA, 'at the first paused VM', 1000, {
      resumeWhen: 'group-snapshotted',
    });
    expectKept(result);
    expectNoLongPause(1000);
    await recordHistory(result, 'completed-group-snapshotted-after-outage');
  });

  it.each(PHASES)('two hosts (barrier), server killed %s on one: the point is kept', async (phase) => {
    const a = addVms(hostA, 2);
    const b = addVms(hostB, 2);
    const result = await snapshotThroughOutage({ [hostA.hostId]: a, [hostB.hostId]: b }, hostA, phase, 15_000);
    expectKept(result);
    expectNoLongPause(15_000);
  });

  it('two hosts, a 1 s deadline through the outage: fails compensated when it resumed VMs first, never a broken cut', async () => {
    const a = addVms(hostA, 2);
    const b = addVms(hostB, 2);
    const result = await snapshotThroughOutage(
      { [hostA.hostId]: a, [hostB.hostId]: b },
      hostA,
      'at the first paused VM',
      1000,
    );
    if (result.status === 'completed') {
      // The server came back and the barrier released the group within the deadline: a whole cut, kept.
      expectKept(result);
      expectNoLongPause(1000);
      return;
    }
    expect(result.status).toBe('failed');
    // Either the workflow's deadline passed before the barrier could release the group (the hosts resumed their
    // VMs), or the barrier released it after a deadline had resumed a VM: a broken cut, never kept.
    expect(result.error).toMatch(
      /freeze deadline of 1000 ms passed before every VM was snapshotted|the freeze deadline resumed .* before the group was released/,
    );
    expectNoLongPause(1000);
    for (const vm of result.vms) {
      const host = fakeOf(vm.host);
      expect(host.state(vm.domain)).toBe('running');
      // Undone: nothing of this snapshot is left under the VM.
      expect(host.chain(vm.domain)).toHaveLength(1);
      expect(['rolled-back', 'not-snapshotted']).toContain(vm.outcome);
    }
  });
});

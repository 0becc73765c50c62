import { Client } from '@temporalio/client';
import type * as libvirt from '@groupsnap/libvirt';
import { groupSnapshotResult, startGroupSnapshot as startSnapshot, waitForHostWorkers } from '../client';
import { createGroup, createGroupSchedule, deleteGroup, describeGroupSchedule } from '../client/dr';
import type { GroupRunResult } from '../common/groups';
import { GUARD_GRACE_MS, groupSnapshotWorkflowId } from '../common/names';
import type { GroupSnapshotResult, VmRef } from '../common/types';
import { AdminConnection } from '../dev/temporal-admin';
import { startTemporalCluster, type TemporalCluster } from '../dev/temporal-cluster';
import { VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { beforeSnapshot } from './helpers/hooked-hypervisor';
import { vmsOf } from './helpers/schedules';
import { scopedHypervisor } from './helpers/scoped-hypervisor';
import { uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

const MAX_FREEZE_MS = 3_000;
// How late past its deadline a VM may be resumed on this loaded 2-core machine: the host's own timer resumes it at
// the deadline (the guard GUARD_GRACE_MS later); what must never happen is a VM left paused while Temporal
// recovers, which takes far longer than this.
const LATE_SLACK_MS = 2_750;

/** Every pause of every VM, from QEMU's lifecycle events (suspended to resumed), as libvirt reports them. */
class PauseLog {
  private open = new Map<string, number>();
  readonly pauses: { vm: string; ms: number }[] = [];

  on(e: libvirt.LifecycleEvent): void {
    if (e.event === 'suspended') this.open.set(e.name, e.timestampMs);
    if (e.event === 'resumed' && this.open.has(e.name)) {
      this.pauses.push({ vm: e.name, ms: e.timestampMs - this.open.get(e.name)! });
      this.open.delete(e.name);
    }
  }

  /** VMs paused now (suspended without a resume since). */
  stillPaused(): string[] {
    return [...this.open.keys()];
  }

  reset(): void {
    this.pauses.length = 0;
  }
}

/**
 * groupsnap on a production-shaped Temporal: two `temporal-server` processes (every service in each) forming one
 * cluster over one PostgreSQL, behind a TCP load balancer, built and configured like docker-compose.yml; two host
 * workers with real libvirtd + QEMU VMs. Crashes a server process and restarts PostgreSQL in the middle of a freeze.
 */
describe('groupsnap on a two-process Temporal cluster over PostgreSQL', () => {
  let cluster: TemporalCluster;
  let connection: AdminConnection;
  let client: Client;
  let fleetA: VmFleet;
  let fleetB: VmFleet;
  let hosts: RunningHosts;
  const hypervisors: LibvirtHypervisor[] = [];
  const pauses = new PauseLog();
  let unlisten: (() => Promise<void>) | undefined;
  let hook: ((domain: string) => Promise<void>) | undefined;
  const hostA = uniqueId('cla');
  const hostB = uniqueId('clb');
  const prefixA = uniqueId('gscla');
  const prefixB = uniqueId('gsclb');

  const members = (): VmRef[] => [
    ...fleetA.names.map((domain) => ({ domain, host: hostA })),
    ...fleetB.names.map((domain) => ({ domain, host: hostB })),
  ];
  const conn = () => fleetA.conn;
  // Matching keeps a task queue's pollers in the memory of the process that owns the queue; when ownership moves
  // (a process joins, leaves or restarts), the new owner lists the pollers only once they poll again. Wait for them
  // before each snapshot, as the CLI's own start check would otherwise reject it.
  const startGroupSnapshot: typeof startSnapshot = async (c, input) => {
    await waitForHostWorkers(c, [hostA, hostB], 120_000);
    return startSnapshot(c, input);
  };
  const state = async (vm: string) => (await (await conn().lookupByName(vm)).state()).state;
  const sources = async (vm: string) =>
    Object.fromEntries(
      parseDomainXml(await (await conn().lookupByName(vm)).xml()).disks.map((d) => [d.target, d.source]),
    );
  const allSources = async () =>
    Object.fromEntries(await Promise.all(members().map(async (m) => [m.domain, await sources(m.domain)] as const)));

  /** The run either completed (every VM in it, on its overlays) or failed and was undone (chains as before). */
  const expectCompletedOrCompensated = async (
    result: GroupSnapshotResult,
    before: Record<string, Record<string, string | undefined>>,
  ) => {
    expect(['completed', 'failed']).toContain(result.status);
    for (const vm of result.vms) {
      expect(await state(vm.domain)).toBe('running');
      const now = await sources(vm.domain);
      if (result.status === 'completed') {
        expect(vm.outcome).toBe('snapshotted');
        for (const d of vm.disks) expect(now[d.target]).toBe(d.overlay);
      } else {
        expect(['rolled-back', 'not-snapshotted']).toContain(vm.outcome);
        expect(now).toEqual(before[vm.domain]);
      }
    }
  };

  /** No VM is paused now, and none was paused longer than its bound. */
  const expectNoPausePastBound = () => {
    expect(pauses.stillPaused()).toEqual([]);
    for (const p of pauses.pauses) {
      expect({ vm: p.vm, late: p.ms > MAX_FREEZE_MS + GUARD_GRACE_MS + LATE_SLACK_MS }).toEqual({
        vm: p.vm,
        late: false,
      });
    }
  };

  const snapshotWithHook = async (
    tag: string,
    onFirstSnapshot: (workflowId: string) => Promise<void>,
  ): Promise<GroupSnapshotResult> => {
    const group = uniqueId(tag);
    const snapshotId = uniqueId('s');
    const workflowId = groupSnapshotWorkflowId(group, snapshotId);
    let fired = false;
    hook = async () => {
      if (fired) return;
      fired = true;
      await onFirstSnapshot(workflowId);
    };
    const t0 = Date.now();
    try {
      const handle = await startGroupSnapshot(client, {
        group,
        snapshotId,
        vms: members(),
        maxFreezeMs: MAX_FREEZE_MS,
      });
      expect(handle.workflowId).toBe(workflowId);
      const result = await groupSnapshotResult(handle);
      expect(fired).toBe(true);
      const longest = Math.max(...pauses.pauses.map((p) => p.ms));
      console.info(
        `${tag}: ${result.status} in ${Date.now() - t0} ms; longest pause ${longest.toFixed(0)} ms; ` +
          result.vms.map((v) => `${v.domain}:${v.outcome}${v.resumedByGuard ? '(guard)' : ''}`).join(' '),
      );
      return result;
    } finally {
      hook = undefined;
    }
  };

  beforeAll(async () => {
    cluster = await startTemporalCluster();
    connection = await AdminConnection.connect({ address: cluster.address });
    client = new Client({ connection, namespace: cluster.namespace });
    [fleetA, fleetB] = await Promise.all([
      VmFleet.create({ prefix: prefixA, count: 2 }),
      VmFleet.create({ prefix: prefixB, count: 2 }),
    ]);
    unlisten = await fleetA.conn.onLifecycle((e) => pauses.on(e));
    const open = async (prefix: string) => {
      const h = await LibvirtHypervisor.open('qemu:///system');
      hypervisors.push(h);
      return beforeSnapshot(scopedHypervisor(h, prefix), async (domain) => hook?.(domain));
    };
    hosts = await startHosts(
      [
        { hostId: hostA, hypervisor: await open(prefixA) },
        { hostId: hostB, hypervisor: await open(prefixB) },
      ],
      { address: cluster.address, namespace: cluster.namespace },
    );
  }, 600_000);

  afterAll(async () => {
    await hosts?.stop();
    await unlisten?.();
    for (const h of hypervisors) await h.close();
    await fleetA?.destroy();
    await fleetB?.destroy();
    await connection?.close();
    await cluster?.stop();
  }, 120_000);

  beforeEach(() => pauses.reset());

  it('snapshots a group over two host workers; both server processes serve the cluster; search attributes on SQL visibility', async () => {
    const group = uniqueId('multi');
    const handle = await startGroupSnapshot(client, { group, vms: members() });
    const result = await groupSnapshotResult(handle);
    expect(result.status).toBe('completed');
    expect(new Set(result.vms.map((v) => v.host))).toEqual(new Set([hostA, hostB]));
    for (const vm of result.vms) {
      expect(vm).toMatchObject({ outcome: 'snapshotted', pausedByUs: true, state: 'running' });
      expect(await state(vm.domain)).toBe('running');
      const now = await sources(vm.domain);
      for (const d of vm.disks) expect(now[d.target]).toBe(d.overlay);
    }
    expectNoPausePastBound();
    // The workflow lives on a history shard owned by one of the two processes.
    const placement = await connection.describeWorkflowPlacement(cluster.namespace, handle.workflowId);
    expect(cluster.servers.map((s) => s.historyAddress)).toContain(placement.historyAddress);
    // The balancer has handed connections to both frontends.
    expect(Object.keys(cluster.balancer.connections).sort()).toEqual(
      cluster.servers.map((s) => s.frontendAddress).sort(),
    );
    // groupsnap's search attributes work on PostgreSQL visibility (created by deploy/create-namespace.sh).
    const query = `GroupsnapGroup = "${group}" AND GroupsnapVmCount = ${members().length}`;
    let found: string[] = [];
    for (let i = 0; i < 100 && found.length === 0; i++) {
      found = [];
      for await (const wf of client.workflow.list({ query })) found.push(wf.workflowId);
      if (found.length === 0) await new Promise((r) => setTimeout(r, 200));
    }
    expect(found).toEqual([handle.workflowId]);
  });

  it('kill -9 of the server process that owns the workflow mid-freeze: the group completes or is compensated, no VM stays paused past its bound', async () => {
    const before = await allSources();
    let killed: number | undefined;
    const result = await snapshotWithHook('kill', async (workflowId) => {
      const { historyAddress } = await connection.describeWorkflowPlacement(cluster.namespace, workflowId);
      const owner = cluster.servers.find((s) => s.historyAddress === historyAddress)!;
      killed = owner.index;
      await cluster.killServer(owner.index);
    });
    expect(killed).toBeDefined();
    expect(cluster.servers[killed!].running).toBe(false);
    await expectCompletedOrCompensated(result, before);
    expectNoPausePastBound();
    // The surviving process alone serves the next snapshot (it took over the crashed one's shards) ...
    const alone = await groupSnapshotResult(
      await startGroupSnapshot(client, { group: uniqueId('survivor'), vms: members() }),
    );
    expect(alone.status).toBe('completed');
    // ... and the crashed process comes back and joins.
    await cluster.startServer(killed!);
    const after = await groupSnapshotResult(
      await startGroupSnapshot(client, { group: uniqueId('after'), vms: members() }),
    );
    expect(after.status).toBe('completed');
  });

  it('PostgreSQL restarted mid-freeze: the group completes or is compensated, no VM stays paused past its bound', async () => {
    const before = await allSources();
    let restart: Promise<void> | undefined;
    const result = await snapshotWithHook('pg', async () => {
      // Not awaited: the freeze goes on while the database is down.
      restart = (async () => {
        await cluster.postgres.stop();
        await new Promise((r) => setTimeout(r, 3000));
        await cluster.postgres.start();
      })();
    });
    await restart;
    expect(cluster.postgres.running).toBe(true);
    await expectCompletedOrCompensated(result, before);
    expectNoPausePastBound();
    const after = await groupSnapshotResult(
      await startGroupSnapshot(client, { group: uniqueId('after'), vms: members() }),
    );
    expect(after.status).toBe('completed');
  });

  it('a group schedule keeps firing across a restart of every server process', async () => {
    const group = uniqueId('sched');
    const [a1] = fleetA.names;
    const [b1] = fleetB.names;
    await createGroup(client, { name: group, selector: vmsOf([hostA, a1], [hostB, b1]) });
    await createGroupSchedule(client, { group, cron: '@every 5s', retention: { keepLast: 2 } });
    const actions = async () => (await describeGroupSchedule(client, group)).info.recentActions;
    /** Waits for `count` runs scheduled after `since`, and returns them. */
    const waitRuns = async (since: Date, count: number, timeoutMs: number) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const got = (await actions().catch(() => [])).filter((a) => a.scheduledAt > since);
        if (got.length >= count) return got;
        if (Date.now() > deadline) throw new Error(`schedule of ${group}: ${got.length} of ${count} runs started`);
        await new Promise((r) => setTimeout(r, 500));
      }
    };
    const resultOf = (workflowId: string) => client.workflow.getHandle(workflowId).result() as Promise<GroupRunResult>;
    const [first] = await waitRuns(new Date(0), 1, 60_000);
    expect((await resultOf(first.action.workflow.workflowId)).snapshot.status).toBe('completed');
    // Every server process stops at once (kill -9); the cluster then starts again from PostgreSQL alone.
    await Promise.all(cluster.servers.map((s) => cluster.killServer(s.index)));
    await new Promise((r) => setTimeout(r, 2000));
    await cluster.startServer(0);
    await cluster.startServer(1);
    const restartedAt = new Date();
    const after = await waitRuns(restartedAt, 2, 90_000);
    for (const run of after.slice(0, 2)) {
      expect((await resultOf(run.action.workflow.workflowId)).snapshot.status).toBe('completed');
    }
    const started = (await actions()).map((a) => a.action.workflow.workflowId);
    await deleteGroup(client, group, { withSchedule: true });
    // Let the last scheduled runs finish before the VMs go away.
    for (const id of started) await resultOf(id).catch(() => undefined);
  });
});

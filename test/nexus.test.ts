import { execFileSync } from 'node:child_process';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createGroup } from '../client/dr';
import type { NexusGroupSnapshots } from '../client/nexus';
import type { GroupRunResult, RestoreResult } from '../common/groups';
import { startDevServer, type DevServer } from '../dev/temporal-dev-server';
import { temporalCliPath } from '../dev/tools';
import { VmFleet } from '../dev/vms';
import type { MigrationActivities, NexusMigrationOutcome } from '../examples/nexus-migration-workflow';
import { parseDomainXml } from '../hypervisor/domain-xml';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { failingSnapshots } from './helpers/failing-hypervisor';
import { readsMarker, writeMarker } from './helpers/markers';
import type { Outcome } from './helpers/nexus-caller-workflows';
import { uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

const CALLER_NS = 'nexus-caller';
const GROUPSNAP_NS = 'nexus-groupsnap';
const ENDPOINT = 'groupsnap-test';
const CALLER_QUEUE = 'caller-team';

/** Makes the next snapshot calls take `delay.ms` longer (the window in which a test cancels mid-freeze). */
function slowSnapshots(inner: Hypervisor, delay: { ms: number }): Hypervisor {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      if (prop !== 'snapshotDisks') return value.bind(target);
      return async (...args: unknown[]) => {
        if (delay.ms > 0) await new Promise((r) => setTimeout(r, delay.ms));
        return (value as (...a: unknown[]) => Promise<void>).apply(target, args);
      };
    },
  });
}

/**
 * groupsnap as a Nexus service, end to end: a dev server of this file's own with two namespaces, a Nexus endpoint
 * (created with the Temporal CLI) targeting groupsnap's namespace and task queue, groupsnap's worker there over real
 * libvirt + QEMU VMs, and another team's worker and workflows in the caller namespace that reach groupsnap only
 * through the endpoint.
 */
describe('groupsnap through Nexus, from another namespace (real VMs)', () => {
  let server: DevServer;
  let connection: Connection;
  let groupsnap: Client;
  let caller: Client;
  let fleet: VmFleet;
  let hypervisor: LibvirtHypervisor;
  let hosts: RunningHosts;
  let callerConnection: NativeConnection;
  let callerWorker: Worker;
  let callerRun: Promise<void>;
  const failFor = new Set<string>();
  const delay = { ms: 0 };
  const hostId = uniqueId('nxh');
  const group = uniqueId('db');
  let migration: MigrationActivities['runSchemaMigration'] = async () => {};

  const state = async (domain: string) => (await (await fleet.conn.lookupByName(domain)).state()).state;
  const activeSource = async (domain: string, target = 'vda') =>
    parseDomainXml(await (await fleet.conn.lookupByName(domain)).xml()).disks.find((d) => d.target === target)!.source!;
  /** Workflow ids of the group's workflows matching `query` in groupsnap's namespace, once there are some. */
  const listed = async (query: string): Promise<string[]> => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ids: string[] = [];
      for await (const wf of groupsnap.workflow.list({ query: `GroupsnapGroup = '${group}' AND ${query}` }))
        ids.push(wf.workflowId);
      if (ids.length > 0 || Date.now() > deadline) return ids;
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const callerWorkflow = <T>(workflowType: string, args: unknown[]) =>
    caller.workflow.execute(workflowType, {
      taskQueue: CALLER_QUEUE,
      workflowId: uniqueId(workflowType),
      args,
    }) as Promise<T>;

  beforeAll(async () => {
    server = await startDevServer({ namespaces: [CALLER_NS, GROUPSNAP_NS] });
    execFileSync(temporalCliPath(), [
      'operator',
      'nexus',
      'endpoint',
      'create',
      '--address',
      server.address,
      '--name',
      ENDPOINT,
      '--target-namespace',
      GROUPSNAP_NS,
      '--target-task-queue',
      'groupsnap',
    ]);
    connection = await Connection.connect({ address: server.address });
    groupsnap = new Client({ connection, namespace: GROUPSNAP_NS });
    caller = new Client({ connection, namespace: CALLER_NS });
    fleet = await VmFleet.create({ prefix: uniqueId('gsnx'), count: 2 });
    hypervisor = await LibvirtHypervisor.open('qemu:///system');
    hosts = await startHosts([{ hostId, hypervisor: slowSnapshots(failingSnapshots(hypervisor, failFor), delay) }], {
      address: server.address,
      namespace: GROUPSNAP_NS,
    });
    await createGroup(groupsnap, {
      name: group,
      selector: { vms: fleet.names.map((domain) => ({ domain, host: hostId })) },
    });

    // The caller team's worker: its own namespace, workflows and activities; nothing of groupsnap's.
    callerConnection = await NativeConnection.connect({ address: server.address });
    callerWorker = await Worker.create({
      connection: callerConnection,
      namespace: CALLER_NS,
      taskQueue: CALLER_QUEUE,
      workflowsPath: require.resolve('./helpers/nexus-caller-workflows'),
      activities: { runSchemaMigration: (input) => migration(input) } satisfies MigrationActivities,
    });
    callerRun = callerWorker.run();
  });

  afterAll(async () => {
    if (callerWorker?.getState() === 'RUNNING') callerWorker.shutdown();
    await callerRun;
    await callerConnection?.close();
    await hosts?.stop();
    await hypervisor?.close();
    await fleet?.destroy();
    await connection?.close();
    await server?.stop();
  });

  it('snapshots a named group for a workflow in another namespace and lists it there', async () => {
    const run = await callerWorkflow<GroupRunResult>('snapshotThroughNexus', [ENDPOINT, { group, label: 'nexus' }]);
    expect(run.group).toBe(group);
    expect(run.members.map((m) => m.domain).sort()).toEqual([...fleet.names].sort());
    expect(run.snapshot).toMatchObject({ status: 'completed', label: 'nexus', group });
    for (const vm of run.snapshot.vms) {
      expect(vm).toMatchObject({ outcome: 'snapshotted', state: 'running', host: hostId });
      expect(await state(vm.domain)).toBe('running');
      // The new overlay is the VM's active layer now.
      expect(await activeSource(vm.domain)).toBe(vm.disks.find((d) => d.target === 'vda')!.overlay);
    }
    // The run behind the operation is an ordinary groupSnapshotRun in groupsnap's namespace.
    const child = await groupsnap.workflow.getHandle(run.snapshot.workflowId).describe();
    expect(child.status.name).toBe('COMPLETED');

    const listed = await callerWorkflow<Outcome<NexusGroupSnapshots>>('tryListThroughNexus', [ENDPOINT, group]);
    expect(listed).toMatchObject({ ok: true, result: { group } });
    const snapshots = (listed as { result: NexusGroupSnapshots }).result.snapshots;
    expect(snapshots.map((s) => s.snapshotId)).toContain(run.snapshot.snapshotId);
  });

  it('fails the operation at once, not retried, saying what was wrong, for an unknown group or bad input', async () => {
    const cases: [unknown, RegExp][] = [
      [{ group: uniqueId('nope') }, /unknown group "nope-/],
      [{ group: '../etc' }, /group name "\.\.\/etc" is not safe/],
      [{ group, maxFreezeMs: 5 }, /max freeze must be an integer/],
      [{ group, label: 'has space' }, /label "has space" is not safe/],
    ];
    for (const [input, message] of cases) {
      const started = Date.now();
      const out = await callerWorkflow<Outcome<GroupRunResult>>('trySnapshotThroughNexus', [ENDPOINT, input]);
      // The operation's schedule-to-close timeout is 10 minutes: an answer within seconds means it was not retried.
      expect(Date.now() - started).toBeLessThan(20_000);
      expect(out.ok).toBe(false);
      const failures = (out as { failures: { name: string; message: string; type?: string; nonRetryable?: boolean }[] })
        .failures;
      expect(failures[0].name).toBe('NexusOperationFailure');
      expect(failures[1]).toMatchObject({ name: 'HandlerError', type: 'BAD_REQUEST', nonRetryable: true });
      expect(failures[1].message).toMatch(message);
      expect(failures.at(-1)).toMatchObject({
        name: 'ApplicationFailure',
        type: 'GroupsnapBadInput',
        nonRetryable: true,
      });
    }
    const restore = await callerWorkflow<Outcome<RestoreResult>>('tryRestoreThroughNexus', [
      ENDPOINT,
      { group, snapshotId: 'x/../y', mode: 'in-place' },
    ]);
    expect(restore.ok).toBe(false);
    expect(JSON.stringify(restore)).toMatch(/snapshot id \\"x\/..\/y\\" is not safe/);
    // An in-place restore without the explicit confirmation (the CLI's --yes) is refused too.
    const unconfirmed = await callerWorkflow<Outcome<RestoreResult>>('tryRestoreThroughNexus', [
      ENDPOINT,
      { group, snapshotId: 'gs-any', mode: 'in-place' },
    ]);
    expect(unconfirmed.ok).toBe(false);
    expect(JSON.stringify(unconfirmed)).toMatch(/confirmInPlace/);
    // Nothing was started for any of them.
    for (const vm of fleet.names) expect(await state(vm)).toBe('running');
  });

  it('fails a snapshot that failed and was compensated with the per-VM outcome in the failure', async () => {
    const [a, b] = fleet.names;
    const before = { a: await activeSource(a), b: await activeSource(b) };
    failFor.add(b);
    const out = await callerWorkflow<Outcome<GroupRunResult>>('trySnapshotThroughNexus', [ENDPOINT, { group }]);
    expect(out.ok).toBe(false);
    const [op, failure] = (out as { failures: { name: string; type?: string; details?: unknown[] }[] }).failures;
    expect(op.name).toBe('NexusOperationFailure');
    expect(failure).toMatchObject({ name: 'ApplicationFailure', type: 'GroupSnapshotFailed' });
    const result = failure.details![0] as GroupRunResult;
    expect(result.snapshot.status).toBe('failed');
    expect(result.snapshot.vms.find((v) => v.domain === a)).toMatchObject({ outcome: 'rolled-back', state: 'running' });
    expect(result.snapshot.vms.find((v) => v.domain === b)).toMatchObject({
      outcome: 'not-snapshotted',
      state: 'running',
    });
    expect(result.snapshot.vms.find((v) => v.domain === b)!.error).toContain('injected snapshot failure');
    expect(await state(a)).toBe('running');
    expect(await state(b)).toBe('running');
    expect({ a: await activeSource(a), b: await activeSource(b) }).toEqual(before);
  });

  it('cancelling the caller workflow cancels the snapshot: compensated, every VM running', async () => {
    const [a, b] = fleet.names;
    const before = { a: await activeSource(a), b: await activeSource(b) };
    delay.ms = 2500;
    try {
      const handle = await caller.workflow.start('snapshotThroughNexus', {
        taskQueue: CALLER_QUEUE,
        workflowId: uniqueId('cancel'),
        args: [ENDPOINT, { group, label: 'cancelled' }],
      });
      const deadline = Date.now() + 60_000;
      while ((await state(a)) !== 'paused' && (await state(b)) !== 'paused') {
        if (Date.now() > deadline) throw new Error('the group was never paused');
        await new Promise((r) => setTimeout(r, 50));
      }
      await handle.cancel();
      await expect(handle.result()).rejects.toThrow(WorkflowFailedError);
      expect((await handle.describe()).status.name).toBe('CANCELLED');

      // The run behind the operation, and the saga under it, ended cancelled.
      const runs = await listed(`WorkflowType = 'groupSnapshotRun' AND ExecutionStatus = 'Canceled'`);
      expect(runs).toEqual([expect.stringMatching(`^group-run/${group}/nexus-`)]);
      expect(await listed(`WorkflowType = 'groupSnapshot' AND ExecutionStatus = 'Canceled'`)).toHaveLength(1);
    } finally {
      delay.ms = 0;
    }
    expect(await state(a)).toBe('running');
    expect(await state(b)).toBe('running');
    // The cancelled snapshot was undone: the same active layers as before it.
    expect({ a: await activeSource(a), b: await activeSource(b) }).toEqual(before);
  });

  it('examples/nexus-migration-workflow: migrates after the snapshot; restores the group in place when it fails', async () => {
    const [a] = fleet.names;
    const offset = (byte: number) => (byte - 0x40) * 65536;
    const calls: string[] = [];
    migration = async ({ migration: name, snapshotId }) => {
      calls.push(`${name} after ${snapshotId}`);
    };
    const ok = await callerWorkflow<NexusMigrationOutcome>('migrateWithGroupsnap', [
      { group, migration: 'v1-add-index', endpoint: ENDPOINT },
    ]);
    expect(ok).toMatchObject({
      migrated: true,
      snapshot: { snapshot: { status: 'completed', label: 'pre-migration' } },
    });
    expect(calls).toEqual([`v1-add-index after ${ok.snapshot.snapshot.snapshotId}`]);

    // Data before the migration (0x41); the migration writes 0x42 and then fails.
    await writeMarker(a, 'vdb', 0x41, offset(0x41));
    migration = async () => {
      await writeMarker(a, 'vdb', 0x42, offset(0x42));
      throw new Error('migration v2 failed half-way');
    };
    const failed = await callerWorkflow<NexusMigrationOutcome>('migrateWithGroupsnap', [
      { group, migration: 'v2-split-table', endpoint: ENDPOINT },
    ]);
    expect(failed).toMatchObject({ migrated: false, error: 'migration v2 failed half-way' });
    expect(failed.restore).toMatchObject({
      status: 'restored',
      mode: 'in-place',
      snapshotId: failed.snapshot.snapshot.snapshotId,
    });
    for (const vm of fleet.names) expect(await state(vm)).toBe('running');
    const now = await activeSource(a, 'vdb');
    expect(await readsMarker(now, 0x41, offset(0x41))).toBe(true);
    expect(await readsMarker(now, 0x42, offset(0x42))).toBe(false);
  });
});

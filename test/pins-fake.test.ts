import { Client, Connection } from '@temporalio/client';
import { createGroup, deleteGroupSnapshot, listGroupSnapshots, restoreGroup, snapshotNamedGroup } from '../client/dr';
import { listRestoreRecords, pinGroupSnapshot, releaseRestoreRecords, unpinGroupSnapshot } from '../client/pins';
import type { GroupRunInput, GroupRunResult } from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { BadInputError } from '../common/failures';
import { parseVmMetadata } from '../common/catalog';
import { FakeHost } from './helpers/fake-hosts';
import { vmsOf } from './helpers/schedules';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * Retention keeps what users pinned (item 7 of issue 13), on fake hosts through a real Temporal server: `snapshot pin`
 * pins a snapshot on every VM that holds it; retention never plans a pinned snapshot, one with a label other than
 * the schedule's own, or one a clone or in-place restore is built on; clone and restore records can be listed and
 * released, after which their snapshots can be deleted.
 */
describe('pinned snapshots and restore records (fake hypervisors, real Temporal)', () => {
  let connection: Connection;
  let client: Client;
  let hostA: FakeHost;
  let hostB: FakeHost;
  let hosts: RunningHosts;

  beforeAll(async () => {
    const namespace = await freshNamespace('gspin');
    connection = await Connection.connect({ address: testServerAddress() });
    client = new Client({ connection, namespace });
    hostA = new FakeHost(uniqueId('pa'));
    hostB = new FakeHost(uniqueId('pb'));
    hosts = await startHosts([hostA, hostB], { namespace });
  });

  afterAll(async () => {
    await hosts?.stop();
    await connection?.close();
    hostA?.cleanup();
    hostB?.cleanup();
  });

  /** A group of one VM on each host. */
  async function twoHostGroup(prefix: string): Promise<{ name: string; a: string; b: string }> {
    const [a, b] = [uniqueId(`${prefix}a`), uniqueId(`${prefix}b`)];
    hostA.addVm(a);
    hostB.addVm(b);
    const name = uniqueId(prefix);
    await createGroup(client, { name, selector: vmsOf([hostA.hostId, a], [hostB.hostId, b]) });
    return { name, a, b };
  }

  /** One run as a schedule starts it: snapshot, then retention with the run's (the schedule's) label. */
  function scheduledRun(group: string, input: Partial<GroupRunInput>): Promise<GroupRunResult> {
    return client.workflow.execute('groupSnapshotRun', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: uniqueId(`group-run/${group}/test`),
      args: [{ group, trigger: 'schedule', ...input }],
    }) as Promise<GroupRunResult>;
  }

  const ids = async (group: string) => (await listGroupSnapshots(client, group)).map((s) => s.snapshotId);

  it('pins on every VM; a pinned snapshot is kept by retention and refused by delete until unpinned', async () => {
    const { name, a, b } = await twoHostGroup('pin');
    const s1 = (await snapshotNamedGroup(client, name)).snapshot.snapshotId;
    const pinned = await pinGroupSnapshot(client, name, s1);
    expect(pinned.vms.map((v) => [v.domain, v.changed]).sort()).toEqual(
      [
        [a, true],
        [b, true],
      ].sort(),
    );
    for (const [host, vm] of [
      [hostA, a],
      [hostB, b],
    ] as const) {
      const meta = parseVmMetadata(await host.hypervisor.getMetadata(vm));
      expect(meta.snapshots.find((s) => s.snapshotId === s1)?.pinned).toBe(true);
    }
    expect((await listGroupSnapshots(client, name)).find((s) => s.snapshotId === s1)?.pinned).toBe(true);
    // Pinning again changes nothing.
    expect((await pinGroupSnapshot(client, name, s1)).vms.every((v) => !v.changed)).toBe(true);

    await expect(deleteGroupSnapshot(client, name, s1)).rejects.toThrow(/pinned/);

    const r1 = await scheduledRun(name, { retention: { keepLast: 1 } });
    const r2 = await scheduledRun(name, { retention: { keepLast: 1 } });
    expect(r2.retention).toMatchObject({
      kept: [r2.snapshot.snapshotId],
      deleted: [r1.snapshot.snapshotId],
      failed: [],
      skipped: [{ snapshotId: s1, reason: 'pinned' }],
    });
    expect(await ids(name)).toEqual([r2.snapshot.snapshotId, s1]);

    await unpinGroupSnapshot(client, name, s1);
    const r3 = await scheduledRun(name, { retention: { keepLast: 1 } });
    expect(r3.retention).toMatchObject({ failed: [], skipped: [] });
    expect(r3.retention?.deleted.sort()).toEqual([s1, r2.snapshot.snapshotId].sort());
    expect(await ids(name)).toEqual([r3.snapshot.snapshotId]);
  });

  it("keeps snapshots whose label is not the schedule's own; deletes the schedule's own beyond the policy", async () => {
    const { name } = await twoHostGroup('lab');
    const manual = (await snapshotNamedGroup(client, name, { label: 'before-upgrade' })).snapshot.snapshotId;
    const unlabelled = (await snapshotNamedGroup(client, name)).snapshot.snapshotId;
    const h1 = await scheduledRun(name, { label: 'hourly', retention: { keepLast: 1 } });
    const h2 = await scheduledRun(name, { label: 'hourly', retention: { keepLast: 1 } });
    expect(h2.retention?.deleted).toEqual([h1.snapshot.snapshotId]);
    expect(h2.retention?.skipped?.map((s) => s.snapshotId).sort()).toEqual([manual, unlabelled].sort());
    expect(h2.retention?.skipped?.find((s) => s.snapshotId === manual)?.reason).toMatch(
      /label before-upgrade, not the schedule's hourly/,
    );
    expect((await ids(name)).sort()).toEqual([manual, unlabelled, h2.snapshot.snapshotId].sort());
    // A schedule without a label: its own snapshots are the unlabelled ones.
    const u = await scheduledRun(name, { retention: { keepLast: 1 } });
    expect(u.retention?.deleted).toEqual([unlabelled]);
    expect((await ids(name)).sort()).toEqual([manual, h2.snapshot.snapshotId, u.snapshot.snapshotId].sort());
  });

  it('skips snapshots a clone or in-place restore is built on; lists and releases the records, then deletes', async () => {
    const { name, a, b } = await twoHostGroup('rec');
    const s1 = (await snapshotNamedGroup(client, name)).snapshot;
    const s2 = (await snapshotNamedGroup(client, name)).snapshot;
    const clone = await restoreGroup(client, { group: name, snapshotId: s1.snapshotId, mode: 'clone', suffix: '-c' });
    expect(clone.status).toBe('restored');
    const inPlace = await restoreGroup(client, {
      group: name,
      snapshotId: s2.snapshotId,
      mode: 'in-place',
      confirmInPlace: true,
    });
    expect(inPlace.status).toBe('restored');

    const records = await listRestoreRecords(client, name);
    expect(records.map((r) => [r.kind, r.domain, r.id, r.snapshotId, [...r.blocks].sort()]).sort()).toEqual(
      [
        ['clone', a, `${a}-c`, s1.snapshotId, [s1.snapshotId]],
        ['clone', b, `${b}-c`, s1.snapshotId, [s1.snapshotId]],
        // s2's image is s1's overlay: merging it into s1's image would change what the restore reads.
        ['in-place', a, inPlace.restoreId, s2.snapshotId, [s1.snapshotId, s2.snapshotId].sort()],
        ['in-place', b, inPlace.restoreId, s2.snapshotId, [s1.snapshotId, s2.snapshotId].sort()],
      ].sort(),
    );
    expect(await listRestoreRecords(client, uniqueId('other'))).toEqual([]);

    // Retention (keep 1) leaves both alone, reporting why, instead of failing to delete them.
    const run = await scheduledRun(name, { retention: { keepLast: 1 } });
    expect(run.retention).toMatchObject({ kept: [run.snapshot.snapshotId], deleted: [], failed: [] });
    expect(run.retention?.skipped?.map((s) => s.snapshotId).sort()).toEqual([s1.snapshotId, s2.snapshotId].sort());
    expect(run.retention?.skipped?.find((s) => s.snapshotId === s1.snapshotId)?.reason).toMatch(/clone/);
    expect(run.retention?.skipped?.find((s) => s.snapshotId === s2.snapshotId)?.reason).toMatch(/in-place restore/);

    // Unknown ids and unsafe input: refused, nothing released.
    await expect(releaseRestoreRecords(client, { ids: ['nope-1'] })).rejects.toBeInstanceOf(BadInputError);
    await expect(releaseRestoreRecords(client, { ids: ['../x'] })).rejects.toThrow(/not safe/);
    expect(await listRestoreRecords(client, name)).toHaveLength(4);

    // Release the clone of one VM only (--vm), then the rest.
    const one = await releaseRestoreRecords(client, { ids: [`${a}-c`], vms: [{ domain: a, host: hostA.hostId }] });
    expect(one.released).toEqual([expect.objectContaining({ kind: 'clone', domain: a, id: `${a}-c` })]);
    expect(hostA.hypervisor.domains.has(`${a}-c`)).toBe(false);
    expect(hostB.hypervisor.domains.has(`${b}-c`)).toBe(true);
    const discardedA = inPlace.vms.find((v) => v.domain === a)!.disks.map((d) => d.discarded!);
    const rest = await releaseRestoreRecords(client, { ids: [`${b}-c`, inPlace.restoreId] });
    expect(rest.released.map((r) => [r.kind, r.domain]).sort()).toEqual(
      [
        ['clone', b],
        ['in-place', a],
        ['in-place', b],
      ].sort(),
    );
    expect(hostB.hypervisor.domains.has(`${b}-c`)).toBe(false);
    // The discarded layers were the overlays of the last snapshot before the restore (s2's), so they are kept.
    expect(rest.released.find((r) => r.kind === 'in-place' && r.domain === a)?.kept.sort()).toEqual(discardedA.sort());
    expect(await listRestoreRecords(client, name)).toEqual([]);

    // Nothing blocks them now: the next retention run deletes both; the VMs keep running on their restore.
    const after = await scheduledRun(name, { retention: { keepLast: 1 } });
    expect(after.retention).toMatchObject({ failed: [], skipped: [] });
    expect(after.retention?.deleted.sort()).toEqual([s1.snapshotId, s2.snapshotId, run.snapshot.snapshotId].sort());
    expect(await ids(name)).toEqual([after.snapshot.snapshotId]);
    expect(hostA.state(a)).toBe('running');
  });

  it('refuses bad input and unknown snapshots before changing anything', async () => {
    const { name, a } = await twoHostGroup('bad');
    const s1 = (await snapshotNamedGroup(client, name)).snapshot.snapshotId;
    await expect(pinGroupSnapshot(client, name, 'gs-nope')).rejects.toThrow(/has no snapshot "gs-nope"/);
    await expect(pinGroupSnapshot(client, '../g', s1)).rejects.toBeInstanceOf(BadInputError);
    await expect(pinGroupSnapshot(client, name, '../s')).rejects.toBeInstanceOf(BadInputError);
    const meta = parseVmMetadata(await hostA.hypervisor.getMetadata(a));
    expect(meta.snapshots.some((s) => s.pinned)).toBe(false);
  });
});

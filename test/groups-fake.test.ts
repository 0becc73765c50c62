import { Client, Connection } from '@temporalio/client';
import {
  createGroup,
  createGroupSchedule,
  deleteGroup,
  deleteGroupSnapshot,
  describeGroupSchedule,
  forgetHost,
  getGroup,
  listGroups,
  listGroupSchedules,
  listGroupSnapshots,
  listHosts,
  restoreGroup,
  showGroup,
  snapshotNamedGroup,
  tagVm,
} from '../client/dr';
import { BadInputError } from '../common/failures';
import { socketLinkPorts } from '../hypervisor/socket-links';
import { migrateWithSnapshot } from '../examples/snapshot-before-migration';
import { scheduleIdFor } from '../common/schedule-spec';
import { FakeHost } from './helpers/fake-hosts';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { triggerAndWait, vmsOf } from './helpers/schedules';
import { startHosts, type RunningHosts } from './helpers/workers';
import { maybeRecordHistory } from './helpers/histories';
import { restoreWorkflowId } from '../common/groups';

/**
 * Groups, tags, "snapshot now", schedules with retention, deletion and restore, end to end through a real Temporal
 * server with two in-memory hosts, in a namespace of their own (the host registry and groups are per namespace).
 * The same flows run on real VMs in dr-libvirt.test.ts.
 */
describe('groups, schedules, retention and restore (fake hypervisors, real Temporal)', () => {
  let connection: Connection;
  let client: Client;
  let hostA: FakeHost;
  let hostB: FakeHost;
  let hosts: RunningHosts;

  beforeAll(async () => {
    const namespace = await freshNamespace();
    connection = await Connection.connect({ address: testServerAddress() });
    client = new Client({ connection, namespace });
    hostA = new FakeHost(uniqueId('ga'), { latencyMs: { suspend: 2, snapshot: 10, resume: 2 } });
    hostB = new FakeHost(uniqueId('gb'), { latencyMs: { suspend: 2, snapshot: 10, resume: 2 } });
    hosts = await startHosts([hostA, hostB], { namespace });
  });

  afterAll(async () => {
    await hosts?.stop();
    await connection?.close();
    hostA?.cleanup();
    hostB?.cleanup();
  });

  const rejects = (p: Promise<unknown>, message: RegExp) => expect(p).rejects.toThrow(message);

  it('registers each host worker in the namespace registry', async () => {
    const ids = (await listHosts(client)).map((h) => h.hostId);
    expect(ids).toEqual([hostA.hostId, hostB.hostId].sort());
  });

  it('resolves a tag selector across hosts at snapshot time: a VM tagged later is in the next snapshot', async () => {
    const tag = uniqueId('t');
    const [a1, b1, b2] = [uniqueId('a1'), uniqueId('b1'), uniqueId('b2')];
    hostA.addVm(a1);
    hostB.addVm(b1);
    hostB.addVm(b2);
    const name = uniqueId('tagged');
    await createGroup(client, { name, selector: { tag } });
    await tagVm(client, { domain: a1, host: hostA.hostId }, { add: [tag] });
    await tagVm(client, { domain: b1, host: hostB.hostId }, { add: [tag, 'other'] });

    const first = await snapshotNamedGroup(client, name);
    expect(first.snapshot.status).toBe('completed');
    expect(first.members.map((m) => m.domain).sort()).toEqual([a1, b1].sort());

    await tagVm(client, { domain: b2, host: hostB.hostId }, { add: [tag] });
    const shown = await showGroup(client, name);
    expect(shown.members.map((m) => m.domain).sort()).toEqual([a1, b1, b2].sort());
    const second = await snapshotNamedGroup(client, name);
    expect(second.members.map((m) => `${m.domain}@${m.host}`).sort()).toEqual(
      [`${a1}@${hostA.hostId}`, `${b1}@${hostB.hostId}`, `${b2}@${hostB.hostId}`].sort(),
    );
    expect(second.snapshot.vms.every((v) => v.outcome === 'snapshotted')).toBe(true);

    // Untagged: out of the group again.
    await tagVm(client, { domain: a1, host: hostA.hostId }, { remove: [tag] });
    expect((await showGroup(client, name)).members.map((m) => m.domain).sort()).toEqual([b1, b2].sort());

    const listed = await listGroupSnapshots(client, name);
    expect(listed.map((s) => s.snapshotId)).toEqual([second.snapshot.snapshotId, first.snapshot.snapshotId]);
    expect((await listGroups(client)).find((g) => g.name === name)).toMatchObject({ selector: { tag } });
    expect(listed[0].vms).toHaveLength(3);
  });

  it('examples/snapshot-before-migration: migrates only after the group snapshot completed', async () => {
    const vm = uniqueId('m1');
    hostA.addVm(vm);
    const name = uniqueId('mig');
    await createGroup(client, { name, selector: { vms: [{ domain: vm, host: hostA.hostId }] } });
    const order: string[] = [];
    const ok = await migrateWithSnapshot(client, name, async () => {
      order.push(`migrate after ${hostA.chain(vm).length - 1} snapshot(s)`);
    });
    expect(ok).toMatchObject({ migrated: true, snapshot: { status: 'completed', label: 'pre-migration' } });
    expect(order).toEqual(['migrate after 1 snapshot(s)']);

    hostA.hypervisor.failOn('snapshot', vm);
    const refused = await migrateWithSnapshot(client, name, async () => {
      order.push('must not run');
    });
    expect(refused.migrated).toBe(false);
    expect(refused.snapshot.status).toBe('failed');
    expect(order).toHaveLength(1);
  });

  it('coalesces concurrent "snapshot now" requests for a group into one snapshot', async () => {
    const slow = new FakeHost(uniqueId('gs'), { latencyMs: { snapshot: 2500 } });
    const slowHosts = await startHosts([slow], { namespace: client.options.namespace, workflows: false });
    try {
      const vm = uniqueId('c1');
      slow.addVm(vm);
      const name = uniqueId('coalesce');
      await createGroup(client, { name, selector: { vms: [{ domain: vm, host: slow.hostId }] } });
      const results = await Promise.all([1, 2, 3].map(() => snapshotNamedGroup(client, name)));
      expect(new Set(results.map((r) => r.snapshot.snapshotId)).size).toBe(1);
      expect(results[0].snapshot.status).toBe('completed');
      expect(slow.chain(vm)).toHaveLength(2); // one snapshot, not three
      // After it finished, a new request takes a new snapshot.
      const next = await snapshotNamedGroup(client, name);
      expect(next.snapshot.snapshotId).not.toBe(results[0].snapshot.snapshotId);
    } finally {
      await slowHosts.stop();
      // A stopped host stays registered (and fails tag resolution loudly) until it is forgotten.
      expect(await forgetHost(client, slow.hostId)).toBe(true);
      slow.cleanup();
    }
  });

  it('rejects bad input before changing anything', async () => {
    const vm = uniqueId('bad');
    hostA.addVm(vm);
    const name = uniqueId('bad');
    await rejects(snapshotNamedGroup(client, uniqueId('nope')), /unknown group/);
    await rejects(showGroup(client, 'missing-group'), /unknown group/);
    await rejects(createGroup(client, { name: '../etc', selector: { tag: 'x' } }), /group name/);
    await rejects(createGroup(client, { name, selector: { tag: 'has space' } }), /tag/);
    await rejects(createGroup(client, { name, selector: { vms: [] } }), /empty/);
    await rejects(
      tagVm(client, { domain: uniqueId('ghost'), host: hostA.hostId }, { add: ['x'] }),
      /not found|unknown/i,
    );

    const emptyTag = uniqueId('nobody');
    await createGroup(client, { name, selector: { tag: emptyTag } });
    await rejects(createGroup(client, { name, selector: { tag: emptyTag } }), /already exists/);
    await rejects(snapshotNamedGroup(client, name), /matches no VM/);

    // Invalid cron, timezone or retention: rejected, and no schedule exists afterwards.
    await rejects(createGroupSchedule(client, { group: name, cron: '61 * * * *' }), /minute/);
    await rejects(
      createGroupSchedule(client, { group: name, cron: '0 * * * *', timezone: 'Mars/Olympus' }),
      /time ?zone/i,
    );
    await rejects(
      createGroupSchedule(client, { group: name, cron: '0 * * * *', retention: { keepLast: 0 } }),
      /keep nothing/,
    );
    await rejects(createGroupSchedule(client, { group: uniqueId('nope'), cron: '0 * * * *' }), /unknown group/);
    expect((await listGroupSchedules(client)).map((s) => s.group)).not.toContain(name);

    // A group with a schedule is not deleted unless asked to delete the schedule too.
    await createGroupSchedule(client, { group: name, cron: '0 3 * * *', paused: true });
    await rejects(deleteGroup(client, name), /has a schedule/);
    expect(await getGroup(client, name)).toMatchObject({ name });
    await deleteGroup(client, name, { withSchedule: true });
    await rejects(getGroup(client, name), /unknown group/);
    await rejects(describeGroupSchedule(client, name), /no schedule/);

    await expect(snapshotNamedGroup(client, name)).rejects.toBeInstanceOf(BadInputError);
  });

  it('runs scheduled snapshots and keeps exactly the retention set, with a bounded chain', async () => {
    const [a, b] = [uniqueId('s1'), uniqueId('s2')];
    hostA.addVm(a);
    hostB.addVm(b);
    const name = uniqueId('sched');
    await createGroup(client, {
      name,
      selector: vmsOf([hostA.hostId, a], [hostB.hostId, b]),
    });
    await createGroupSchedule(client, {
      group: name,
      cron: '0 0 1 1 *', // far away: runs come from trigger
      retention: { keepLast: 2 },
    });
    const runs: string[] = [];
    for (let i = 0; i < 4; i++) {
      const result = await triggerAndWait(client, name);
      expect(result.snapshot.status).toBe('completed');
      runs.push(result.snapshot.snapshotId);
      expect(result.retention?.kept).toEqual(runs.slice(-2).reverse());
      // Base image + at most 2 kept snapshot layers + the active layer.
      expect(hostA.chain(a).length).toBeLessThanOrEqual(3);
      expect(hostB.chain(b).length).toBeLessThanOrEqual(3);
    }
    const listed = await listGroupSnapshots(client, name);
    expect(listed.map((s) => s.snapshotId)).toEqual(runs.slice(-2).reverse());
    expect(hostA.chain(a)).toHaveLength(3);
    expect(scheduleIdFor(name)).toContain(name);
    await deleteGroup(client, name, { withSchedule: true });
  });

  it('deletes a middle snapshot, keeps the others listed, and rejects an unknown snapshot id', async () => {
    const vm = uniqueId('d1');
    hostA.addVm(vm);
    const name = uniqueId('del');
    await createGroup(client, { name, selector: { vms: [{ domain: vm, host: hostA.hostId }] } });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await snapshotNamedGroup(client, name)).snapshot.snapshotId);
    expect(hostA.chain(vm)).toHaveLength(4);
    const deleted = await deleteGroupSnapshot(client, name, ids[1]);
    expect(deleted.status).toBe('deleted');
    expect(deleted.vms).toEqual([expect.objectContaining({ domain: vm, outcome: 'deleted' })]);
    expect(hostA.chain(vm)).toHaveLength(3);
    expect((await listGroupSnapshots(client, name)).map((s) => s.snapshotId)).toEqual([ids[2], ids[0]]);
    await rejects(deleteGroupSnapshot(client, name, ids[1]), /has no snapshot/);
    await rejects(deleteGroupSnapshot(client, name, '../x'), /snapshot id/);
  });

  it('restores a group as clones and in place, all or none; a clone blocks deleting its snapshot', async () => {
    const [a, b] = [uniqueId('r1'), uniqueId('r2')];
    hostA.addVm(a);
    hostB.addVm(b);
    const name = uniqueId('rest');
    await createGroup(client, {
      name,
      selector: vmsOf([hostA.hostId, a], [hostB.hostId, b]),
    });
    const s1 = (await snapshotNamedGroup(client, name)).snapshot;
    await snapshotNamedGroup(client, name);

    const clones = await restoreGroup(client, { group: name, snapshotId: s1.snapshotId, mode: 'clone', suffix: '-dr' });
    expect(clones.status).toBe('restored');
    await maybeRecordHistory(client, restoreWorkflowId(name, s1.snapshotId, clones.restoreId), 'restore-group-clone');
    expect(clones.vms.map((v) => v.clone).sort()).toEqual([`${a}-dr`, `${b}-dr`].sort());
    expect(hostA.state(`${a}-dr`)).toBe('running');
    await rejects(deleteGroupSnapshot(client, name, s1.snapshotId), /clone/);
    // The same clone names again: refused, and nothing else was created.
    await rejects(
      restoreGroup(client, { group: name, snapshotId: s1.snapshotId, mode: 'clone', suffix: '-dr' }),
      /exists/,
    );

    const inPlace = await restoreGroup(client, {
      group: name,
      snapshotId: s1.snapshotId,
      mode: 'in-place',
      confirmInPlace: true,
    });
    expect(inPlace.status).toBe('restored');
    await maybeRecordHistory(
      client,
      restoreWorkflowId(name, s1.snapshotId, inPlace.restoreId),
      'restore-group-in-place',
    );
    const vmA = s1.vms.find((v) => v.domain === a)!;
    const chain = hostA.chain(a);
    // The active layer is the restore's new overlay, right on top of the snapshot's image.
    expect(chain[chain.length - 2]).toBe(vmA.disks.find((d) => d.target === 'vda')!.image);
    expect(inPlace.vms.find((v) => v.domain === a)!.disks[0].overlay).toBe(chain[chain.length - 1]);
    expect(hostA.state(a)).toBe('running');
    await rejects(restoreGroup(client, { group: name, snapshotId: 'gs-nope', mode: 'clone' }), /has no snapshot/);
  });
  it('restores VMs wired by socket links across two hosts as clones wired to each other on fresh ports', async () => {
    const [a, b] = [uniqueId('sl1'), uniqueId('sl2')];
    hostA.addVm(a, 'running', 1);
    hostB.addVm(b, 'running', 1);
    // a <-> b: a UDP pair (each binds its local port, sends to the other's) and a TCP link (a listens, b connects).
    hostA.hypervisor.domains.get(a)!.devicesXml =
      `<interface type='udp'><source address='127.0.0.1' port='40102'><local address='127.0.0.1' port='40101'/></source></interface>` +
      `<interface type='server'><source address='169.254.9.1' port='40110'/></interface>`;
    hostB.hypervisor.domains.get(b)!.devicesXml =
      `<interface type='udp'><source address='127.0.0.1' port='40101'><local address='127.0.0.1' port='40102'/></source></interface>` +
      `<interface type='client'><source address='169.254.9.1' port='40110'/></interface>`;
    const name = uniqueId('sock');
    await createGroup(client, { name, selector: vmsOf([hostA.hostId, a], [hostB.hostId, b]) });
    const s1 = (await snapshotNamedGroup(client, name)).snapshot;
    const r = await restoreGroup(client, { group: name, snapshotId: s1.snapshotId, mode: 'clone', suffix: '-sl' });
    expect(r.status).toBe('restored');
    await maybeRecordHistory(client, restoreWorkflowId(name, s1.snapshotId, r.restoreId), 'restore-group-socket-ports');
    const links = (host: FakeHost, vm: string) =>
      socketLinkPorts(host.hypervisor.domains.get(vm)!.definedXml!).map((l) => ({ ...l, key: `${l.type}:${l.role}` }));
    const ca = links(hostA, `${a}-sl`);
    const cb = links(hostB, `${b}-sl`);
    const port = (ls: typeof ca, key: string) => ls.find((l) => l.key === key)!.port;
    // No original port is left in a clone...
    for (const l of [...ca, ...cb]) expect([40101, 40102, 40110]).not.toContain(l.port);
    // ...addresses are kept...
    expect(ca.map((l) => l.address)).toEqual(['127.0.0.1', '127.0.0.1', '169.254.9.1']);
    // ...and the clones still pair with each other: the same map on both hosts.
    expect(port(ca, 'udp:bind')).toBe(port(cb, 'udp:connect'));
    expect(port(cb, 'udp:bind')).toBe(port(ca, 'udp:connect'));
    expect(port(ca, 'server:bind')).toBe(port(cb, 'client:connect'));
    expect(new Set([port(ca, 'udp:bind'), port(cb, 'udp:bind'), port(ca, 'server:bind')]).size).toBe(3);
  });

  it('rolls a restore back on every VM when one VM fails (all or none), and retries a half-failed deletion', async () => {
    const [a, b] = [uniqueId('x1'), uniqueId('x2')];
    hostA.addVm(a);
    hostB.addVm(b);
    const name = uniqueId('aon');
    await createGroup(client, {
      name,
      selector: vmsOf([hostA.hostId, a], [hostB.hostId, b]),
    });
    const s1 = (await snapshotNamedGroup(client, name)).snapshot.snapshotId;
    const s2 = (await snapshotNamedGroup(client, name)).snapshot.snapshotId;
    const chainA = hostA.chain(a);

    // The clone on host B cannot be defined: the clone already made on host A is removed again.
    // (as many times as the activity is attempted)
    for (let i = 0; i < 3; i++) hostB.hypervisor.failOn('define', undefined);
    const failed = await restoreGroup(client, { group: name, snapshotId: s1, mode: 'clone', suffix: '-x' });
    expect(failed.status).toBe('failed');
    await maybeRecordHistory(client, restoreWorkflowId(name, s1, failed.restoreId), 'restore-group-clone-rolled-back');
    expect(failed.error).toMatch(/injected define failure/);
    expect(hostA.hypervisor.domains.has(`${a}-x`)).toBe(false);
    expect(hostB.hypervisor.domains.has(`${b}-x`)).toBe(false);

    // In place, one VM fails to start on its new overlays: both VMs go back to their previous layers, running.
    for (let i = 0; i < 3; i++) hostB.hypervisor.failOn('start', b);
    const ip = await restoreGroup(client, { group: name, snapshotId: s1, mode: 'in-place', confirmInPlace: true });
    expect(ip.status).toBe('failed');
    await maybeRecordHistory(client, restoreWorkflowId(name, s1, ip.restoreId), 'restore-group-in-place-rolled-back');
    expect(hostA.chain(a)).toEqual(chainA);
    expect(hostA.state(a)).toBe('running');
    expect(hostB.state(b)).toBe('running');

    // Deleting S2 fails on host B's VM: reported per VM; running the delete again finishes it.
    hostB.hypervisor.failOn('commit', b);
    const half = await deleteGroupSnapshot(client, name, s2);
    expect(half.status).toBe('failed');
    expect(half.vms.find((v) => v.domain === a)!.outcome).toBe('deleted');
    expect(half.vms.find((v) => v.domain === b)).toMatchObject({
      outcome: 'failed',
      error: expect.stringMatching(/injected/),
    });
    const again = await deleteGroupSnapshot(client, name, s2);
    expect(again.status).toBe('deleted');
    expect(again.vms.map((v) => v.outcome)).toEqual([b].map(() => 'deleted'));
    expect((await listGroupSnapshots(client, name)).map((s) => s.snapshotId)).toEqual([s1]);
  });
});

import { Client, Connection } from '@temporalio/client';
import * as libvirt from '@groupsnap/libvirt';
import {
  createGroup,
  createGroupSchedule,
  deleteGroup,
  deleteGroupSnapshot,
  listGroupSnapshots,
  restoreGroup,
  snapshotNamedGroup,
  tagVm,
} from '../client/dr';
import { backingChain, VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { readsMarker, writeMarker } from './helpers/markers';
import { scopedHypervisor } from './helpers/scoped-hypervisor';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { triggerAndWait, vmsOf } from './helpers/schedules';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * Disaster recovery end to end on real libvirtd + QEMU VMs and a real Temporal server: a tag-selected group over
 * two host workers, scheduled runs with retention, deletion of a middle snapshot, and restore as clones and in
 * place, checked by markers written into the VMs' disks through QEMU before and after each snapshot.
 * (Both "hosts" share this machine's libvirtd; each worker sees only its own VMs, by name prefix.)
 */
describe('groups, retention, deletion and restore on real VMs', () => {
  let connection: Connection;
  let client: Client;
  let fleetA: VmFleet;
  let fleetB: VmFleet;
  let hosts: RunningHosts;
  const hypervisors: LibvirtHypervisor[] = [];
  const hostA = uniqueId('dra');
  const hostB = uniqueId('drb');
  const prefixA = uniqueId('gsdra');
  const prefixB = uniqueId('gsdrb');

  const activeSource = async (domain: string, target = 'vda') =>
    parseDomainXml(await (await fleetA.conn.lookupByName(domain)).xml()).disks.find((d) => d.target === target)!
      .source!;
  const state = async (domain: string) => (await (await fleetA.conn.lookupByName(domain)).state()).state;

  beforeAll(async () => {
    const namespace = await freshNamespace('gsdr');
    connection = await Connection.connect({ address: testServerAddress() });
    client = new Client({ connection, namespace });
    [fleetA, fleetB] = await Promise.all([
      VmFleet.create({ prefix: prefixA, count: 2 }),
      VmFleet.create({ prefix: prefixB, count: 2 }),
    ]);
    const open = async () => {
      const h = await LibvirtHypervisor.open('qemu:///system');
      hypervisors.push(h);
      return h;
    };
    hosts = await startHosts(
      [
        { hostId: hostA, hypervisor: scopedHypervisor(await open(), prefixA) },
        { hostId: hostB, hypervisor: scopedHypervisor(await open(), prefixB) },
      ],
      { namespace },
    );
  });

  afterAll(async () => {
    await hosts?.stop();
    // Clones made by restores live beside the fleets' VMs: remove them before the fleets' directories go.
    if (fleetA) {
      for (const d of await fleetA.conn.listAllDomains()) {
        if (!d.name.startsWith(prefixA) && !d.name.startsWith(prefixB)) continue;
        if (fleetA.names.includes(d.name) || fleetB?.names.includes(d.name)) continue;
        const dom = await fleetA.conn.lookupByName(d.name);
        await dom.destroy().catch(() => undefined);
        await dom.undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA).catch(() => undefined);
        dom.free();
      }
    }
    for (const h of hypervisors) await h.close();
    await fleetA?.destroy();
    await fleetB?.destroy();
    await connection?.close();
  });

  it('a tag-selected group over two host workers picks up a VM tagged after the group was created', async () => {
    const [a1, a2] = fleetA.names;
    const [b1] = fleetB.names;
    const tag = uniqueId('db');
    const group = uniqueId('tagged');
    await createGroup(client, { name: group, selector: { tag } });
    await tagVm(client, { domain: a1, host: hostA }, { add: [tag] });
    await tagVm(client, { domain: b1, host: hostB }, { add: [tag] });
    const first = await snapshotNamedGroup(client, group);
    expect(first.snapshot.status).toBe('completed');
    expect(first.members).toEqual([
      { domain: a1, host: hostA },
      { domain: b1, host: hostB },
    ]);

    await tagVm(client, { domain: a2, host: hostA }, { add: [tag] });
    const second = await snapshotNamedGroup(client, group);
    expect(second.snapshot.status).toBe('completed');
    expect(second.members.map((m) => m.domain).sort()).toEqual([a1, a2, b1].sort());
    for (const v of second.snapshot.vms) expect(v).toMatchObject({ outcome: 'snapshotted', state: 'running' });
    expect(await state(a2)).toBe('running');

    // Clean the chains for the next tests: delete both snapshots (newest first, then the older one).
    for (const s of [second, first]) {
      const del = await deleteGroupSnapshot(client, group, s.snapshot.snapshotId);
      expect(del.status).toBe('deleted');
    }
    expect(await activeSource(a1)).toBe(fleetA.vms[0].disks.vda);
    await tagVm(client, { domain: a1, host: hostA }, { remove: [tag] });
    await tagVm(client, { domain: a2, host: hostA }, { remove: [tag] });
    await tagVm(client, { domain: b1, host: hostB }, { remove: [tag] });
    await deleteGroup(client, group);
  });

  it('scheduled runs keep exactly the retention set while the chain depth stays bounded', async () => {
    const [, a2] = fleetA.names;
    const [, b2] = fleetB.names;
    const group = uniqueId('sched');
    await createGroup(client, {
      name: group,
      selector: vmsOf([hostA, a2], [hostB, b2]),
    });
    await createGroupSchedule(client, { group, cron: '0 0 1 1 *', retention: { keepLast: 2 } });
    const taken: string[] = [];
    for (let i = 0; i < 4; i++) {
      const run = await triggerAndWait(client, group);
      expect(run.snapshot.status).toBe('completed');
      taken.push(run.snapshot.snapshotId);
      expect(run.retention?.failed).toEqual([]);
      // The oldest kept snapshot lives in the base image: base + 1 more kept snapshot + the active layer.
      expect((await backingChain(await activeSource(a2))).length).toBeLessThanOrEqual(3);
    }
    const kept = (await listGroupSnapshots(client, group)).map((s) => s.snapshotId);
    expect(kept).toEqual(taken.slice(-2).reverse());
    expect(await backingChain(await activeSource(a2))).toHaveLength(3);
    expect(await state(a2)).toBe('running');
    await deleteGroup(client, group, { withSchedule: true });
  });

  it('deleting a middle snapshot keeps the others restorable; clones and in-place restores hold the snapshot content', async () => {
    const [a1] = fleetA.names;
    const [b1] = fleetB.names;
    const group = uniqueId('dr');
    await createGroup(client, {
      name: group,
      selector: vmsOf([hostA, a1], [hostB, b1]),
    });
    // Marker 0x41 before S1, 0x42 before S2, 0x43 before S3, 0x44 after S3; each at its own offset.
    const offset = (byte: number) => (byte - 0x40) * 65536;
    const snap = async (): Promise<string> => {
      const run = await snapshotNamedGroup(client, group);
      expect(run.snapshot.status).toBe('completed');
      return run.snapshot.snapshotId;
    };
    const mark = async (byte: number) => {
      await writeMarker(a1, 'vdb', byte, offset(byte));
      await writeMarker(b1, 'vdb', byte, offset(byte));
    };
    await mark(0x41);
    const s1 = await snap();
    await mark(0x42);
    const s2 = await snap();
    await mark(0x43);
    const s3 = await snap();
    await mark(0x44);

    const del = await deleteGroupSnapshot(client, group, s2);
    expect(del.status).toBe('deleted');
    expect(del.vms.map((v) => v.outcome)).toEqual(['deleted', 'deleted']);
    expect((await listGroupSnapshots(client, group)).map((s) => s.snapshotId)).toEqual([s3, s1]);
    expect(await state(a1)).toBe('running');

    // S3 as clones: markers up to 0x43, not 0x44 (written after S3).
    const c3 = await restoreGroup(client, { group, snapshotId: s3, mode: 'clone', suffix: '-s3' });
    expect(c3.status).toBe('restored');
    for (const v of c3.vms) {
      expect(await state(v.clone!)).toBe('running');
      const disk = v.disks.find((d) => d.target === 'vdb')!.overlay;
      for (const b of [0x41, 0x42, 0x43]) expect(await readsMarker(disk, b, offset(b))).toBe(true);
      expect(await readsMarker(disk, 0x44, offset(0x44))).toBe(false);
    }
    // S1 as clones: only the first marker.
    const c1 = await restoreGroup(client, { group, snapshotId: s1, mode: 'clone', suffix: '-s1' });
    for (const v of c1.vms) {
      const disk = v.disks.find((d) => d.target === 'vdb')!.overlay;
      expect(await readsMarker(disk, 0x41, offset(0x41))).toBe(true);
      for (const b of [0x42, 0x43, 0x44]) expect(await readsMarker(disk, b, offset(b))).toBe(false);
    }
    // A clone is built on S1: deleting S1 is refused and changes nothing.
    await expect(deleteGroupSnapshot(client, group, s1)).rejects.toThrow(/clone/);
    expect((await listGroupSnapshots(client, group)).map((s) => s.snapshotId)).toEqual([s3, s1]);

    // In place to S1: the originals restart on S1's content; the discarded layer is kept.
    const before = await activeSource(a1, 'vdb');
    const ip = await restoreGroup(client, { group, snapshotId: s1, mode: 'in-place', confirmInPlace: true });
    expect(ip.status).toBe('restored');
    expect(await state(a1)).toBe('running');
    const now = await activeSource(a1, 'vdb');
    expect(now).not.toBe(before);
    expect(await readsMarker(now, 0x41, offset(0x41))).toBe(true);
    for (const b of [0x42, 0x43, 0x44]) expect(await readsMarker(now, b, offset(b))).toBe(false);
    const vmA = ip.vms.find((v) => v.domain === a1)!;
    expect(vmA.disks.find((d) => d.target === 'vdb')!.discarded).toBe(before);
    expect(await readsMarker(before, 0x44, offset(0x44))).toBe(true);
  });
});

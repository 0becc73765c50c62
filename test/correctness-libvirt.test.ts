import { Client, Connection } from '@temporalio/client';
import * as libvirt from '@groupsnap/libvirt';
import { createGroup, deleteGroup, restoreGroup, snapshotNamedGroup } from '../client/dr';
import { createHost } from '../activities/host-activities';
import { imageInfo } from '../hypervisor/images';
import { backingChain, VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { readsMarker, writeMarker } from './helpers/markers';
import { scopedHypervisor } from './helpers/scoped-hypervisor';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { vmsOf } from './helpers/schedules';
import { startHosts, type RunningHosts } from './helpers/workers';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where round `round`'s marker goes on every disk: its own 64 KiB slot, so no round overwrites another. */
const offset = (round: number) => (round + 1) * 65536;
const byte = (round: number) => 0x30 + round;

/**
 * Issue 13's proof on real libvirtd + QEMU VMs and a real Temporal server: two groups that share VMs, snapshotted at
 * the same instant round after round. Every completed result (and catalog entry) must name, for each disk, the file
 * directly under its overlay on disk, and restoring each point must give back that point's content: markers written
 * through QEMU before each round are in it, markers of later rounds are not.
 */
describe('concurrent snapshots of groups sharing VMs (real VMs)', () => {
  let connection: Connection;
  let client: Client;
  let fleet: VmFleet;
  let hosts: RunningHosts;
  let hypervisor: LibvirtHypervisor;
  const hostId = uniqueId('cc');
  const prefix = uniqueId('gscc');

  beforeAll(async () => {
    const namespace = await freshNamespace('gscc');
    connection = await Connection.connect({ address: testServerAddress() });
    client = new Client({ connection, namespace });
    fleet = await VmFleet.create({ prefix, count: 3 });
    hypervisor = await LibvirtHypervisor.open('qemu:///system');
    hosts = await startHosts([{ hostId, hypervisor: scopedHypervisor(hypervisor, prefix) }], { namespace });
  });

  afterAll(async () => {
    await hosts?.stop();
    if (fleet) {
      for (const d of await fleet.conn.listAllDomains()) {
        if (!d.name.startsWith(prefix) || fleet.names.includes(d.name)) continue;
        const dom = await fleet.conn.lookupByName(d.name);
        await dom.destroy().catch(() => undefined);
        await dom.undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA).catch(() => undefined);
        dom.free();
      }
    }
    await hypervisor?.close();
    await fleet?.destroy();
    await connection?.close();
  });

  it('every completed point names the file under its overlay, and restores to exactly its own content', async () => {
    const [v0, v1, v2] = fleet.names;
    const db = uniqueId('db');
    const all = uniqueId('all');
    await createGroup(client, { name: db, selector: vmsOf([hostId, v0], [hostId, v1]) });
    await createGroup(client, { name: all, selector: vmsOf([hostId, v0], [hostId, v1], [hostId, v2]) });
    const rounds = 4;
    const points: { snapshotId: string; group: string; round: number }[] = [];
    for (let round = 0; round < rounds; round++) {
      for (const vm of fleet.names)
        for (const t of ['vda', 'vdb']) await writeMarker(vm, t, byte(round), offset(round));
      const [a, b] = await Promise.all([snapshotNamedGroup(client, db), snapshotNamedGroup(client, all)]);
      for (const run of [a, b]) {
        expect(run.snapshot.status).toBe('completed');
        points.push({ snapshotId: run.snapshot.snapshotId, group: run.group, round });
        for (const vm of run.snapshot.vms) {
          expect(vm.disks).toHaveLength(2);
          for (const d of vm.disks) {
            // The file directly under the overlay is the one the result names.
            expect((await imageInfo(d.overlay)).backing).toBe(d.image);
            expect(await backingChain(d.overlay)).toContain(d.image);
          }
        }
      }
    }
    expect(points).toHaveLength(2 * rounds);

    // The catalog on each VM agrees with the results, and on disk.
    for (const vm of fleet.names) {
      const dom = await fleet.conn.lookupByName(vm);
      const meta = await dom.getMetadata('https://groupsnap.dev/xmlns/groupsnap/1');
      dom.free();
      for (const m of meta.matchAll(/<disk target='([^']+)' image='([^']+)' overlay='([^']+)'\/>/g))
        expect((await imageInfo(m[3])).backing).toBe(m[2]);
    }

    // Restoring each point gives that point's content: its round's markers and none of a later round.
    for (const p of points) {
      const r = await restoreGroup(client, { group: p.group, snapshotId: p.snapshotId, mode: 'clone' });
      expect(r.status).toBe('restored');
      for (const vm of r.vms) {
        for (const d of vm.disks) {
          for (let round = 0; round < rounds; round++) {
            const has = await readsMarker(d.overlay, byte(round), offset(round));
            expect({ point: p.snapshotId, vm: vm.domain, disk: d.target, round, has }).toEqual({
              point: p.snapshotId,
              vm: vm.domain,
              disk: d.target,
              round,
              has: round <= p.round,
            });
          }
        }
        // The clone is a restore of its own: stop it, it is removed with the fleet.
        const clone = await fleet.conn.lookupByName(vm.clone!);
        await clone.destroy().catch(() => undefined);
        clone.free();
      }
    }
    await deleteGroup(client, db);
    await deleteGroup(client, all);
  }, 600_000);
});

/** Item 8 on a real VM: a block commit left running by a worker that died is finished before anything else. */
describe('an interrupted block commit on a real VM', () => {
  let fleet: VmFleet;
  let hypervisor: LibvirtHypervisor;
  let stateDir: string;

  beforeAll(async () => {
    fleet = await VmFleet.create({ prefix: uniqueId('gsbj'), count: 1, disksPerVm: 1 });
    hypervisor = await LibvirtHypervisor.open('qemu:///system');
    stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-bj-'));
  });

  afterAll(async () => {
    await hypervisor?.close();
    await fleet?.destroy();
    await rm(stateDir, { recursive: true, force: true });
  });

  it('undo pivots a ready active commit a dead worker left, then removes the overlay', async () => {
    const [vm] = fleet.names;
    const host = createHost({ hypervisor, hostId: 'bj', stateDir });
    try {
      const a = host.activities;
      const plans = await a.planVms({ snapshotId: 's-bj', domains: [vm], quiesce: 'none' });
      await a.acquireLocks({ owner: 'run-bj', domains: [vm], ttlMs: 60_000 });
      const [r] = await a.freezeVms({
        snapshotId: 's-bj',
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'bj',
        quiesce: 'none',
        leaseOwner: 'run-bj',
      });
      expect(r.snapshotted).toBe(true);
      await writeMarker(vm, 'vda', 0x5a, 0);
      // The dead worker's commit: started, copied everything, never pivoted.
      const dom = await fleet.conn.lookupByName(vm);
      const [disk] = plans[0].disks;
      await dom.commit({ disk: 'vda', base: disk.image, active: true, pivot: false });
      expect(await dom.blockJobInfo('vda')).not.toBeNull();
      const [undo] = await a.undoSnapshots({
        snapshotId: 's-bj',
        vms: [{ domain: vm, disks: plans[0].disks }],
        leaseOwner: 'run-bj',
      });
      expect(undo.error).toBeUndefined();
      expect(undo.rolledBack).toBe(true);
      expect(await dom.blockJobInfo('vda')).toBeNull();
      const source = parseDomainXml(await dom.xml()).disks.find((d) => d.target === 'vda')!.source;
      expect(source).toBe(disk.image);
      // Data written after the snapshot was merged down, not lost.
      expect(await readsMarker(disk.image, 0x5a, 0)).toBe(true);
      expect((await dom.state()).state).toBe('running');
      dom.free();
    } finally {
      host.shutdown();
    }
  }, 120_000);
});

import { readdirSync } from 'node:fs';
import { Client } from '@temporalio/client';
import { snapshotGroup } from '../client';
import { cutViolations } from '../common/cut';
import { backingChain, VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { HypervisorError } from '../hypervisor/errors';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { beforeSnapshot } from './helpers/hooked-hypervisor';
import { readsMarker, writeMarker } from './helpers/markers';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * The group-paused order on real libvirtd + QEMU VMs (firmware-only guests, 2 qcow2 disks each): overlays made
 * before the pause and reused by the snapshot, each VM resumed once its own snapshot is taken and the group is
 * paused; and the fault the order makes possible, a snapshot that fails after other VMs already run again.
 */
describe('freeze order on real VMs', () => {
  let client: Client;
  let close: () => Promise<void>;
  let fleet: VmFleet;
  let hypervisor: LibvirtHypervisor;
  let hosts: RunningHosts;
  const host = uniqueId('ho');
  /** Run before the snapshot of a VM (the VM is paused then); set per test. */
  let hook: (domain: string) => Promise<void> = async () => {};

  const state = async (name: string) => (await (await fleet.conn.lookupByName(name)).state()).state;
  const sources = async (name: string) =>
    Object.fromEntries(
      parseDomainXml(await (await fleet.conn.lookupByName(name)).xml()).disks.map((d) => [d.target, d.source]),
    );
  const vmsOf = (names: string[]) => names.map((domain) => ({ domain, host }));

  beforeAll(async () => {
    ({ client, close } = await connectTestClient());
    fleet = await VmFleet.create({ prefix: 'gs-order', count: 4 });
    hypervisor = await LibvirtHypervisor.open('qemu:///system');
    hosts = await startHosts([{ hostId: host, hypervisor: beforeSnapshot(hypervisor, (d) => hook(d)) }]);
  });

  afterAll(async () => {
    await hosts?.stop();
    await hypervisor?.close();
    await fleet?.destroy();
    await close?.();
  });

  it('snapshots 4 VMs over prepared overlays, releasing each VM early, with a cut that checks out', async () => {
    hook = async () => {};
    const result = await snapshotGroup(client, { group: 'order', vms: vmsOf(fleet.names) });

    expect(result.status).toBe('completed');
    expect(result.resumeWhen).toBe('group-paused');
    expect(cutViolations(result)).toEqual([]);
    // At most two snapshots in flight: the first VM runs again before the last one's snapshot is taken.
    const [first, , , last] = fleet.names.map((n) => result.vms.find((v) => v.domain === n)!);
    expect(first.resumedAtMs!).toBeLessThan(last.snapshottedAtMs!);
    for (const vm of result.vms) {
      expect(await state(vm.domain)).toBe('running');
      for (const d of vm.disks) {
        expect((await sources(vm.domain))[d.target]).toBe(d.overlay);
        // The reused overlay sits directly on the image the result names.
        expect((await backingChain(d.overlay))[1]).toBe(d.image);
      }
    }
  });

  it('compensates a snapshot that fails after other VMs resumed, keeping what they wrote since', async () => {
    const names = fleet.names.slice(0, 3);
    const before = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await sources(n)] as const)));
    const marker = { byte: 0x5a, offset: 3 * 1024 * 1024 };
    let written = false;
    hook = async (domain) => {
      if (domain !== names[2]) return;
      // The third VM's snapshot waits until the first one runs again on its new overlay, writes into it (as its
      // guest would), then fails.
      const deadline = Date.now() + 30_000;
      while ((await state(names[0])) !== 'running') {
        if (Date.now() > deadline) throw new Error(`${names[0]} was not resumed`);
        await new Promise((r) => setTimeout(r, 20));
      }
      await writeMarker(names[0], 'vda', marker.byte, marker.offset);
      written = true;
      throw new HypervisorError(`injected snapshot failure for ${domain}`, domain);
    };
    const result = await snapshotGroup(client, { group: 'order-fault', vms: vmsOf(names) });

    expect(written).toBe(true);
    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected snapshot failure');
    expect(result.vms.find((v) => v.domain === names[0])!.outcome).toBe('rolled-back');
    for (const n of names) {
      expect(await state(n)).toBe('running');
      // This run's overlays were committed back (or never used): every disk is on its image again.
      expect(await sources(n)).toEqual(before[n]);
    }
    // Data written after the resume survived the compensation: it is in the image the VM runs on.
    expect(await readsMarker(before[names[0]].vda!, marker.byte, marker.offset)).toBe(true);
    // No file of the failed run is left, the failed VM's prepared overlays included.
    expect(readdirSync(fleet.dir).filter((f) => f.includes(result.snapshotId))).toEqual([]);
  });

  it('releases a group above updateBarrierMaxHosts on pauses too: hosts signal, releaseFreeze activities release', async () => {
    hook = async () => {};
    // Two more host workers on the same libvirtd, two VMs each: a 2-host group, above a limit of 1 host.
    const [x, y] = [uniqueId('hx'), uniqueId('hy')];
    const more = await startHosts(
      [
        { hostId: x, hypervisor },
        { hostId: y, hypervisor },
      ],
      { workflows: false },
    );
    try {
      const vms = fleet.names.map((domain, i) => ({ domain, host: i < 2 ? x : y }));
      const result = await snapshotGroup(client, { group: 'order-signal', vms, updateBarrierMaxHosts: 1 });

      expect(result.status).toBe('completed');
      expect(cutViolations(result)).toEqual([]);
      for (const vm of result.vms) {
        expect(await state(vm.domain)).toBe('running');
        expect(vm.resumedByGuard).toBeFalsy();
        for (const d of vm.disks) {
          expect((await sources(vm.domain))[d.target]).toBe(d.overlay);
          expect((await backingChain(d.overlay))[1]).toBe(d.image);
        }
      }
      const history = await client.workflow.getHandle(result.workflowId).fetchHistory();
      const activities = (history.events ?? [])
        .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name)
        .filter((n) => n !== undefined);
      expect(activities.filter((n) => n === 'releaseFreeze')).toHaveLength(2);
      expect(activities).not.toContain('thawVms');
    } finally {
      await more.stop();
    }
  });
});

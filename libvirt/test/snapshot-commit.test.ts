// External disk-only snapshots and block commit on real QEMU VMs.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ATOMIC, BlockJobError, CommitProgress, DISK_ONLY, NO_METADATA } from '../src';
import { TestVm, VmFleet, backingChain, diskSources, snapshotXml } from './helpers/vms';

const fleet = new VmFleet();

beforeAll(() => fleet.connect());
afterAll(() => fleet.cleanup());

/** Takes an atomic disk-only snapshot of every disk of `vm` into new overlays named after `tag`. */
async function snapshot(vm: TestVm, tag: string): Promise<Record<string, string>> {
  const overlays: Record<string, string> = {};
  for (const dev of Object.keys(vm.disks)) overlays[dev] = path.join(fleet.dir, `${vm.name}-${dev}.${tag}.qcow2`);
  await vm.domain.snapshotCreateXML(snapshotXml(overlays), DISK_ONLY | ATOMIC | NO_METADATA);
  return overlays;
}

describe('disk-only snapshots', () => {
  it('switches both disks of a running VM to new overlays atomically, without metadata', async () => {
    const vm = await fleet.start(2);
    const overlays = await snapshot(vm, 's1');

    for (const [dev, file] of Object.entries(overlays)) {
      expect(fs.existsSync(file)).toBe(true);
      expect(backingChain(file)).toEqual([file, vm.disks[dev]]);
    }
    expect(diskSources(await vm.domain.xml())).toEqual(overlays);
    expect(await vm.domain.snapshotList()).toEqual([]);
    expect((await vm.domain.state()).state).toBe('running');
  });

  it('changes no disk when one overlay cannot be created', async () => {
    const vm = await fleet.start(2);
    const overlays = {
      vda: path.join(fleet.dir, `${vm.name}-vda.bad.qcow2`),
      vdb: path.join(fleet.dir, 'no-such-dir', 'vdb.qcow2'),
    };
    await expect(
      vm.domain.snapshotCreateXML(snapshotXml(overlays), DISK_ONLY | ATOMIC | NO_METADATA),
    ).rejects.toThrow();
    expect(diskSources(await vm.domain.xml())).toEqual(vm.disks);
  });
});

describe('block commit', () => {
  it('commits a middle layer into the base while the VM runs', async () => {
    const vm = await fleet.start(2);
    const s1 = await snapshot(vm, 's1');
    const s2 = await snapshot(vm, 's2');
    expect(backingChain(s2.vda)).toEqual([s2.vda, s1.vda, vm.disks.vda]);

    const progress: CommitProgress[] = [];
    await vm.domain.commit({
      disk: 'vda',
      base: vm.disks.vda,
      top: s1.vda,
      onProgress: (p) => progress.push(p),
      pollMs: 10,
    });

    expect(backingChain(s2.vda)).toEqual([s2.vda, vm.disks.vda]);
    const xml = await vm.domain.xml();
    expect(xml).not.toContain(s1.vda);
    expect(diskSources(xml).vda).toBe(s2.vda);
    // The other disk is untouched.
    expect(backingChain(s2.vdb)).toEqual([s2.vdb, s1.vdb, vm.disks.vdb]);
    expect(await vm.domain.blockJobInfo('vda')).toBeNull();
  });

  it('commits the active layer and pivots onto the base', async () => {
    const vm = await fleet.start(2);
    const s1 = await snapshot(vm, 's1');
    expect(diskSources(await vm.domain.xml()).vda).toBe(s1.vda);

    const progress: CommitProgress[] = [];
    await vm.domain.commit({ disk: 'vda', active: true, onProgress: (p) => progress.push(p), pollMs: 10 });

    expect(diskSources(await vm.domain.xml()).vda).toBe(vm.disks.vda);
    expect(progress.length).toBeGreaterThan(0);
    const last = progress[progress.length - 1];
    expect(last.cur).toBe(last.end);
    expect(await vm.domain.blockJobInfo('vda')).toBeNull();
    expect((await vm.domain.state()).state).toBe('running');
  });

  it('rejects a commit whose top is not in the chain with BlockJobError', async () => {
    const vm = await fleet.start(1);
    await snapshot(vm, 's1');
    await expect(
      vm.domain.commit({ disk: 'vda', base: vm.disks.vda, top: '/nonexistent/top.qcow2' }),
    ).rejects.toBeInstanceOf(BlockJobError);
  });
});

// Block pull (virDomainBlockPull) and managed save on real QEMU VMs: what an instant restore's hydration and its
// re-open of a VM's disks are made of.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { ATOMIC, BlockJobType, DISK_ONLY, ManagedSaveFlags, NO_METADATA } from '../src';
import { backingChain, snapshotXml, VmFleet } from './helpers/vms';

const fleet = new VmFleet();

beforeAll(() => fleet.connect());
afterAll(() => fleet.cleanup());

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('block pull', () => {
  it("copies the backing's data into the active layer and drops the backing", async () => {
    const vm = await fleet.start(1);
    const top = path.join(fleet.dir, `${vm.name}-vda.top.qcow2`);
    await vm.domain.snapshotCreateXML(snapshotXml({ vda: top }), DISK_ONLY | ATOMIC | NO_METADATA);
    expect(backingChain(top)).toEqual([top, vm.disks.vda]);

    await vm.domain.blockPull('vda');
    const types = new Set<number>();
    for (let job = await vm.domain.blockJobInfo('vda'); job; job = await vm.domain.blockJobInfo('vda')) {
      types.add(job.type);
      await sleep(20);
    }
    expect([...types].every((t) => t === BlockJobType.PULL)).toBe(true);
    for (let i = 0; i < 100 && (await vm.domain.xml()).includes('<backingStore type'); i++) await sleep(50);
    expect(await vm.domain.xml()).not.toContain(vm.disks.vda);
    await vm.domain.destroy();
    expect(backingChain(top)).toEqual([top]);
    // The base's data (its boot sector) is in the top now: the two read the same.
    execFileSync('qemu-img', ['compare', '-q', vm.disks.vda, top]);
    expect(execFileSync('qemu-img', ['map', '--output=json', top]).toString()).not.toContain('"depth": 1');
  });
});

describe('managed save', () => {
  it('stops the VM into its saved state; the next start restores it paused', async () => {
    const vm = await fleet.start(1);
    expect(await vm.domain.hasManagedSaveImage()).toBe(false);
    await vm.domain.managedSave(ManagedSaveFlags.PAUSED);
    expect((await vm.domain.state()).state).toBe('shutoff');
    expect(await vm.domain.hasManagedSaveImage()).toBe(true);
    await vm.domain.create();
    expect((await vm.domain.state()).state).toBe('paused');
    expect(await vm.domain.hasManagedSaveImage()).toBe(false);
    await vm.domain.resume();
    expect((await vm.domain.state()).state).toBe('running');
    await vm.domain.managedSave();
    await vm.domain.managedSaveRemove();
    expect(await vm.domain.hasManagedSaveImage()).toBe(false);
  });
});

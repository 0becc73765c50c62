import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { parseVmMetadata, renderVmMetadata } from '../../common/catalog';
import { createHostActivities } from '../../activities/host-activities';
import { BAD_INPUT } from '../../common/failures';
import { FakeHost } from '../helpers/fake-hosts';
import { uniqueId } from '../helpers/temporal';

/**
 * The host activities behind pins and restore-record release, on the in-memory hypervisor: they validate their own
 * input, a pin is honoured by the host's own deletion check (not only by the workflow's), and an in-place restore
 * is released only when the VM runs on it, removing only discarded layers nothing else uses.
 */
describe('pin and release host activities (fake hypervisor)', () => {
  let host: FakeHost;
  let stateDir: string;
  let acts: ReturnType<typeof createHostActivities>;

  beforeEach(() => {
    host = new FakeHost(uniqueId('pf'));
    stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-pin-state-'));
    acts = createHostActivities({ hypervisor: host.hypervisor, hostId: 'h1', stateDir });
  });

  afterEach(() => {
    host.cleanup();
    rmSync(stateDir, { recursive: true, force: true });
  });

  const hv = () => host.hypervisor;
  const meta = async (vm: string) => parseVmMetadata(await hv().getMetadata(vm));
  const badInput = async (p: Promise<unknown>, message: RegExp) => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: BAD_INPUT, nonRetryable: true });
    expect((err as Error).message).toMatch(message);
  };

  /** Snapshot `id` of one-disk VM `vm`, taken on the fake and catalogued by hand. */
  async function snapshot(vm: string, id: string): Promise<{ image: string; overlay: string }> {
    const image = host.chain(vm).at(-1)!;
    const overlay = join(host.dir, `${vm}.vda.${id}.qcow2`);
    await hv().snapshotDisks(vm, [{ target: 'vda', file: overlay }]);
    const m = await meta(vm);
    m.snapshots.push({
      snapshotId: id,
      group: 'g',
      createdAt: new Date().toISOString(),
      disks: [{ target: 'vda', image, overlay }],
    });
    await hv().setMetadata(vm, renderVmMetadata(m));
    return { image, overlay };
  }

  it('pins and unpins in the catalog; the host refuses to delete a pinned snapshot whatever the workflow checked', async () => {
    const vm = uniqueId('v');
    host.addVm(vm, 'running', 1);
    await snapshot(vm, 's1');
    expect(await acts.pinSnapshot({ domain: vm, snapshotId: 's1', pinned: true })).toMatchObject({ changed: true });
    expect((await meta(vm)).snapshots[0].pinned).toBe(true);
    expect(await acts.pinSnapshot({ domain: vm, snapshotId: 's1', pinned: true })).toMatchObject({ changed: false });
    const chain = host.chain(vm);
    await badInput(acts.deleteSnapshot({ owner: 'delete/s1', snapshotId: 's1', domain: vm }), /pinned on .*unpin/);
    expect(host.chain(vm)).toEqual(chain);

    await acts.pinSnapshot({ domain: vm, snapshotId: 's1', pinned: false });
    expect((await meta(vm)).snapshots[0].pinned).toBeUndefined();
    expect(await acts.deleteSnapshot({ owner: 'delete/s1', snapshotId: 's1', domain: vm })).toMatchObject({
      outcome: 'deleted',
    });
  });

  it('validates its own input and refuses unknown snapshots, changing nothing', async () => {
    const vm = uniqueId('v');
    host.addVm(vm, 'running', 1);
    await snapshot(vm, 's1');
    const before = await hv().getMetadata(vm);
    await badInput(acts.pinSnapshot({ domain: '../etc', snapshotId: 's1', pinned: true }), /VM name/);
    await badInput(acts.pinSnapshot({ domain: vm, snapshotId: '../s1', pinned: true }), /snapshot id/);
    await badInput(
      acts.pinSnapshot({ domain: vm, snapshotId: 's1', pinned: 'yes' as unknown as boolean }),
      /pinned must be true or false/,
    );
    await badInput(acts.pinSnapshot({ domain: vm, snapshotId: 's9', pinned: true }), /has no snapshot "s9"/);
    await badInput(acts.pinSnapshot({ domain: uniqueId('nope'), snapshotId: 's1', pinned: true }), /not found/);
    await badInput(acts.releaseInPlaceRestore({ domain: vm, restoreId: '../r' }), /restore id/);
    expect(await hv().getMetadata(vm)).toBe(before);
  });

  it('releases an in-place restore only when the VM runs on it, removing discarded layers nothing uses', async () => {
    const vm = uniqueId('v');
    host.addVm(vm, 'running', 1);
    await snapshot(vm, 's1');
    // Data written after s1 lives in a layer no snapshot records: the discarded layer once restored to s1.
    await snapshot(vm, 's2');
    const m = await meta(vm);
    m.snapshots = m.snapshots.filter((s) => s.snapshotId !== 's2'); // s2 deleted from the catalog only
    await hv().setMetadata(vm, renderVmMetadata(m));
    const discarded = host.chain(vm).at(-1)!;

    expect(await acts.releaseInPlaceRestore({ domain: vm, restoreId: 'rs-none' })).toMatchObject({
      outcome: 'absent',
    });
    const restored = await acts.restoreInPlace({ restoreId: 'rs-1', snapshotId: 's1', domain: vm });
    expect(restored.disks[0].discarded).toBe(discarded);
    expect((await meta(vm)).restores).toHaveLength(1);

    // The VM is moved back onto the discarded layer (as if the restore were undone by hand): refused.
    await hv().redefineDiskSources(vm, [{ target: 'vda', from: restored.disks[0].overlay, to: discarded }]);
    await badInput(acts.releaseInPlaceRestore({ domain: vm, restoreId: 'rs-1' }), /does not run on restore rs-1/);
    await hv().redefineDiskSources(vm, [{ target: 'vda', from: discarded, to: restored.disks[0].overlay }]);

    const rel = await acts.releaseInPlaceRestore({ domain: vm, restoreId: 'rs-1' });
    expect(rel).toMatchObject({ outcome: 'released', removed: [discarded], kept: [] });
    expect(hv().images.has(discarded)).toBe(false);
    expect((await meta(vm)).restores).toEqual([]);
    expect(host.chain(vm).at(-1)).toBe(restored.disks[0].overlay);
    // Released twice: nothing left to do.
    expect(await acts.releaseInPlaceRestore({ domain: vm, restoreId: 'rs-1' })).toMatchObject({ outcome: 'absent' });
  });
});

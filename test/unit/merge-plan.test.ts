import type { HostVm } from '../../common/dr-types';
import { deletionBlockers } from '../../common/groups';
import { planLayerMerge, type MergeFacts } from '../../activities/merge-plan';

// A disk's chain after three snapshots s1, s2, s3 (active layer first): base <- o1 <- o2 <- o3 (active).
const base = '/img/vm.qcow2';
const o1 = '/img/vm.vda.s1.qcow2';
const o2 = '/img/vm.vda.s2.qcow2';
const o3 = '/img/vm.vda.s3.qcow2';
const chain = [o3, o2, o1, base];

const facts = (f: Partial<MergeFacts> & Pick<MergeFacts, 'image' | 'overlay'>): MergeFacts => ({
  chain,
  live: true,
  overlayExists: true,
  ...f,
});

describe('planLayerMerge (the layer merge of a snapshot deletion on one disk)', () => {
  it('top layer: an online active commit when the VM runs, offline commit and disk redefinition when it is off', () => {
    expect(planLayerMerge(facts({ image: o2, overlay: o3 }))).toEqual([{ op: 'commitActive' }]);
    expect(planLayerMerge(facts({ image: o2, overlay: o3, live: false }))).toEqual([
      { op: 'commitImage' },
      { op: 'redefineDisk' },
    ]);
  });

  it('middle layer: an online layer commit, or offline commit then the layer above rebased onto the image', () => {
    const child = { file: o3, exists: true, backing: o2 };
    expect(planLayerMerge(facts({ image: o1, overlay: o2, child }))).toEqual([{ op: 'commitLayer' }]);
    expect(planLayerMerge(facts({ image: o1, overlay: o2, child, live: false }))).toEqual([
      { op: 'commitImage' },
      { op: 'rebase', file: o3 },
    ]);
  });

  it('base: the oldest snapshot merges its layer into the base image, the next layer rebased onto the base', () => {
    const child = { file: o2, exists: true, backing: o1 };
    expect(planLayerMerge(facts({ image: base, overlay: o1, child }))).toEqual([{ op: 'commitLayer' }]);
    expect(planLayerMerge(facts({ image: base, overlay: o1, child, live: false }))).toEqual([
      { op: 'commitImage' },
      { op: 'rebase', file: o2 },
    ]);
    // The only snapshot of a VM: its layer is the active one, right over the base.
    expect(planLayerMerge(facts({ image: base, overlay: o1, chain: [o1, base] }))).toEqual([{ op: 'commitActive' }]);
  });

  it('merged before a crash (the image in the chain, the layer not): nothing more to do, also when run again', () => {
    const after = [o3, o1, base]; // o2 merged into o1, o3 rebased onto o1
    expect(
      planLayerMerge(facts({ image: o1, overlay: o2, chain: after, child: { file: o3, exists: true, backing: o1 } })),
    ).toEqual([]);
  });

  it('refuses a chain that is not what the catalog says, so nothing is merged into the wrong image', () => {
    expect(() => planLayerMerge(facts({ image: o1, overlay: o3 }))).toThrow(/active layer .* is backed by .*s2/);
    expect(() => planLayerMerge(facts({ image: base, overlay: o2 }))).toThrow(
      /is backed by .*s1.*, not \/img\/vm.qcow2/,
    );
    // The layer left the chain but the next layer still reads it: an inconsistent chain.
    const after = [o3, o1, base];
    expect(() =>
      planLayerMerge(facts({ image: o1, overlay: o2, chain: after, child: { file: o3, exists: true, backing: o2 } })),
    ).toThrow(/still backed by/);
  });

  it('a branch an in-place restore left: offline commit and rebase of the next layer, never an online commit', () => {
    const running = ['/img/vm.vda.restore-r1.qcow2', o1, base]; // the VM now runs on a restore of s1
    const child = { file: o3, exists: true, backing: o2 };
    expect(planLayerMerge(facts({ image: '/img/other.qcow2', overlay: o2, chain: running, child }))).toEqual([
      { op: 'commitImage' },
      { op: 'rebase', file: o3 },
    ]);
    // Its top layer (the discarded active layer): a commit only while the layer is there.
    expect(planLayerMerge(facts({ image: '/img/x.qcow2', overlay: o3, chain: running }))).toEqual([
      { op: 'commitImage' },
    ]);
    expect(planLayerMerge(facts({ image: '/img/x.qcow2', overlay: o3, chain: running, overlayExists: false }))).toEqual(
      [],
    );
    // A next layer backed by neither the layer nor the image: refused.
    expect(() =>
      planLayerMerge(
        facts({ image: '/img/x.qcow2', overlay: o2, chain: running, child: { file: o3, exists: true, backing: base } }),
      ),
    ).toThrow(/neither/);
  });
});

describe('deletionBlockers (the one rule of what keeps a snapshot from being deleted)', () => {
  const vm = (over: Partial<HostVm> = {}): HostVm => ({
    domain: 'db-1',
    uuid: 'u',
    state: 'running',
    tags: [],
    snapshots: [
      { snapshotId: 's1', group: 'g', createdAt: 't1', disks: [{ target: 'vda', image: base, overlay: o1 }] },
      { snapshotId: 's2', group: 'g', createdAt: 't2', disks: [{ target: 'vda', image: o1, overlay: o2 }] },
    ],
    clones: [],
    restores: [],
    ...over,
  });

  it('nothing blocks a plain snapshot, or one that is not there', () => {
    expect(deletionBlockers(vm(), 's1')).toEqual([]);
    expect(deletionBlockers(vm(), 'nope')).toEqual([]);
  });

  it('a pinned snapshot is blocked until unpinned', () => {
    const v = vm();
    v.snapshots[0].pinned = true;
    expect(deletionBlockers(v, 's1')).toEqual(['snapshot s1 is pinned on db-1: unpin it first']);
    expect(deletionBlockers(v, 's2')).toEqual([]);
  });

  it('a clone or in-place restore on the snapshot image or on its layer blocks it; one on another snapshot does not', () => {
    const clone = {
      name: 'c1',
      snapshotId: 's2',
      createdAt: 't',
      disks: [{ target: 'vda', image: o1, overlay: '/c' }],
    };
    const v = vm({ clones: [clone] });
    // s2's image is o1; s1's layer is o1 too: merging s1 would change what the clone reads.
    expect(deletionBlockers(v, 's2')).toEqual([
      'clone c1 of db-1 is built on it (snapshot s2): remove the clone first',
    ]);
    expect(deletionBlockers(v, 's1')).toHaveLength(1);
    const restore = {
      restoreId: 'r1',
      snapshotId: 's1',
      createdAt: 't',
      disks: [{ target: 'vda', image: base, overlay: '/r', discarded: o2 }],
    };
    const w = vm({ restores: [restore] });
    expect(deletionBlockers(w, 's1')).toEqual([
      'the in-place restore r1 of db-1 (to snapshot s1) is built on it: remove that restore record first',
    ]);
    expect(deletionBlockers(w, 's2')).toEqual([]);
  });
});

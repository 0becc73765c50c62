/**
 * The layer-merge plan of a snapshot deletion on one disk, decided from what was read of the disk's chain: pure, so
 * every case (top layer, middle layer, a branch an in-place restore left, a merge finished before a crash) is tested
 * without a hypervisor (test/unit/merge-plan.test.ts). The deletion activity reads the facts and runs the steps.
 */

/** What the plan is made from: one disk of one VM, and the snapshot's image and layer on it. */
export interface MergeFacts {
  /** The snapshot's image: the layer is merged into it. */
  image: string;
  /** The layer created on top of `image` by the snapshot: merged out and then removed. */
  overlay: string;
  /** The VM's chain on this disk, active layer first (empty when the disk has no file). */
  chain: string[];
  /** The VM runs (or is paused): merges of its chain are online block commits. */
  live: boolean;
  /** The next snapshot's layer over `overlay` on this disk (its image is `overlay`), if a snapshot was taken after. */
  child?: { file: string; exists: boolean; backing?: string };
  overlayExists: boolean;
}

export type MergeStep =
  /** Online: commit the VM's active layer (`overlay`) into `image` and pivot the disk to it. */
  | { op: 'commitActive' }
  /** Online: commit the middle layer `overlay` of the VM's chain into `image` (the layer above is rebased). */
  | { op: 'commitLayer' }
  /** Offline: `qemu-img commit` of `overlay` into `image`. */
  | { op: 'commitImage' }
  /** The stopped VM's disk definition from `overlay` to `image`. */
  | { op: 'redefineDisk' }
  /** `file`, backed by `overlay`, rebased onto `image` (unsafe rebase: the content is the same once committed). */
  | { op: 'rebase'; file: string };

/**
 * The steps that merge `overlay` into `image`, in order; empty when there is nothing left to merge (done before a
 * crash, or the layer is gone). Running the steps and then the plan again converges.
 * @throws Error when the chain is not what the catalog says (nothing may be merged then).
 */
export function planLayerMerge(f: MergeFacts): MergeStep[] {
  const { image, overlay, chain, live, child } = f;
  const i = chain.indexOf(overlay);
  if (i === 0) {
    // The layer is the active one.
    if (chain[1] !== image) throw new Error(`active layer ${overlay} is backed by ${chain[1]}, not ${image}`);
    return live ? [{ op: 'commitActive' }] : [{ op: 'commitImage' }, { op: 'redefineDisk' }];
  }
  if (i > 0) {
    // A middle layer of the VM's chain: the layer above it is the next snapshot's overlay (or a restore's).
    if (chain[i + 1] !== image) throw new Error(`layer ${overlay} is backed by ${chain[i + 1]}, not ${image}`);
    return live ? [{ op: 'commitLayer' }] : [{ op: 'commitImage' }, { op: 'rebase', file: chain[i - 1] }];
  }
  if (chain.includes(image)) {
    // The image is in the VM's chain and the layer is not: merged and pivoted (or rebased) before a crash.
    if (child && child.backing === overlay)
      throw new Error(
        `${child.file} is still backed by ${overlay}, which is not in the VM's chain: inconsistent chain`,
      );
    return [];
  }
  if (child?.exists) {
    // A branch the VM no longer runs on (left by an in-place restore): offline merge, then rebase the child.
    if (child.backing === overlay) return [{ op: 'commitImage' }, { op: 'rebase', file: child.file }];
    if (child.backing !== image)
      throw new Error(`${child.file} is backed by ${child.backing ?? 'nothing'}, neither ${overlay} nor ${image}`);
    return [];
  }
  // The top of a discarded branch: only this layer reads the image, so the commit can be repeated safely.
  return f.overlayExists ? [{ op: 'commitImage' }] : [];
}

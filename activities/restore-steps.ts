/** What both restores (as clones, in place) share: the checks of a restorable snapshot, the run's lease, overlays. */
import type { VmMetadata } from '../common/catalog';
import { ImageNotFoundError } from '../hypervisor/images';
import { errorText, type DrContext } from './dr-context';
import { badInput, failIf } from './input-checks';
import { failure } from '../common/failures';

/** Lease of a restore step, renewed while it runs (the workflow took it for the whole restore). */
const RESTORE_LEASE_MS = 30 * 60_000;

function snapshotsText(meta: VmMetadata): string {
  const ids = meta.snapshots.map((s) => s.snapshotId);
  return ids.length ? `known: ${ids.slice(0, 10).join(', ')}${ids.length > 10 ? ', ...' : ''}` : 'it has none';
}

export function restoreSteps(ctx: DrContext) {
  const { hypervisor, locks, log } = ctx;

  /**
   * The checks shared by both restores: the VM exists, the snapshot is catalogued on it and complete, its disks are
   * still on the VM and its images exist. Returns the VM, its metadata, the snapshot and each image's format.
   */
  async function restorable(domain: string, snapshotId: string) {
    const desc = await ctx.describeOrBad(domain);
    const meta = await ctx.readMeta(domain);
    const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
    if (!snap) throw badInput(`VM ${domain} has no snapshot ${JSON.stringify(snapshotId)} (${snapshotsText(meta)})`);
    if (snap.deleting)
      throw badInput(`snapshot ${snapshotId} of ${domain} is being deleted (partly merged): it cannot be restored`);
    if (snap.disks.length === 0) throw badInput(`snapshot ${snapshotId} of ${domain} has no disks`);
    const problems: string[] = [];
    const missing: string[] = [];
    const formats = new Map<string, string>();
    for (const d of snap.disks) {
      if (!desc.disks.some((k) => k.target === d.target))
        problems.push(`disk ${d.target} of snapshot ${snapshotId} is no longer on VM ${domain}`);
      try {
        formats.set(d.image, (await hypervisor.imageInfo(d.image)).format);
      } catch (err) {
        if (!(err instanceof ImageNotFoundError)) throw err;
        missing.push(`disk ${d.target}: ${d.image}`);
      }
    }
    if (missing.length > 0)
      problems.unshift(
        `restore of a snapshot whose images are gone (${snapshotId} of ${domain}): ${missing.join(', ')}`,
      );
    failIf(problems);
    return { desc, meta, snap, formats };
  }

  /**
   * Runs a restore step under its run's lease of `domain` (when the workflow gives one): checked first, renewed while
   * it runs; a step whose run lost the lease changes nothing.
   */
  async function underLease<T>(owner: string | undefined, domain: string, fn: () => Promise<T>): Promise<T> {
    if (owner === undefined) return fn();
    try {
      locks.renew(owner, [domain], RESTORE_LEASE_MS);
    } catch (err) {
      throw failure('leaseLost', errorText(err));
    }
    const stop = locks.keepAlive(owner, [domain], RESTORE_LEASE_MS, (err) =>
      log('lease lost during a restore step', { domain, owner, error: errorText(err) }),
    );
    try {
      return await fn();
    } finally {
      stop();
    }
  }

  /** Creates the restore's overlay over `image`, unless a retry finds it there already. */
  async function ensureOverlay(d: { image: string; overlay: string }, formats: Map<string, string>): Promise<void> {
    if (!(await ctx.imageExists(d.overlay)))
      await hypervisor.createOverlay(d.overlay, d.image, formats.get(d.image) ?? 'qcow2');
    else if ((await ctx.backingOf(d.overlay)) !== d.image)
      throw new Error(`${d.overlay} exists but is not an overlay of ${d.image}`);
  }

  return { restorable, underLease, ensureOverlay };
}

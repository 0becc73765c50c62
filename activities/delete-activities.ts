import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { manifestPath, type VmMetadata } from '../common/catalog';
import type { DeleteSnapshotRequest, DeleteVmReport, VmSnapshotRecord } from '../common/dr-types';
import { deletionBlockers } from '../common/groups';
import { LockBusyError } from './domain-locks';
import { errorText, isLive, type DrContext } from './dr-context';
import { exportHoldBlockers } from './export-hold';
import { beating, heartbeat } from './heartbeat';
import { badInput, checkDomain, checkName, checkOwner, failIf } from './input-checks';
import { planLayerMerge, type MergeStep } from './merge-plan';
import { failure } from '../common/failures';

/** Rewrites the manifests of the snapshots in `changed` with their disks as the catalog now has them. */
function rewriteManifests(ctx: DrContext, domain: string, meta: VmMetadata, changed: Set<string>): void {
  for (const s of meta.snapshots) {
    if (!changed.has(s.snapshotId) || s.disks.length === 0) continue;
    const file = manifestPath(dirname(s.disks[0].image), domain, s.snapshotId);
    try {
      if (!existsSync(file)) continue;
      const doc = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
      writeFileSync(file, JSON.stringify({ ...doc, disks: s.disks }, null, 2) + '\n');
    } catch (err) {
      ctx.log('cannot rewrite snapshot manifest', { file, error: errorText(err) });
    }
  }
}

/** Runs one step of a {@link planLayerMerge} plan. */
async function runStep(
  ctx: DrContext,
  step: MergeStep,
  domain: string,
  target: string,
  image: string,
  overlay: string,
) {
  switch (step.op) {
    case 'commitActive':
      return ctx.hypervisor.commitActive(domain, target, image);
    case 'commitLayer':
      return ctx.hypervisor.commitLayer(domain, target, overlay, image);
    case 'commitImage':
      return ctx.hypervisor.commitImage(overlay, image);
    case 'redefineDisk':
      return ctx.hypervisor.redefineDiskSources(domain, [{ target, from: overlay, to: image }]);
    case 'rebase':
      return ctx.hypervisor.rebaseImage(step.file, image, (await ctx.hypervisor.imageInfo(image)).format);
  }
}

/**
 * Merges the layer above snapshot `snap`'s image of one disk into that image, points whatever used the layer at the
 * image, removes the layer and records it in the catalog (the disk leaves the snapshot's record). Converges when
 * retried after a crash at any point.
 * @returns the files removed
 */
async function deleteDisk(ctx: DrContext, domain: string, snap: VmSnapshotRecord, target: string): Promise<string[]> {
  const disk = snap.disks.find((d) => d.target === target)!;
  const { image, overlay } = disk;
  const { hypervisor, log, readMeta, updateMeta } = ctx;
  const meta = await readMeta(domain);
  let desc = await hypervisor.describe(domain);
  if (isLive(desc.state)) {
    // A commit a dead worker left running on this disk is finished (or aborted) before a new one starts.
    await ctx.settleBlockJob(domain, target);
    desc = await hypervisor.describe(domain);
  }
  const chain = await ctx.chainOf(desc.disks.find((k) => k.target === target)?.source);
  const next = meta.snapshots.find(
    (s) => s.snapshotId !== snap.snapshotId && s.disks.some((d) => d.target === target && d.image === overlay),
  );
  const childFile = next?.disks.find((d) => d.target === target)!.overlay;
  const child =
    childFile === undefined
      ? undefined
      : { file: childFile, exists: await ctx.imageExists(childFile), backing: await ctx.backingOf(childFile) };
  const plan = planLayerMerge({
    image,
    overlay,
    chain,
    live: isLive(desc.state),
    child,
    overlayExists: await ctx.imageExists(overlay),
  });
  heartbeat({ domain, target });
  for (const step of plan) await runStep(ctx, step, domain, target, image, overlay);
  // Merged: nothing may read the layer any more.
  const after = await ctx.chainOf((await hypervisor.describe(domain)).disks.find((k) => k.target === target)?.source);
  if (after.includes(overlay)) throw new Error(`${overlay} is still in the chain of ${domain} ${target}`);
  const removed: string[] = [];
  if (await ctx.imageExists(overlay)) {
    await hypervisor.removeImage(overlay);
    removed.push(overlay);
  }
  const changed = new Set<string>();
  const updated = await updateMeta(domain, (m) => {
    for (const s of m.snapshots) {
      if (s.snapshotId === snap.snapshotId) {
        s.disks = s.disks.filter((d) => d.target !== target);
        continue;
      }
      for (const d of s.disks)
        if (d.target === target && d.image === overlay) {
          d.image = image;
          changed.add(s.snapshotId);
        }
    }
    for (const r of m.restores)
      for (const d of r.disks) if (d.target === target && d.discarded === overlay) d.discarded = image;
  });
  rewriteManifests(ctx, domain, updated, changed);
  log('snapshot layer merged', { domain, snapshotId: snap.snapshotId, target, image, overlay });
  return removed;
}

/** Deletes the snapshot of one VM under its lease: marks it, merges each disk's layer, then drops it from the catalog. */
async function deleteLocked(ctx: DrContext, req: DeleteSnapshotRequest): Promise<DeleteVmReport> {
  const { hostId, log, updateMeta } = ctx;
  const { domain, snapshotId } = req;
  const removed: string[] = [];
  // Checked again under the lease, and marked: restores refuse it from now on.
  let blockers: string[] = [];
  let marked = false;
  const held = (s: VmSnapshotRecord) =>
    exportHoldBlockers(
      hostId,
      domain,
      s.disks.flatMap((d) => [d.image, d.overlay]),
    );
  const meta = await updateMeta(domain, (m) => {
    const s = m.snapshots.find((x) => x.snapshotId === snapshotId);
    if (!s) return;
    blockers = deletionBlockers({ domain, ...m }, snapshotId);
    // Local retention must not merge a layer an export still reads (activities/export-hold.ts).
    blockers.push(...held(s));
    if (blockers.length === 0 && !s.deleting) marked = s.deleting = true;
  });
  const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
  if (!snap) return { domain, outcome: 'absent', removed };
  if (blockers.length === 0) {
    // An export may have taken its hold between the check and the mark: it looks at the mark only after taking
    // its hold, so looking at the holds again now, after the mark, leaves no gap (one of the two gives up).
    blockers = held(snap);
    if (blockers.length > 0 && marked) {
      await updateMeta(domain, (m) => {
        const s = m.snapshots.find((x) => x.snapshotId === snapshotId);
        if (s) delete s.deleting;
      });
    }
  }
  if (blockers.length > 0) throw badInput(`snapshot ${snapshotId} cannot be deleted: ${blockers.join('; ')}`);
  const dirs = [...new Set(snap.disks.map((d) => dirname(d.image)))];
  for (const d of [...snap.disks]) {
    try {
      removed.push(...(await deleteDisk(ctx, domain, snap, d.target)));
    } catch (err) {
      log('snapshot deletion failed', { domain, snapshotId, target: d.target, error: errorText(err) });
      return { domain, outcome: 'failed', removed, error: `disk ${d.target}: ${errorText(err)}` };
    }
  }
  await updateMeta(domain, (m) => {
    m.snapshots = m.snapshots.filter((s) => s.snapshotId !== snapshotId);
  });
  for (const dir of dirs) {
    const manifest = manifestPath(dir, domain, snapshotId);
    if (existsSync(manifest)) {
      rmSync(manifest, { force: true });
      removed.push(manifest);
    }
  }
  log('snapshot deleted', { domain, snapshotId, removed });
  return { domain, outcome: 'deleted', removed };
}

/** Deletion of a snapshot on one VM: its layers merged into its images, one disk at a time, under the VM's lease. */
export function createDeleteActivities(ctx: DrContext) {
  const { locks, log, readMeta } = ctx;
  const leaseMs = ctx.deleteLeaseMs ?? 600_000;

  return {
    /**
     * Deletes snapshot `snapshotId` from one VM: on each disk the layer above the snapshot's image is merged into it
     * (online block commit when the VM runs on it, offline `qemu-img commit` otherwise) and removed, and what used
     * that layer (the next snapshot, an in-place restore's discarded branch, the active disk) uses the image instead.
     * Holds the VM's lease meanwhile. `absent` when the snapshot is not (or no longer) catalogued on the VM.
     */
    async deleteSnapshot(req: DeleteSnapshotRequest): Promise<DeleteVmReport> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkName('snapshot id', req.snapshotId, problems);
      checkOwner(req.owner, problems);
      failIf(problems);
      const { domain, snapshotId, owner } = req;
      const desc = await ctx.describeOrBad(domain);
      const meta = await readMeta(domain);
      const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
      if (!snap) return { domain, outcome: 'absent', removed: [] };
      const blockers = deletionBlockers({ domain, ...meta }, snapshotId);
      if (blockers.length > 0) throw badInput(`snapshot ${snapshotId} cannot be deleted: ${blockers.join('; ')}`);
      if (desc.state === 'other')
        throw badInput(`VM ${domain} is in a state where its disks cannot be merged: start or stop it first`);

      const held = locks.holder(domain) === owner;
      try {
        locks.acquire(owner, [domain], leaseMs);
      } catch (err) {
        if (err instanceof LockBusyError) throw failure('leaseBusy', err.message);
        throw err;
      }
      const stop = locks.keepAlive(owner, [domain], leaseMs, (err) =>
        log('cannot renew the lease', { domain, owner, error: errorText(err) }),
      );
      try {
        return await beating(() => deleteLocked(ctx, req));
      } finally {
        stop();
        if (!held) locks.release(owner, [domain]);
      }
    },
  };
}

import { dirname, join } from 'node:path';
import type { InPlaceReport, InPlaceRequest, InPlaceRestoreRecord, UndoInPlaceRequest } from '../common/dr-types';
import { safeFileName } from '../common/names';
import { isLive, type DrContext } from './dr-context';
import { beating } from './heartbeat';
import { badInput, checkDomain, checkName, checkOwner, failIf } from './input-checks';
import { restoreSteps } from './restore-steps';

/** Restore in place: a VM's disks moved onto new overlays over a snapshot's images, and the undo of that. */
export function createInPlaceActivities(ctx: DrContext) {
  const { hypervisor, log, updateMeta } = ctx;
  const { restorable, underLease, ensureOverlay } = restoreSteps(ctx);

  return {
    /**
     * Restores a VM to one of its snapshots in place: powers it off (hard) if it runs, puts each snapshotted disk on
     * a new overlay `<image dir>/<domain>.<target>.restore-<restoreId>.qcow2` over the snapshot's image (the old
     * active layer is kept as `discarded`), and starts it again if it was running (or paused: started paused).
     */
    async restoreInPlace(req: InPlaceRequest): Promise<InPlaceReport> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkName('restore id', req.restoreId, problems);
      checkName('snapshot id', req.snapshotId, problems);
      if (req.leaseOwner !== undefined) checkOwner(req.leaseOwner, problems);
      failIf(problems);
      return underLease(req.leaseOwner, req.domain, async () => {
        const { domain, restoreId, snapshotId } = req;
        const { desc, meta, snap, formats } = await restorable(domain, snapshotId);
        let record = meta.restores.find((r) => r.restoreId === restoreId);
        if (record && record.snapshotId !== snapshotId)
          throw badInput(`restore ${restoreId} of ${domain} already restored snapshot ${record.snapshotId}`);
        if (!record) {
          if (desc.state === 'other')
            throw badInput(`VM ${domain} is in a state that cannot be restored: start or stop it`);
          if (!desc.persistent)
            throw badInput(`VM ${domain} is transient: it would vanish when stopped for the restore`);
          const disks = snap.disks.map((d) => ({
            target: d.target,
            image: d.image,
            overlay: join(dirname(d.image), `${safeFileName(domain)}.${d.target}.restore-${restoreId}.qcow2`),
            discarded: desc.disks.find((k) => k.target === d.target)!.source!,
          }));
          const restoreProblems: string[] = [];
          for (const d of disks) {
            if (!d.discarded) restoreProblems.push(`disk ${d.target} of ${domain} has no file source`);
            if (await ctx.imageExists(d.overlay))
              restoreProblems.push(`the restore's disk file ${d.overlay} already exists`);
          }
          failIf(restoreProblems);
          const rec: InPlaceRestoreRecord = {
            restoreId,
            snapshotId,
            createdAt: new Date().toISOString(),
            stateBefore: desc.state,
            disks,
          };
          await updateMeta(domain, (m) => {
            if (!m.restores.some((r) => r.restoreId === restoreId)) m.restores.push(rec);
          });
          record = rec;
        }
        const rec = record;
        const stateBefore = rec.stateBefore ?? 'shutoff';
        return beating(async () => {
          let now = await hypervisor.describe(domain);
          const source = (t: string) => now.disks.find((k) => k.target === t)?.source;
          const pending = rec.disks.filter((d) => source(d.target) !== d.overlay);
          for (const d of pending)
            if (source(d.target) !== d.discarded)
              throw new Error(
                `disk ${d.target} of ${domain} is on ${source(d.target)}, neither ${d.discarded} nor ${d.overlay}`,
              );
          if (pending.length > 0) {
            if (isLive(now.state)) await hypervisor.destroy(domain);
            for (const d of pending) await ensureOverlay(d, formats);
            await hypervisor.redefineDiskSources(
              domain,
              pending.map((d) => ({ target: d.target, from: d.discarded, to: d.overlay })),
            );
            now = await hypervisor.describe(domain);
          }
          if (isLive(stateBefore) && now.state === 'shutoff')
            await hypervisor.start(domain, { paused: stateBefore === 'paused' });
          const state = await hypervisor.state(domain);
          log('restored in place', { domain, restoreId, snapshotId, stateBefore, state });
          return { domain, stateBefore, state, disks: rec.disks };
        });
      });
    },

    /**
     * Undoes `restoreInPlace` (compensation): disks back on their discarded layers, the VM back in its power state
     * from before, the restore's overlays and record removed. A no-op when the VM has no record of that restore.
     */
    async undoInPlace(req: UndoInPlaceRequest): Promise<void> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkName('restore id', req.restoreId, problems);
      failIf(problems);
      const { domain, restoreId } = req;
      const meta = await ctx.readMetaIfAny(domain);
      const rec = meta?.restores.find((r) => r.restoreId === restoreId);
      if (!meta || !rec) return;
      const overlays = new Set(rec.disks.map((d) => d.overlay));
      const built = meta.snapshots.filter((s) => s.disks.some((d) => overlays.has(d.image)));
      if (built.length > 0)
        throw badInput(
          `restore ${restoreId} of ${domain} cannot be undone: snapshot(s) ` +
            `${built.map((s) => s.snapshotId).join(', ')} were taken on it since`,
        );
      await beating(async () => {
        let now = await hypervisor.describe(domain);
        const source = (t: string) => now.disks.find((k) => k.target === t)?.source;
        const pending = rec.disks.filter((d) => source(d.target) === d.overlay);
        for (const d of rec.disks)
          if (source(d.target) !== d.overlay && source(d.target) !== d.discarded)
            throw new Error(
              `disk ${d.target} of ${domain} is on ${source(d.target)}, neither ${d.overlay} nor ${d.discarded}`,
            );
        if (pending.length > 0) {
          if (isLive(now.state)) await hypervisor.destroy(domain);
          await hypervisor.redefineDiskSources(
            domain,
            pending.map((d) => ({ target: d.target, from: d.overlay, to: d.discarded })),
          );
          now = await hypervisor.describe(domain);
        }
        const before = rec.stateBefore ?? 'shutoff';
        if (isLive(before) && now.state === 'shutoff') await hypervisor.start(domain, { paused: before === 'paused' });
        for (const d of rec.disks) await hypervisor.removeImage(d.overlay);
        await updateMeta(domain, (m) => {
          m.restores = m.restores.filter((r) => r.restoreId !== restoreId);
        });
      });
      log('in-place restore undone', { domain, restoreId });
    },
  };
}

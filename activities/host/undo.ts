/**
 * Undo of a run's snapshot on this host (compensation): out of the catalog, then out of each disk's chain (active
 * commit and pivot, or redefinition when shut off), then the overlay files removed. Waits for a freeze of the same run
 * still running here (see {@link UndoMemory}).
 */
import { existsSync, rmSync } from 'node:fs';
import type { UndoRequest, UndoVmReport } from '../../common/host-types';
import type { DiskSnapshot } from '../../common/types';
import { DomainNotFoundError } from '../../hypervisor/errors';
import type { DomainDescription } from '../../hypervisor/hypervisor';
import { beating, heartbeat } from '../heartbeat';
import { checkName, checkOwner, failIf } from '../input-checks';
import { uncatalog } from './catalog';
import { message, type HostContext } from './context';
import { LEASE_TTL_MS, retake } from './leases';
import { checkVmDisks } from './overlays';
import { runKey, type UndoMemory } from './undo-memory';

/** Ends a block job left on a disk by a worker that died mid-commit: pivots a finished active commit, else aborts. */
export async function settleBlockJob(ctx: HostContext, domain: string, target: string): Promise<void> {
  const job = await ctx.hypervisor.blockJob(domain, target);
  if (!job) return;
  const how = job.type === 'active-commit' && job.ready ? 'pivot' : 'abort';
  ctx.log('ending a block job left by an interrupted worker', { domain, target, job, how });
  await ctx.hypervisor.endBlockJob(domain, target, how);
}

/** Takes one VM's overlays of `snapshotId` out of its chains and removes them; what it could not do is reported. */
export async function undoOne(
  ctx: HostContext,
  snapshotId: string,
  domain: string,
  disks: DiskSnapshot[],
): Promise<UndoVmReport> {
  const { hypervisor } = ctx;
  const report: UndoVmReport = {
    domain,
    hadSnapshot: disks.some((d) => existsSync(d.overlay)),
    rolledBack: false,
    cleanupPending: [],
  };
  let desc: DomainDescription;
  try {
    desc = await hypervisor.describe(domain);
  } catch (err) {
    report.error = message(err);
    report.cleanupPending = disks.map((d) => d.overlay).filter((f) => existsSync(f));
    ctx.logPhase('undo', snapshotId, domain, { hadSnapshot: report.hadSnapshot, error: report.error });
    return report;
  }
  const errors: string[] = [];
  const toRedefine: { target: string; from: string; to: string }[] = [];
  for (const disk of disks) {
    let active = desc.disks.find((d) => d.target === disk.target)?.source;
    if (active === disk.overlay && desc.state !== 'shutoff') {
      // A commit a dead worker left running on this disk is finished (or aborted) before a new one starts.
      try {
        await settleBlockJob(ctx, domain, disk.target);
        active = (await hypervisor.describe(domain)).disks.find((d) => d.target === disk.target)?.source;
      } catch (err) {
        errors.push(`${disk.target}: ${message(err)}`);
        report.cleanupPending.push(disk.overlay);
        continue;
      }
    }
    if (active === disk.overlay) {
      // Only ever merged into the file directly under it, which must be the image the request names.
      const backing = (await hypervisor.imageInfo(disk.overlay).catch(() => undefined))?.backing;
      if (backing !== disk.image) {
        errors.push(`${disk.target}: ${disk.overlay} is backed by ${backing ?? 'nothing'}, not ${disk.image}`);
        report.cleanupPending.push(disk.overlay);
        continue;
      }
      if (desc.state === 'shutoff') {
        toRedefine.push({ target: disk.target, from: disk.overlay, to: disk.image });
        continue;
      }
      try {
        heartbeat({ domain, target: disk.target });
        await hypervisor.commitActive(domain, disk.target, disk.image);
      } catch (err) {
        errors.push(`${disk.target}: ${message(err)}`);
        report.cleanupPending.push(disk.overlay);
        continue;
      }
    } else if (active !== disk.image) {
      // The chain moved on since (someone else changed it): do not touch it.
      if (existsSync(disk.overlay)) report.cleanupPending.push(disk.overlay);
      errors.push(`${disk.target}: active image is ${active}, neither ${disk.image} nor ${disk.overlay}`);
      continue;
    }
    if (!toRedefine.some((r) => r.target === disk.target)) rmSync(disk.overlay, { force: true });
  }
  if (toRedefine.length > 0) {
    try {
      await hypervisor.redefineDiskSources(domain, toRedefine);
      for (const r of toRedefine) rmSync(r.from, { force: true });
    } catch (err) {
      errors.push(message(err));
      report.cleanupPending.push(...toRedefine.map((r) => r.from));
    }
  }
  report.rolledBack = errors.length === 0;
  if (errors.length > 0) report.error = errors.join('; ');
  ctx.logPhase('undo', snapshotId, domain, {
    hadSnapshot: report.hadSnapshot,
    ...(report.error ? { error: report.error } : {}),
  });
  return report;
}

/** The undo activity, `undoSnapshots`. */
export function createUndoActivities(ctx: HostContext) {
  const { locks, log, undo } = ctx;
  return {
    /** Undoes this snapshot's overlays: active commit + pivot (or redefinition when shut off), then removal. */
    async undoSnapshots(req: UndoRequest): Promise<UndoVmReport[]> {
      const problems: string[] = [];
      checkName('snapshot id', req.snapshotId, problems);
      checkOwner(req.leaseOwner, problems);
      checkVmDisks(req.vms, req.snapshotId, problems);
      failIf(problems);
      const domains = req.vms.map((v) => v.domain);
      retake(ctx, req.leaseOwner, domains);
      const stop = locks.keepAlive(req.leaseOwner, domains, LEASE_TTL_MS, (err) =>
        log('lease lost during undo', { snapshotId: req.snapshotId, error: message(err) }),
      );
      try {
        return await beating(async () => {
          await stopFreezeOf(ctx, undo, req);
          const out: UndoVmReport[] = [];
          for (const vm of req.vms) {
            // Out of the catalog first (and barred from coming back), then out of the chain.
            await uncatalog(ctx, req.snapshotId, req.leaseOwner, vm.domain, vm.disks).catch((err) => {
              if (!(err instanceof DomainNotFoundError)) throw err;
            });
            out.push(await undoOne(ctx, req.snapshotId, vm.domain, vm.disks));
          }
          return out;
        });
      } finally {
        stop();
      }
    },
  };
}

/** Marks the run's undo started (its freeze takes no more snapshots) and waits for its freeze still running here. */
async function stopFreezeOf(ctx: HostContext, undo: UndoMemory, req: UndoRequest): Promise<void> {
  undo.startUndo(runKey(req));
  const running = undo.runningFreeze(runKey(req));
  if (running) {
    ctx.log('undo waits for a freeze of the same snapshot still running here', { snapshotId: req.snapshotId });
    await running.catch(() => undefined);
  }
}

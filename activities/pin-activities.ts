import { imageChain } from '../hypervisor/chain';
import { ApplicationFailure } from '@temporalio/common';
import type { PinSnapshotReport, PinSnapshotRequest, ReleaseInPlaceReport } from '../common/dr-types';
import { failure } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { DomainNotFoundError } from '../hypervisor/errors';
import type { Hypervisor } from '../hypervisor/hypervisor';
import type { VmMetadata } from '../common/catalog';

export interface PinActivityDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /**
   * Read-modify-write of a VM's groupsnap metadata, serialised per VM with every other catalog update of this host
   * (the one in activities/dr-activities.ts); `fn` may throw to leave the metadata unchanged.
   */
  updateMeta: (domain: string, fn: (meta: VmMetadata) => void) => Promise<VmMetadata>;
  readMeta: (domain: string) => Promise<VmMetadata>;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

const bad = (msg: string): ApplicationFailure => failure('badInput', msg);

function check(problems: string[], fn: () => void): void {
  try {
    fn();
  } catch (err) {
    problems.push((err as Error).message);
  }
}

function checkDomain(domain: unknown, problems: string[]): void {
  if (typeof domain !== 'string' || domain === '' || domain.includes('/') || domain.includes('\0'))
    problems.push(`VM name ${JSON.stringify(domain)} is not valid`);
}

function checkId(what: string, value: unknown, problems: string[]): void {
  check(problems, () => {
    if (typeof value !== 'string') throw new Error(`${what} must be a string, got ${JSON.stringify(value)}`);
    assertSafeName(what, value);
  });
}

/**
 * Host activities that pin snapshots (retention keeps them, deletion refuses them) and release in-place restore
 * records (the restore becomes final: it can no longer be undone, and the snapshot it was built on can be deleted).
 * Both validate their own input and are safe to retry.
 */
export function createPinActivities(deps: PinActivityDeps) {
  const { hypervisor, hostId, updateMeta, readMeta } = deps;
  const log = deps.log ?? (() => {});

  const chainOf = (file: string | undefined): Promise<string[]> => imageChain(hypervisor, file);

  async function orNotFound<T>(domain: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof DomainNotFoundError) throw bad(`VM ${JSON.stringify(domain)} not found on host ${hostId}`);
      throw err;
    }
  }

  return {
    /**
     * Pins (or unpins) snapshot `snapshotId` in a VM's catalog. Refused for a snapshot that is not catalogued on the
     * VM, and pinning one whose deletion has started.
     */
    async pinSnapshot(req: PinSnapshotRequest): Promise<PinSnapshotReport> {
      const problems: string[] = [];
      checkDomain(req?.domain, problems);
      checkId('snapshot id', req?.snapshotId, problems);
      if (typeof req?.pinned !== 'boolean') problems.push('pinned must be true or false');
      if (problems.length > 0) throw bad(problems.join('; '));
      const { domain, snapshotId, pinned } = req;
      let changed = false;
      await orNotFound(domain, () =>
        updateMeta(domain, (m) => {
          const s = m.snapshots.find((x) => x.snapshotId === snapshotId);
          if (!s) throw bad(`VM ${domain} has no snapshot ${JSON.stringify(snapshotId)}`);
          if (pinned && s.deleting)
            throw bad(`snapshot ${snapshotId} of ${domain} is being deleted: it cannot be pinned`);
          changed = Boolean(s.pinned) !== pinned;
          if (pinned) s.pinned = true;
          else delete s.pinned;
        }),
      );
      log(pinned ? 'snapshot pinned' : 'snapshot unpinned', { domain, snapshotId, changed });
      return { domain, snapshotId, pinned, changed };
    },

    /**
     * Makes an in-place restore final: removes its discarded layers that nothing else uses (the VM's chain, a
     * snapshot, a clone or another restore) and its record, so the restore can no longer be undone and no longer
     * blocks deleting the snapshot it was built on. Refused while the VM does not run on the restore (it did not
     * finish, or was undone). `absent` when the VM has no such record.
     */
    async releaseInPlaceRestore(req: { domain: string; restoreId: string }): Promise<ReleaseInPlaceReport> {
      const problems: string[] = [];
      checkDomain(req?.domain, problems);
      checkId('restore id', req?.restoreId, problems);
      if (problems.length > 0) throw bad(problems.join('; '));
      const { domain, restoreId } = req;
      const meta = await orNotFound(domain, () => readMeta(domain));
      const rec = meta.restores.find((r) => r.restoreId === restoreId);
      if (!rec) return { domain, restoreId, outcome: 'absent', removed: [], kept: [] };
      const desc = await orNotFound(domain, () => hypervisor.describe(domain));
      const inUse = new Set<string>();
      for (const k of desc.disks) for (const f of await chainOf(k.source)) inUse.add(f);
      const notOn = rec.disks.filter((d) => !inUse.has(d.overlay)).map((d) => d.target);
      if (notOn.length > 0)
        throw bad(
          `VM ${domain} does not run on restore ${restoreId} (disk ${notOn.join(', ')}): the restore did not finish ` +
            `or was undone; nothing to release`,
        );
      for (const s of meta.snapshots) for (const d of s.disks) inUse.add(d.image).add(d.overlay);
      for (const c of meta.clones) for (const d of c.disks) inUse.add(d.image);
      for (const r of meta.restores)
        if (r.restoreId !== restoreId) for (const d of r.disks) inUse.add(d.image).add(d.overlay).add(d.discarded);
      const removed: string[] = [];
      const kept: string[] = [];
      // Files first, then the record: a retry after a crash finds the record and finishes.
      for (const d of rec.disks) {
        if (inUse.has(d.discarded)) kept.push(d.discarded);
        else {
          await hypervisor.removeImage(d.discarded);
          removed.push(d.discarded);
        }
      }
      await updateMeta(domain, (m) => {
        m.restores = m.restores.filter((r) => r.restoreId !== restoreId);
      });
      log('in-place restore released', { domain, restoreId, removed, kept });
      return { domain, restoreId, outcome: 'released', removed, kept };
    },
  };
}

export type PinActivities = ReturnType<typeof createPinActivities>;

/**
 * The manifests an export writes once its disks are stored: each VM's (its domain XML and disks), then the group's
 * (from which on the point exists).
 */
import { FORMAT_VERSION, type DiskManifest, type VmManifest } from '../../backup/manifest';
import type { WriteGroupManifestRequest, WriteVmManifestRequest } from '../../common/backup-types';
import { failure } from '../../common/failures';
import { DomainNotFoundError } from '../../hypervisor/errors';
import { asFailure, openRepo, type ExportContext } from './context';
import { pointDomainXml } from './snapshot';

/**
 * Writes a VM's manifest (its domain XML and disks) after all its disks are exported. Returns its key.
 * @throws BAD_INPUT when the VM is not on this host
 */
export async function writeVmManifest(ctx: ExportContext, req: WriteVmManifestRequest): Promise<string> {
  const repo = await openRepo(ctx, req.repository);
  try {
    const domainXml = await pointDomainXml(ctx, req.domain, req.snapshotId);
    return await repo.writeVmManifest({
      version: FORMAT_VERSION,
      group: req.group,
      snapshotId: req.snapshotId,
      domain: req.domain,
      host: ctx.hostId,
      domainXml,
      disks: req.disks,
    });
  } catch (err) {
    if (err instanceof DomainNotFoundError) {
      throw failure('badInput', `VM ${req.domain} not found on host ${ctx.hostId}`);
    }
    throw asFailure(err);
  } finally {
    repo.close();
  }
}

/** Writes the group manifest: the point exists from now on. Checks first that every manifest it names exists. */
export async function writeGroupManifest(ctx: ExportContext, req: WriteGroupManifestRequest): Promise<string> {
  const repo = await openRepo(ctx, req.repository);
  try {
    // Object Lock: the point is locked from now; a disk whose chunks were locked for less (an export that took
    // longer than the lock's slack) has them extended first, so no chunk's lock lapses before the point's.
    const retainUntil = repo.pointRetainUntil();
    for (const v of req.vms) {
      const vm = await repo.readManifestAt<VmManifest>(v.manifest);
      for (const d of vm.disks) {
        const disk = await repo.readManifestAt<DiskManifest>(d.manifest);
        if (retainUntil !== undefined && !(Date.parse(disk.chunksRetainUntil ?? '') >= retainUntil)) {
          await repo.ensureRetention(disk.chunks, retainUntil);
        }
      }
    }
    return await repo.writeGroupManifest({
      version: FORMAT_VERSION,
      group: req.group,
      snapshotId: req.snapshotId,
      ...(req.label !== undefined ? { label: req.label } : {}),
      snapshotCreatedAt: req.snapshotCreatedAt,
      exportedAt: new Date().toISOString(),
      vms: req.vms,
      stats: req.stats,
      ...(retainUntil !== undefined ? { retainUntil: new Date(retainUntil).toISOString() } : {}),
    });
  } catch (err) {
    throw asFailure(err);
  } finally {
    repo.close();
  }
}

/**
 * What an export learns from the host's catalog: the snapshot it exports (which must exist and not be being deleted)
 * and the earlier point of the same disk to export against (its base).
 */
import type { ExportBase } from '../../backup/export-disk';
import type { Repository } from '../../backup/repository';
import type { ExportDiskRequest } from '../../common/backup-types';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { manifestPath, parseVmMetadata } from '../../common/catalog';
import { failure } from '../../common/failures';
import { DomainNotFoundError } from '../../hypervisor/errors';
import { message, type ExportContext } from './context';

/**
 * The VM's catalog and its record of `snapshotId`.
 * @throws BAD_INPUT when the VM is not on this host, or the snapshot does not exist or is being deleted
 */
export async function snapshotRecord(ctx: ExportContext, domain: string, snapshotId: string) {
  let xml: string | undefined;
  try {
    xml = await ctx.hypervisor.getMetadata(domain);
  } catch (err) {
    if (err instanceof DomainNotFoundError) {
      throw failure('badInput', `VM ${domain} not found on host ${ctx.hostId}`);
    }
    throw err;
  }
  const meta = parseVmMetadata(xml);
  const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
  if (!snap || snap.deleting) {
    throw failure(
      'badInput',
      `snapshot ${snapshotId} of ${domain} ${snap ? 'is being deleted' : 'does not exist'} on host ${ctx.hostId}`,
    );
  }
  return { meta, snap };
}

/**
 * The newest earlier point of this disk in the repository whose layer is still below `chain[0]`. Found from the
 * host's catalog (the earlier snapshots of this VM, newest first), each looked up in the repository by name: no
 * listing of the repository's points, whatever their number. An unreadable candidate is logged and skipped.
 */
export async function findBase(
  ctx: ExportContext,
  repo: Repository,
  req: ExportDiskRequest,
  meta: ReturnType<typeof parseVmMetadata>,
  createdAt: string,
  chain: string[],
  beat: () => void,
): Promise<ExportBase | undefined> {
  const candidates = meta.snapshots
    .filter((s) => s.snapshotId !== req.snapshotId && !s.deleting && s.createdAt <= createdAt)
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.snapshotId.localeCompare(a.snapshotId));
  for (const s of candidates) {
    const image = s.disks.find((d) => d.target === req.target)?.image;
    if (!image || !chain.slice(1).includes(image)) continue;
    beat();
    try {
      if (!(await repo.hasPoint(req.group, s.snapshotId))) continue;
      const manifest = await repo.readDiskManifest(req.group, s.snapshotId, req.domain, req.target);
      return { snapshotId: s.snapshotId, image, manifest };
    } catch (err) {
      ctx.log('export base unreadable, trying an older one', { snapshotId: s.snapshotId, error: message(err) });
    }
  }
  return undefined;
}

/**
 * The VM's definition at the point: the one its catalog recorded beside its images when the snapshot was taken; the
 * current one for points catalogued before definitions were recorded.
 */
export async function pointDomainXml(ctx: ExportContext, domain: string, snapshotId: string): Promise<string> {
  const { snap } = await snapshotRecord(ctx, domain, snapshotId);
  if (snap.disks.length > 0) {
    try {
      const doc = JSON.parse(readFileSync(manifestPath(dirname(snap.disks[0].image), domain, snapshotId), 'utf8'));
      if (typeof doc?.domainXml === 'string' && doc.domainXml.length > 0) return doc.domainXml as string;
    } catch {
      // no manifest (removed, or an older point): the current definition
    }
  }
  ctx.log('the point has no recorded definition: exporting the current one', { domain, snapshotId });
  return ctx.hypervisor.domainXml(domain);
}

/**
 * The catalog of a snapshot on this host (docs/adr/0002): each VM's libvirt metadata and a manifest beside its
 * images. A run records its snapshot once its overlays are checked in each VM's chain; its undo takes it out again
 * and bars it from coming back.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { manifestPath, renderVmMetadata, type CatalogEntry } from '../../common/catalog';
import type { CatalogRequest } from '../../common/host-types';
import type { DiskSnapshot } from '../../common/types';
import { imageChain } from '../../hypervisor/chain';
import { checkName, checkOwner, failIf } from '../input-checks';
import type { HostContext } from './context';
import { assertLeaseStillHeld } from './leases';
import { checkVmDisks } from './overlays';
import { failure } from '../../common/failures';

/** Removes `snapshotId` of run `owner` from the VM's catalog and its manifest, and bars it from coming back. */
export async function uncatalog(
  ctx: HostContext,
  snapshotId: string,
  owner: string,
  domain: string,
  disks: DiskSnapshot[],
): Promise<void> {
  const { metadata, hypervisor } = ctx;
  metadata.markUndone(snapshotId, owner);
  const overlays = new Set(disks.map((d) => d.overlay));
  await metadata.serialized(domain, async () => {
    const meta = await metadata.read(domain);
    const before = meta.snapshots.length;
    // Only this run's entry: it names this run's overlays.
    meta.snapshots = meta.snapshots.filter(
      (s) => s.snapshotId !== snapshotId || !s.disks.some((d) => overlays.has(d.overlay)),
    );
    if (meta.snapshots.length !== before) await hypervisor.setMetadata(domain, renderVmMetadata(meta));
    if (disks.length > 0) rmSync(manifestPath(dirname(disks[0].image), domain, snapshotId), { force: true });
  });
}

/** Fails for good (`ChainMismatch`) unless each disk's overlay is in the VM's chain directly over its image. */
async function checkChains(ctx: HostContext, snapshotId: string, vm: CatalogRequest['vms'][number]): Promise<void> {
  const desc = await ctx.hypervisor.describe(vm.domain);
  for (const d of vm.disks) {
    const active = desc.disks.find((k) => k.target === d.target)?.source;
    const chain = await imageChain(ctx.hypervisor, active);
    const at = chain.indexOf(d.overlay);
    if (at < 0 || chain[at + 1] !== d.image)
      throw failure(
        'chainMismatch',
        `snapshot ${snapshotId} of ${vm.domain} disk ${d.target}: ${d.overlay} is not in the VM's chain ` +
          `directly over ${d.image} (chain: ${chain.join(' <- ') || 'none'})`,
      );
  }
}

/** The catalog activity, `recordCatalog`. */
export function createCatalogActivities(ctx: HostContext) {
  const { metadata, hypervisor } = ctx;
  return {
    /**
     * Records a completed snapshot in each VM's libvirt metadata and in a manifest beside its images, once it has
     * checked that each disk's overlay is in the VM's chain directly over the image it names. Refuses (for good) a
     * snapshot that compensation undid meanwhile, and one whose run lost its leases.
     */
    async recordCatalog(req: CatalogRequest): Promise<void> {
      const problems: string[] = [];
      checkName('snapshot id', req.entry?.snapshotId, problems);
      checkName('group name', req.entry?.group, problems);
      checkOwner(req.leaseOwner, problems);
      if (typeof req.entry?.createdAt !== 'string' || Number.isNaN(Date.parse(req.entry.createdAt)))
        problems.push(`snapshot time ${JSON.stringify(req.entry?.createdAt)} is not valid`);
      checkVmDisks(req.vms, req.entry.snapshotId, problems);
      failIf(problems);
      const { snapshotId } = req.entry;
      for (const vm of req.vms) {
        await metadata.serialized(vm.domain, async () => {
          if (metadata.isUndone(snapshotId, req.leaseOwner))
            throw failure('snapshotUndone', `snapshot ${snapshotId} of ${vm.domain} was undone: it is not recorded`);
          assertLeaseStillHeld(ctx, req.leaseOwner, vm.domain);
          await checkChains(ctx, snapshotId, vm);
          const entry: CatalogEntry = { ...req.entry, disks: vm.disks };
          const meta = await metadata.read(vm.domain);
          if (!meta.snapshots.some((s) => s.snapshotId === entry.snapshotId)) {
            meta.snapshots.push(entry);
            await hypervisor.setMetadata(vm.domain, renderVmMetadata(meta));
          }
          // The definition as it was at the point (an export made later must not carry devices added since).
          const domainXml = await hypervisor.domainXml(vm.domain);
          writeFileSync(
            manifestPath(dirname(vm.disks[0].image), vm.domain, snapshotId),
            JSON.stringify({ ...entry, domain: vm.domain, uuid: vm.uuid, host: req.host, domainXml }, null, 2) + '\n',
          );
        });
      }
    },
  };
}

/**
 * A restore point of one disk for the restore benches (bench/restore.ts, bench/hydrate.ts): the disk exported with
 * groupsnap's own export, and the VM and group manifests around it, so that both the restore's `rebuildDisk` (which
 * reads the disk manifest) and the NBD server (which reads the point by its group manifest) find it.
 */
import { exportDisk } from '../backup/export-disk';
import { FORMAT_VERSION, sumStats, type DiskManifest } from '../backup/manifest';
import { Repository } from '../backup/repository';

/** The names of the bench's point, its one VM and its one disk. */
export type PointNames = { group: string; snapshotId: string; domain: string; target: string };

/** Exports the qcow2 `image` to the repository at `url` as the point `names`; returns the disk's manifest. */
export async function exportOneDiskPoint(
  url: string,
  key: Buffer,
  image: string,
  names: PointNames,
): Promise<DiskManifest> {
  const repo = await Repository.init(url, key);
  try {
    const { manifest: m, manifestKey } = await exportDisk({ repo, names, image, format: 'qcow2' });
    const disk = { target: names.target, virtualSize: m.virtualSize };
    const vmKey = await repo.writeVmManifest({
      version: FORMAT_VERSION,
      group: names.group,
      snapshotId: names.snapshotId,
      domain: names.domain,
      host: 'bench',
      domainXml: '<domain/>',
      disks: [{ ...disk, manifest: manifestKey, sourceFormat: 'qcow2', sourceImage: image, stats: m.stats }],
    });
    await repo.writeGroupManifest({
      version: FORMAT_VERSION,
      group: names.group,
      snapshotId: names.snapshotId,
      snapshotCreatedAt: new Date().toISOString(),
      exportedAt: new Date().toISOString(),
      vms: [{ domain: names.domain, host: 'bench', manifest: vmKey, disks: [disk] }],
      stats: sumStats([{ virtualSize: m.virtualSize, stats: m.stats }]),
    });
    return m;
  } finally {
    repo.close();
  }
}

import { FORMAT_VERSION, sumStats, type DiskExportStats, type DiskManifest } from '../../backup/manifest';
import type { Repository } from '../../backup/repository';

const STATS: DiskExportStats = {
  mode: 'full',
  bytesRead: 0,
  bytesNew: 0,
  bytesUploaded: 0,
  chunksNew: 0,
  chunksData: 0,
};

/**
 * Writes a point the way an export does (chunks, disk manifest, VM manifest, group manifest last) with one VM
 * `db-1` on `hv-a` and one disk `vda` made of `data` (each a chunk's content, or null for zeros). Returns the chunk
 * ids. For tests of the repository and its commands without VMs.
 */
export async function writeTestPoint(
  repo: Repository,
  group: string,
  snapshotId: string,
  createdAt: string,
  data: (Buffer | null)[],
): Promise<(string | null)[]> {
  const ids: (string | null)[] = [];
  let bytesNew = 0;
  for (const c of data) {
    if (!c) {
      ids.push(null);
      continue;
    }
    const put = await repo.putChunk(c);
    if (put.uploaded) bytesNew += c.length;
    ids.push(put.id);
  }
  const size = data.length * repo.chunkSize;
  const stats = { ...STATS, bytesNew, chunksData: ids.filter((i) => i !== null).length };
  const disk: DiskManifest = {
    version: FORMAT_VERSION,
    group,
    snapshotId,
    domain: 'db-1',
    target: 'vda',
    sourceFormat: 'qcow2',
    sourceImage: '/img/db-1.qcow2',
    virtualSize: size,
    chunkSize: repo.chunkSize,
    chunks: ids,
    stats,
  };
  const dk = await repo.writeDiskManifest(disk);
  const vk = await repo.writeVmManifest({
    version: FORMAT_VERSION,
    group,
    snapshotId,
    domain: 'db-1',
    host: 'hv-a',
    domainXml: '<domain><name>db-1</name></domain>',
    disks: [{ target: 'vda', manifest: dk, virtualSize: size, sourceFormat: 'qcow2', sourceImage: '/img', stats }],
  });
  await repo.writeGroupManifest({
    version: FORMAT_VERSION,
    group,
    snapshotId,
    snapshotCreatedAt: createdAt,
    exportedAt: new Date().toISOString(),
    vms: [{ domain: 'db-1', host: 'hv-a', manifest: vk, disks: [{ target: 'vda', virtualSize: size }] }],
    stats: sumStats([{ virtualSize: size, stats }]),
  });
  return ids;
}

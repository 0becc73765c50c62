/**
 * Stores a group snapshot point in a repository the way an export does (chunks, disk manifests, VM manifests, the
 * group manifest last), reading each disk's content at the point from its snapshot image with `qemu-img convert`.
 * A stand-in for issue 16's export workflow in the restore tests; it uses only the repository's writer API.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FORMAT_VERSION, type DiskExportStats, type DiskManifest } from '../../backup/manifest';
import { isZero, type Repository } from '../../backup/repository';

const run = promisify(execFile);

export interface PointVm {
  domain: string;
  host: string;
  domainXml: string;
  /** Each disk's image holding the point (a group snapshot's `image`). */
  disks: { target: string; image: string; format?: string }[];
}

/** sha256 of a disk image's guest-visible content (`qemu-img convert -O raw`, `-U`: it may be in use). */
export async function contentSha256(image: string, format = 'qcow2'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gs-sha-'));
  try {
    const raw = join(dir, 'disk.raw');
    await run('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', image, raw]);
    const hash = createHash('sha256');
    const fh = await open(raw);
    try {
      for await (const chunk of fh.createReadStream()) hash.update(chunk as Buffer);
    } finally {
      await fh.close();
    }
    return hash.digest('hex');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Writes the point; returns the sha256 of every disk's content by `domain/target`. */
export async function storePoint(
  repo: Repository,
  point: { group: string; snapshotId: string; createdAt?: string; vms: PointVm[]; damage?: (m: DiskManifest) => void },
): Promise<Record<string, string>> {
  const sums: Record<string, string> = {};
  const stats: DiskExportStats = {
    mode: 'full',
    bytesRead: 0,
    bytesNew: 0,
    bytesUploaded: 0,
    chunksNew: 0,
    chunksData: 0,
  };
  const groupVms = [];
  for (const vm of point.vms) {
    const entries = [];
    for (const d of vm.disks) {
      const dir = await mkdtemp(join(tmpdir(), 'gs-export-'));
      try {
        const raw = join(dir, 'disk.raw');
        await run('qemu-img', ['convert', '-U', '-f', d.format ?? 'qcow2', '-O', 'raw', d.image, raw]);
        const fh = await open(raw);
        const hash = createHash('sha256');
        const chunks: (string | null)[] = [];
        let virtualSize = 0;
        try {
          virtualSize = (await fh.stat()).size;
          for (let off = 0; off < virtualSize; off += repo.chunkSize) {
            const buf = Buffer.alloc(Math.min(repo.chunkSize, virtualSize - off));
            await fh.read(buf, 0, buf.length, off);
            hash.update(buf);
            chunks.push(isZero(buf) ? null : (await repo.putChunk(buf)).id);
          }
        } finally {
          await fh.close();
        }
        sums[`${vm.domain}/${d.target}`] = hash.digest('hex');
        const m: DiskManifest = {
          version: FORMAT_VERSION,
          group: point.group,
          snapshotId: point.snapshotId,
          domain: vm.domain,
          target: d.target,
          sourceFormat: d.format ?? 'qcow2',
          sourceImage: d.image,
          virtualSize,
          chunkSize: repo.chunkSize,
          chunks,
          stats,
        };
        point.damage?.(m);
        const manifest = await repo.writeDiskManifest(m);
        entries.push({
          target: d.target,
          manifest,
          virtualSize,
          sourceFormat: m.sourceFormat,
          sourceImage: d.image,
          stats,
        });
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
    const manifest = await repo.writeVmManifest({
      version: FORMAT_VERSION,
      group: point.group,
      snapshotId: point.snapshotId,
      domain: vm.domain,
      host: vm.host,
      domainXml: vm.domainXml,
      disks: entries,
    });
    groupVms.push({
      domain: vm.domain,
      host: vm.host,
      manifest,
      disks: entries.map((e) => ({ target: e.target, virtualSize: e.virtualSize })),
    });
  }
  await repo.writeGroupManifest({
    version: FORMAT_VERSION,
    group: point.group,
    snapshotId: point.snapshotId,
    snapshotCreatedAt: point.createdAt ?? new Date().toISOString(),
    exportedAt: new Date().toISOString(),
    vms: groupVms,
    stats: { logicalBytes: 0, bytesRead: 0, bytesNew: 0, bytesUploaded: 0, chunksNew: 0, chunksData: 0 },
  });
  return sums;
}

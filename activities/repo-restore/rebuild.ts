/**
 * Rebuilding one restored disk from its chunks on this host: only a file a plan of this host recorded, written
 * private (0600), sparse, converted to qcow2 when asked; heartbeats its progress and starts over when retried.
 */
import { execFile } from 'node:child_process';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { qcow2Writable } from '../../backup/qcow2-image';
import type { RebuildDiskReport, RebuildDiskRequest } from '../../common/repo-restore';
import { heartbeat } from '../heartbeat';
import { PRIVATE_FILE_MODE } from '../restore-records';
import type { RepoRestoreContext } from './context';
import { dataBytesOf } from './names';
import { plannedRestoreOf } from './records';
import { withRepo } from './repo';

const run = promisify(execFile);

/** Makes `file` (empty) with mode 0600, or sets an existing one to it: data written into it stays private. */
export function privateFile(file: string): void {
  writeFileSync(file, '', { mode: PRIVATE_FILE_MODE, flag: 'w' });
  chmodSync(file, PRIVATE_FILE_MODE);
}

/**
 * Rebuilds one disk from its chunks, written once into the file of the format asked: a qcow2 image laid out from the
 * manifest (backup/qcow2-image.ts: zero chunks unallocated), or a sparse raw file (zero chunks stay holes); a
 * repository whose chunks are not whole qcow2 clusters goes through raw and `qemu-img convert`. Starts over when
 * retried; heartbeats its progress.
 * @throws BAD_INPUT for a file no plan of this host recorded for that disk (nothing written)
 */
export async function rebuildDisk(ctx: RepoRestoreContext, req: RebuildDiskRequest): Promise<RebuildDiskReport> {
  const restoreId = plannedRestoreOf(ctx.records, ctx.imagesDir, ctx.hostId, req);
  return withRepo(ctx, req.repo, async (repo) => {
    const disk = await repo.readDiskManifest(req.group, req.snapshotId, req.domain, req.target);
    const direct = req.format === 'raw' || qcow2Writable(disk);
    const raw = direct ? req.file : `${req.file}.raw.part`;
    const write = { concurrency: 8, onProgress: (done: number, total: number) => heartbeat({ done, total }) };
    ctx.records.created(restoreId, req.file);
    try {
      rmSync(raw, { force: true });
      privateFile(raw);
      if (req.format === 'qcow2' && direct) await repo.writeDiskQcow2(disk, req.file, write);
      else await repo.writeDiskImage(disk, raw, write);
      if (!direct) await convertToQcow2(raw, req.file);
    } finally {
      if (raw !== req.file) rmSync(raw, { force: true });
    }
    const bytesWritten = dataBytesOf(disk);
    ctx.log('disk rebuilt from the repository', {
      domain: req.domain,
      target: req.target,
      file: req.file,
      bytesWritten,
    });
    return { file: req.file, bytesWritten, virtualSize: disk.virtualSize };
  });
}

/** Converts the raw rebuild into `file` (qcow2, private), heartbeating every second while `qemu-img` runs. */
async function convertToQcow2(raw: string, file: string): Promise<void> {
  rmSync(file, { force: true });
  // qemu-img keeps the mode of the file it converts into: made private first.
  privateFile(file);
  const convert = run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
  const beat = setInterval(() => heartbeat({ converting: file }), 1000);
  try {
    await convert;
  } finally {
    clearInterval(beat);
  }
  chmodSync(file, PRIVATE_FILE_MODE);
}

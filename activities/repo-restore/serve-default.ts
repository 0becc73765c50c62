/**
 * The serving process an instant restore uses when the worker names none: the stand-in over `qemu-nbd` until the
 * repository's own NBD server (backup/nbd) is in (it copies each disk whole before serving it).
 */
import type { RepoRestoreContext } from './context';
import { privateFile } from './rebuild';
import { withRepo } from './repo';
import { qemuNbdStandIn, type InstantServer } from './serve';

export function defaultInstantServer(ctx: RepoRestoreContext): InstantServer {
  return qemuNbdStandIn(async (spec, e, raw) => {
    await withRepo(ctx, spec.repo, async (repo) => {
      const disk = await repo.readDiskManifest(spec.group, spec.snapshotId, e.domain, e.target);
      privateFile(raw);
      await repo.writeDiskImage(disk, raw, { concurrency: 8 });
    });
  });
}

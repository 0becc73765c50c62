/**
 * The serving process an instant restore uses unless the worker names another: the repository's own NBD server
 * (backup/serve-process.ts), detached, in `<restore's dir>/serve`, reading the repository with the host's key file
 * and S3 settings (nothing that came through Temporal).
 */
import { join } from 'node:path';
import { readServeStatus, startServeProcess, stopServeProcess } from '../../backup/serve-process';
import type { RepoRestoreContext } from './context';
import type { InstantServer, ServeSpec } from './serve';

/** The NBD server's own directory of an instant restore (its spec, pid, status and log). */
export const serverDirOf = (spec: ServeSpec) => join(spec.dir, 'serve');

export function defaultInstantServer(ctx: RepoRestoreContext): InstantServer {
  return {
    async start(spec) {
      await startServeProcess({
        version: 1,
        repo: spec.repo,
        keyFile: spec.keyFile,
        group: spec.group,
        snapshotId: spec.snapshotId,
        exports: spec.exports,
        dir: serverDirOf(spec),
        owner: ctx.hostId,
      });
    },
    async status(spec) {
      const s = readServeStatus(serverDirOf(spec));
      const running = s?.running === true;
      return { running, ready: running && s!.state === 'serving', storeReachable: running && s!.storeReachable };
    },
    async stop(spec) {
      await stopServeProcess(serverDirOf(spec));
    },
  };
}

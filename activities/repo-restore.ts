/**
 * The target host's side of a restore from the repository: plan (read the point, check names, files and space;
 * changes nothing but the restore's record), rebuild one disk from its chunks (sparse), define a VM from the stored
 * XML, start and resume it, and remove what a failed restore made. The key file is read here, on the host: it never
 * passes through Temporal. This file only composes: each room lives under `activities/repo-restore/`, over one
 * context (`repo-restore/context.ts`, the shape of docs/adr/0007-host-modules.md). Activity names are part of
 * recorded histories and of the worker's API: they never change.
 */
import type {
  DefineRestoredVmRequest,
  InstantFinishRequest,
  InstantHydrateRequest,
  InstantServeRequest,
  InstantStopRequest,
  RebuildDiskRequest,
  RemoveRestoredVmRequest,
  RepoRestorePlanRequest,
} from '../common/repo-restore';
import { createRepoRestoreContext, type RepoRestoreDeps } from './repo-restore/context';
import { defineRestoredVm, resumeRestoredVm, startRestoredVm } from './repo-restore/define';
import { instantFinish, instantHydrate, instantServe, instantStop } from './repo-restore/instant';
import { repoRestorePlan } from './repo-restore/plan';
import { rebuildDisk } from './repo-restore/rebuild';
import { removeRestoredVm } from './repo-restore/remove';

export type { InstantServer, ServeSpec, ServeState } from './repo-restore/serve';
export { BOOT_FILE_DIRS_ENV, REPO_KEY_FILE_ENV, type RepoRestoreDeps } from './repo-restore/context';
export { restoredDiskPath } from './repo-restore/names';

/** The restore-from-repository activities of one host, over one context built from `deps`. */
export function createRepoRestoreActivities(deps: RepoRestoreDeps) {
  const ctx = createRepoRestoreContext(deps);
  return {
    /** Reads the point and checks the target: names free, files absent, enough space. Changes nothing. */
    repoRestorePlan: (req: RepoRestorePlanRequest) => repoRestorePlan(ctx, req),
    /** Rebuilds one disk from its chunks (sparse; qcow2 when asked); starts over when retried. */
    rebuildDisk: (req: RebuildDiskRequest) => rebuildDisk(ctx, req),
    /** Defines the VM from its stored XML, rewritten for this host. Returns its name and UUID. */
    defineRestoredVm: (req: DefineRestoredVmRequest) => defineRestoredVm(ctx, req),
    /** Starts a restored VM with its vCPUs paused (idempotent: a running or paused VM is left as it is). */
    startRestoredVm: (req: { domain: string; paused: boolean }) => startRestoredVm(ctx, req),
    /** Resumes a restored VM started paused. */
    resumeRestoredVm: (req: { domain: string }) => resumeRestoredVm(ctx, req),
    /** Compensation: power off and undefine the VM (only the one with the recorded UUID), then remove its files. */
    removeRestoredVm: (req: RemoveRestoredVmRequest) => removeRestoredVm(ctx, req),
    /** Instant restore: serves the planned disks (NBD) and makes each disk's overlay over its export. */
    instantServe: (req: InstantServeRequest) => instantServe(ctx, req),
    /** Instant restore: one hydration step (pulls, restarts, re-opens, resumes); reports each disk's progress. */
    instantHydrate: (req: InstantHydrateRequest) => instantHydrate(ctx, req),
    /** Instant restore: once hydrated, drops the NBD backing from the definitions and stops serving. */
    instantFinish: (req: InstantFinishRequest) => instantFinish(ctx, req),
    /** Instant restore's compensation: stops serving and removes its sockets. */
    instantStop: (req: InstantStopRequest) => instantStop(ctx, req),
  };
}

export type RepoRestoreActivities = ReturnType<typeof createRepoRestoreActivities>;

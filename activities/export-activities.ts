/**
 * The host side of exports: one activity per disk (reads the frozen chain, stores chunks, heartbeats its progress
 * and checkpoints it in the state dir so a retry after a crash goes on where it stopped), then the VM's manifest,
 * then the group's. The repository key is read from the host's key file when needed, never passed in or logged. This
 * file only composes: each room lives under `activities/export/`, over one context (`export/context.ts`, the shape
 * of docs/adr/0007-host-modules.md). Activity names are part of recorded histories and of the worker's API: they never
 * change.
 */
import type { ExportDiskRequest, WriteGroupManifestRequest, WriteVmManifestRequest } from '../common/backup-types';
import { createExportContext, type ExportActivityDeps } from './export/context';
import { exportVmDisk } from './export/disk';
import { writeGroupManifest, writeVmManifest } from './export/manifests';

export type { ExportActivityDeps } from './export/context';
export { EXPORT_PROGRESS_SIGNAL } from './export/disk';

/** The export activities of one host, over one context built from `deps`. */
export function createExportActivities(deps: ExportActivityDeps) {
  const ctx = createExportContext(deps);
  return {
    /** Exports one disk of one VM at one snapshot; safe to retry (resumes from its checkpoint). */
    exportVmDisk: (req: ExportDiskRequest) => exportVmDisk(ctx, req),
    /** Writes a VM's manifest (its domain XML and disks) after all its disks are exported. Returns its key. */
    writeVmManifest: (req: WriteVmManifestRequest) => writeVmManifest(ctx, req),
    /** Writes the group manifest: the point exists from now on. Checks first that every manifest it names exists. */
    writeGroupManifest: (req: WriteGroupManifestRequest) => writeGroupManifest(ctx, req),
  };
}

export type ExportActivities = ReturnType<typeof createExportActivities>;

/**
 * What a restore may touch on this host, from its records (activities/restore-records.ts): a host writes, defines
 * and removes only what a plan of its own recorded.
 */
import type { RebuildDiskRequest } from '../../common/repo-restore';
import type { RestoreRecords } from '../restore-records';
import { bad } from './context';
import { restoredDiskPath } from './names';

/**
 * The restore that planned `req.file` for this disk, after deriving the file again from the recorded names: a
 * host writes no other file. @throws BAD_INPUT otherwise (nothing written).
 */
export function plannedRestoreOf(
  records: RestoreRecords,
  imagesDir: string,
  hostId: string,
  req: RebuildDiskRequest,
): string {
  for (const rec of records.all()) {
    for (const vm of rec.vms) {
      if (vm.source !== req.domain) continue;
      const disk = vm.disks.find((d) => d.target === req.target && d.file === req.file && d.format === req.format);
      if (disk && restoredDiskPath(imagesDir, vm.domain, disk.target, rec.restoreId, disk.format) === req.file)
        return rec.restoreId;
    }
  }
  throw bad(`${req.file} is not a disk a restore planned on ${hostId} for ${req.domain} ${req.target}`);
}

/**
 * The UUID planned for `domain` by restore `restoreId` (the record's, which must agree with the request's).
 * @throws BAD_INPUT when the request names another UUID than the record
 */
export function plannedUuidOf(
  records: RestoreRecords,
  restoreId: string,
  domain: string,
  requested: string | undefined,
): string | undefined {
  const recorded = records
    .get(restoreId)
    ?.vms.find((v) => v.domain === domain)
    ?.uuid?.toLowerCase();
  if (requested && recorded && requested.toLowerCase() !== recorded)
    throw bad(`VM ${domain} of restore ${restoreId} was planned with UUID ${recorded}, not ${requested}`);
  return recorded ?? requested?.toLowerCase();
}

/** The files and UUIDs restores recorded for a VM named `domain` on this host. */
export function recordedVm(records: RestoreRecords, domain: string): { files: Set<string>; uuids: Set<string> } {
  const vms = records.all().flatMap((r) => r.vms.filter((v) => v.domain === domain));
  return {
    files: new Set(vms.flatMap((v) => v.disks.map((d) => d.file))),
    uuids: new Set(vms.map((v) => v.uuid.toLowerCase())),
  };
}

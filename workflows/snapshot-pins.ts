import { CancellationScope, log, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import { groupSnapshotsIn } from '../common/groups';
import {
  checkPinInput,
  checkReleaseInput,
  restoreRecordsIn,
  type PinGroupSnapshotInput,
  type PinGroupSnapshotResult,
  type ReleaseRestoreRecordsInput,
  type ReleaseRestoreRecordsResult,
} from '../common/pins';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { BAD_INPUT, checked, errorMessage, rootType, failure } from '../common/failures';
import { onHost } from './activity-options';
import { requireAllHosts, takeInventory } from './inventory';

/**
 * Pins (or unpins) one group snapshot on every VM that holds it: a pinned snapshot is kept by retention and its
 * deletion is refused. A VM that fails is reported; run it again to finish (VMs already done report no change).
 */
export async function pinGroupSnapshot(input: PinGroupSnapshotInput): Promise<PinGroupSnapshotResult> {
  checked(() => checkPinInput(input));
  const { group, snapshotId, pinned } = input;
  upsertSearchAttributes([
    { key: GroupsnapGroup, value: group },
    { key: GroupsnapSnapshotId, value: snapshotId },
  ]);
  const inventory = await takeInventory();
  requireAllHosts(inventory, `${pinned ? 'pin' : 'unpin'} snapshot ${snapshotId}`);
  const listing = groupSnapshotsIn(inventory, group).find((l) => l.snapshotId === snapshotId);
  if (!listing) throw failure('badInput', `group ${group} has no snapshot ${JSON.stringify(snapshotId)}`);
  const result: PinGroupSnapshotResult = { group, snapshotId, pinned, vms: [] };
  const errors: string[] = [];
  let allBadInput = true;
  await Promise.all(
    listing.vms.map(async (v) => {
      try {
        const r = await onHost(v.host).change.pinSnapshot.executeWithOptions(
          { summary: `${pinned ? 'pin' : 'unpin'} ${snapshotId} on ${v.domain}@${v.host}` },
          [{ domain: v.domain, snapshotId, pinned }],
        );
        result.vms.push({ host: v.host, domain: v.domain, changed: r.changed });
      } catch (err) {
        if (rootType(err) !== BAD_INPUT) allBadInput = false;
        errors.push(`${v.domain}@${v.host}: ${errorMessage(err)}`);
      }
    }),
  );
  result.vms.sort((a, b) => (a.host + '\0' + a.domain < b.host + '\0' + b.domain ? -1 : 1));
  if (errors.length > 0)
    throw failure(
      allBadInput ? 'badInput' : 'pinFailed',
      `snapshot ${snapshotId} was not ${pinned ? 'pinned' : 'unpinned'} on ${errors.sort().join('; ')}` +
        (result.vms.length ? ` (done on ${result.vms.length} VM(s); run it again to finish)` : ''),
    );
  log.info(pinned ? 'snapshot pinned' : 'snapshot unpinned', { group, snapshotId, vms: result.vms.length });
  return result;
}

/**
 * Releases clone and in-place restore records, so the snapshots they are built on can be deleted: a clone is
 * removed (powered off, undefined, its overlays deleted); an in-place restore becomes final (its discarded layers
 * that nothing else uses are deleted, it can no longer be undone). Each VM is leased while its record is released.
 */
export async function releaseRestoreRecords(input: ReleaseRestoreRecordsInput): Promise<ReleaseRestoreRecordsResult> {
  checked(() => checkReleaseInput(input));
  const inventory = await takeInventory();
  requireAllHosts(inventory, `release ${input.ids.join(', ')}`);
  const records = restoreRecordsIn(inventory).filter(
    (r) =>
      input.ids.includes(r.id) &&
      (input.vms === undefined || input.vms.some((v) => v.domain === r.domain && v.host === r.host)),
  );
  const missing = input.ids.filter((id) => !records.some((r) => r.id === id));
  if (missing.length > 0)
    throw failure(
      'badInput',
      `no clone or in-place restore record ${missing.map((m) => JSON.stringify(m)).join(', ')}` +
        (input.vms ? ' on the given VMs' : '') +
        ` (see 'groupsnap restore list')`,
    );
  const result: ReleaseRestoreRecordsResult = { released: [] };
  const errors: string[] = [];
  // One record at a time: each holds its VM's lease, and a clone and its source may share a host's storage.
  for (const r of records) {
    // The lease is this run's (never a name a caller chose).
    const owner = workflowInfo().runId;
    const host = onHost(r.host);
    try {
      await host.lock.acquireLocks({ owner, domains: [r.domain], ttlMs: 30 * 60_000 });
      try {
        if (r.kind === 'clone') {
          await host.change.removeClone.executeWithOptions({ summary: `remove clone ${r.id} of ${r.domain}` }, [
            { domain: r.domain, clone: r.id },
          ]);
          const vm = inventory.hosts.find((h) => h.host === r.host)?.vms.find((x) => x.domain === r.domain);
          const removed = vm?.clones.find((c) => c.name === r.id)?.disks.map((d) => d.overlay) ?? [];
          result.released.push({ kind: r.kind, host: r.host, domain: r.domain, id: r.id, removed, kept: [] });
        } else {
          const rep = await host.change.releaseInPlaceRestore.executeWithOptions(
            { summary: `release in-place restore ${r.id} of ${r.domain}` },
            [{ domain: r.domain, restoreId: r.id }],
          );
          result.released.push({
            kind: r.kind,
            host: r.host,
            domain: r.domain,
            id: r.id,
            removed: rep.removed,
            kept: rep.kept,
          });
        }
      } finally {
        await CancellationScope.nonCancellable(() =>
          host.cleanup.releaseLocks({ owner, domains: [r.domain] }).catch(() => undefined),
        );
      }
    } catch (err) {
      errors.push(`${r.kind} ${r.id} of ${r.domain}@${r.host}: ${errorMessage(err)}`);
    }
  }
  if (errors.length > 0)
    throw failure(
      'releaseFailed',
      `not released: ${errors.join('; ')}` +
        (result.released.length ? ` (released ${result.released.map((r) => r.id).join(', ')})` : ''),
    );
  log.info('restore records released', { released: result.released.length });
  return result;
}

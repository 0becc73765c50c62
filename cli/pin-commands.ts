/** CLI commands for pinned snapshots and for the clone / in-place restore records that block deletion. */
import { listRestoreRecords, pinGroupSnapshot, releaseRestoreRecords, unpinGroupSnapshot } from '../client/pins';
import { checkPinInput, checkReleaseInput } from '../common/pins';
import type { VmRef } from '../common/types';
import { BadInputError } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { withClient, type CommonOptions } from './with-client';

export function snapshotPin(pinned: boolean) {
  return (group: string, snapshotId: string, opts: CommonOptions) => {
    checkPinInput({ group, snapshotId, pinned });
    return withClient(
      opts,
      (c) => (pinned ? pinGroupSnapshot : unpinGroupSnapshot)(c, group, snapshotId),
      (r) =>
        `snapshot ${r.snapshotId} of ${r.group} ${r.pinned ? 'pinned' : 'unpinned'} on ${r.vms.length} VM(s)` +
        (r.vms.some((v) => !v.changed) ? ` (already ${r.pinned ? 'pinned' : 'unpinned'} on some)` : ''),
    );
  };
}

export function restoreList(group: string | undefined, opts: CommonOptions) {
  if (group !== undefined) assertSafeName('group name', group);
  return withClient(
    opts,
    (c) => listRestoreRecords(c, group),
    (records) =>
      records.length === 0
        ? 'no clone or in-place restore records'
        : records
            .map(
              (r) =>
                `${r.kind}\t${r.id}\t${r.domain}@${r.host}\tfrom ${r.snapshotId}${r.group ? ` (${r.group})` : ''}\t` +
                `${r.createdAt}\t${r.blocks.length ? `blocks deleting ${r.blocks.join(', ')}` : '-'}`,
            )
            .join('\n'),
  );
}

export function restoreRelease(ids: string[], opts: CommonOptions & { vm?: VmRef[]; yes?: boolean }) {
  const input = { ids, ...(opts.vm ? { vms: opts.vm } : {}) };
  checkReleaseInput(input);
  if (!opts.yes)
    throw new BadInputError(
      'releasing removes clone VMs and their disks, and makes in-place restores final (their discarded layers are ' +
        'deleted, they can no longer be undone): confirm with --yes',
    );
  return withClient(
    opts,
    (c) => releaseRestoreRecords(c, input),
    (r) =>
      r.released
        .map(
          (x) =>
            `released ${x.kind} ${x.id} of ${x.domain}@${x.host}` +
            (x.removed.length ? `, removed ${x.removed.join(', ')}` : '') +
            (x.kept.length ? `, kept ${x.kept.join(', ')} (still a snapshot's layer)` : ''),
        )
        .join('\n'),
  );
}

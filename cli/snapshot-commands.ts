/** `groupsnap snapshot <group>`, `snapshot list` and `snapshot delete` of a named group. */
import { deleteGroupSnapshot, listGroupSnapshots, snapshotNamedGroup } from '../client/snapshots';
import type { GroupRunResult, SnapshotNowOptions } from '../common/groups';
import { checkNames } from './check-input';
import { formatResult } from './format';
import { withClient, type CommonOptions } from './with-client';

export function formatRun(r: GroupRunResult): string {
  const lines = [formatResult(r.snapshot)];
  if (r.retention) {
    lines.push(
      `retention: kept ${r.retention.kept.length}, deleted ${r.retention.deleted.length}` +
        (r.retention.deleted.length ? ` (${r.retention.deleted.join(', ')})` : ''),
    );
    for (const f of r.retention.failed) lines.push(`  not deleted ${f.snapshotId}: ${f.error}`);
  }
  return lines.join('\n');
}

export function snapshotGroupCommand(group: string, options: SnapshotNowOptions, opts: CommonOptions) {
  return withClient(
    opts,
    (c) => snapshotNamedGroup(c, group, { ...options, trigger: 'cli' }),
    formatRun,
    (r) => r.snapshot.status !== 'completed',
  );
}

export function snapshotList(group: string, opts: CommonOptions) {
  checkNames([['group name', group]]);
  return withClient(
    opts,
    (c) => listGroupSnapshots(c, group),
    (list) =>
      list.length === 0
        ? `group ${group} has no snapshots`
        : list
            .map(
              (s) =>
                `${s.snapshotId}\t${s.createdAt}\t${s.vms.length} VM(s)${s.label ? `\t${s.label}` : ''}\n` +
                s.vms.map((v) => `    ${v.domain}@${v.host}: ${v.disks.map((d) => d.target).join(', ')}`).join('\n'),
            )
            .join('\n'),
  );
}

export function snapshotDelete(group: string, snapshotId: string, opts: CommonOptions) {
  checkNames([
    ['group name', group],
    ['snapshot id', snapshotId],
  ]);
  return withClient(
    opts,
    (c) => deleteGroupSnapshot(c, group, snapshotId),
    (r) =>
      [
        `snapshot ${r.snapshotId} of ${r.group}: ${r.status}`,
        ...r.vms.map(
          (v) =>
            `  ${v.domain}@${v.host}: ${v.outcome}${v.error ? ` (${v.error})` : ''}${v.removed.length ? `, removed ${v.removed.length} file(s)` : ''}`,
        ),
      ].join('\n'),
    (r) => r.status !== 'deleted',
  );
}

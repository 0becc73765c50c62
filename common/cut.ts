/**
 * Checking a group snapshot's cut from its result alone. The cut holds when no VM of the group ran again before
 * every VM of the group was paused, and each VM's snapshot was taken while it was paused (docs/consistency.md).
 * Times are the hosts' wall clocks, as the result reports them: exact for VMs of one host, and as good as the
 * hosts' clock synchronisation across hosts.
 */
import type { GroupSnapshotResult } from './types';

/** What breaks the cut in `result`, one line per problem; empty when it holds (or the result has no times). */
export function cutViolations(result: GroupSnapshotResult): string[] {
  const problems: string[] = [];
  const all = result.allPausedAtMs;
  for (const vm of result.vms) {
    if (!vm.pausedByUs || vm.outcome !== 'snapshotted') continue;
    const name = `${vm.domain}@${vm.host}`;
    // The earliest instant the VM may have run again: when its resume was asked for.
    const { pausedAtMs: paused, snapshottedAtMs: snap } = vm;
    const resumed = vm.resumeIssuedAtMs ?? vm.resumedAtMs;
    if (paused === undefined || snap === undefined || resumed === undefined) {
      problems.push(`${name}: pause, snapshot or resume time missing`);
      continue;
    }
    if (snap < paused) problems.push(`${name}: snapshot completed (${snap}) before its pause took effect (${paused})`);
    if (resumed < snap) problems.push(`${name}: resumed (${resumed}) before its snapshot completed (${snap})`);
    if (all !== undefined && resumed < all)
      problems.push(`${name}: resumed (${resumed}) before every VM of the group was paused (${all})`);
  }
  return problems;
}

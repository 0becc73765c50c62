import type { GroupSnapshotResult, SnapshotProgress, VmRef } from '../common/types';

export const vmText = (v: VmRef): string => `${v.domain}@${v.host}`;

export function formatProgress(p: SnapshotProgress): string {
  const count = (s: string) => p.vms.filter((v) => v.state === s).length;
  const parts = ['paused', 'snapshotted', 'resumed', 'rolled-back', 'failed']
    .map((s) => [s, count(s)] as const)
    .filter(([, n]) => n > 0)
    .map(([s, n]) => `${n} ${s}`);
  return `${p.phase}${parts.length ? `: ${parts.join(', ')}` : ''} (${p.vms.length} VMs)`;
}

export function formatResult(r: GroupSnapshotResult): string {
  const lines = [
    `${r.status === 'completed' ? 'Completed' : 'FAILED'} group snapshot ${r.snapshotId} of ${r.group}` +
      (r.label ? ` (${r.label})` : ''),
    `  workflow: ${r.workflowId}`,
    `  group freeze: ${r.groupFreezeMs.toFixed(1)} ms (largest per VM: ${r.maxVmFreezeMs.toFixed(1)} ms)`,
  ];
  if (r.error) lines.push(`  error: ${r.error}`);
  for (const vm of r.vms) {
    const freeze = vm.freezeMs !== undefined ? `${vm.freezeMs.toFixed(1)} ms` : vm.pausedByUs ? '?' : 'not paused';
    lines.push(`  ${vm.domain}@${vm.host}: ${vm.outcome}, freeze ${freeze}, now ${vm.state ?? '?'}`);
    for (const d of vm.disks) lines.push(`    ${d.target}: snapshot ${d.image} -> active ${d.overlay}`);
    if (vm.resumedByGuard) lines.push('    resumed by the freeze deadline guard');
    if (vm.error) lines.push(`    error: ${vm.error}`);
    for (const f of vm.cleanupPending ?? []) lines.push(`    left for clean-up: ${f}`);
  }
  return lines.join('\n');
}

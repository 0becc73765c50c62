import { metricMeter } from '@temporalio/workflow';
import { METRICS } from '../common/metrics';
import type { GroupSnapshotResult } from '../common/types';

/** Outcome of a group snapshot run, as counted in `groupsnap_group_snapshots_total`. */
export type RunStatus = 'completed' | 'failed' | 'cancelled' | 'rejected';

/*
 * Through the workflow metric meter: nothing is emitted while a workflow replays its history, so each run is
 * counted once however often its history is replayed (the SDK adds namespace, task_queue and workflow_type).
 */
const freezeMs = () =>
  metricMeter.createHistogram(
    METRICS.vmFreezeMs,
    'float',
    'ms',
    'how long each VM stayed paused, pause issued to resume returned on its host',
  );
const snapshots = () => metricMeter.createCounter(METRICS.groupSnapshots, 'runs', 'group snapshot runs by outcome');
const compensations = () =>
  metricMeter.createCounter(METRICS.compensations, 'runs', 'compensations run after a failure or cancellation');

/** A finished run: its outcome, and the freeze of every VM it paused (completed or not: the VMs were paused). */
export function recordRun(status: RunStatus, group: string, result?: GroupSnapshotResult): void {
  snapshots().add(1, { status, group });
  const histogram = freezeMs();
  for (const vm of result?.vms ?? [])
    if (vm.freezeMs !== undefined) histogram.record(vm.freezeMs, { host: vm.host, group });
}

/** A compensation that ran (something had been paused or snapshotted). */
export function recordCompensation(group: string): void {
  compensations().add(1, { group });
}

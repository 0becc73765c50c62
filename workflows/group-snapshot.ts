import { CancellationScope, isCancellation } from '@temporalio/workflow';
import { checked, errorMessage, FAILURE, isBadInput, failure } from '../common/failures';
import type { GroupSnapshotInput, GroupSnapshotResult } from '../common/types';
import { normalizeSnapshotInput } from '../common/validation';
import { recordCompensation, recordRun } from './run-metrics';
import { catalog, compensate, freeze, lease, plan, releaseLeases } from './snapshot-phases';
import { SnapshotRun } from './snapshot-run';
import { freezeSharded, isSharded } from './snapshot-shards';

export { hostFrozenUpdate, progressQuery } from './snapshot-run';

/** Failure type of a group snapshot that failed and was compensated; its details hold the result. */
export const SNAPSHOT_FAILED = FAILURE.snapshotFailed;

/**
 * A crash-consistent snapshot of a group of VMs spread over hosts, as a saga (phases in snapshot-phases.ts, state in
 * snapshot-run.ts): plan everything on each host, take the VMs' leases and plan again under them, pause every
 * running VM and snapshot every disk, resume only once all are snapshotted, record the catalog. On any failure or
 * cancellation, the compensations registered so far run newest first (resume what this run paused, undo the
 * snapshots it took), and the run fails with its per-VM result in the failure's details.
 */
export async function groupSnapshot(rawInput: GroupSnapshotInput): Promise<GroupSnapshotResult> {
  const run = new SnapshotRun(checked(() => normalizeSnapshotInput(rawInput)));
  run.register();
  try {
    run.setPhase('planning');
    await plan(run);
    run.setPhase('locking');
    await lease(run);
    run.setPhase('freezing');
    if (isSharded(run)) await freezeSharded(run);
    else await freeze(run);
    run.setPhase('cataloguing');
    await catalog(run);
    run.setPhase('done');
    const completed = run.result('completed');
    recordRun('completed', run.input.group, completed);
    return completed;
  } catch (err) {
    // Hosts waiting at the barrier resume now; compensation then undoes their snapshots.
    run.barrier = 'abort';
    if (isBadInput(err)) {
      recordRun('rejected', run.input.group);
      throw err;
    }
    run.setPhase('compensating');
    await CancellationScope.nonCancellable(() => compensate(run));
    if (run.freezeStartedOn.length > 0) recordCompensation(run.input.group);
    run.createdAt = undefined;
    const failed = run.result('failed', errorMessage(err));
    recordRun(isCancellation(err) ? 'cancelled' : 'failed', run.input.group, failed);
    if (isCancellation(err)) throw err;
    throw failure('snapshotFailed', failed.error!, failed);
  } finally {
    await releaseLeases(run);
  }
}

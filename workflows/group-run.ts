import {
  ApplicationFailure,
  executeChild,
  isCancellation,
  log,
  ParentClosePolicy,
  patched,
  startChild,
} from '@temporalio/workflow';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { exportWorkflowId } from '../common/backup-types';
import { copyWorkflowId } from '../common/copy-types';
import { exportGroupSnapshot } from './group-export';
import { copyGroupPoint } from './group-copy';
import {
  deleteSnapshotWorkflowId,
  groupSnapshotsIn,
  type GroupRunInput,
  type GroupRunResult,
  type RetentionOutcome,
} from '../common/groups';
import { DEFAULT_MAX_FREEZE_MS, groupSnapshotWorkflowId } from '../common/names';
import { snapshotDetails, snapshotSummary } from './ui';
import { retentionSkips } from '../common/pins';
import { normalizeRetention, planRetention, type RetentionPlan, type RetentionPolicy } from '../common/retention';
import type { GroupSnapshotResult, VmRef } from '../common/types';
import { errorMessage, rootType, toFailure, BadInputError, failure, failureOfType, FAILURES } from '../common/failures';
import { assertSafeName, assertSnapshotOptions } from '../common/validation';
import { groupSnapshot, SNAPSHOT_FAILED } from './group-snapshot';
import { control } from './activity-options';
import { membersOf, requireAllHosts, takeInventory } from './inventory';
import { deleteGroupSnapshot } from './snapshot-admin';
import { snapshotIdNow } from './snapshot-id';

function badInput(err: unknown): never {
  throw toFailure(err);
}

/**
 * One snapshot of a named group, as taken by "snapshot now", a schedule or the CLI: resolve the members (a tag
 * selector over every registered host, at this moment), take the group snapshot (a child workflow, the saga), and
 * then apply the retention policy, if any, deleting the group's snapshots it does not keep.
 */
export async function groupSnapshotRun(input: GroupRunInput): Promise<GroupRunResult> {
  let retention: RetentionPolicy | undefined;
  try {
    assertSafeName('group name', input.group);
    // Max freeze and quiesce are checked by the group snapshot itself (as before, so recorded runs replay).
    assertSnapshotOptions({ label: input.label, snapshotId: input.snapshotId });
    if (input.retention) retention = normalizeRetention(input.retention);
  } catch (err) {
    badInput(err);
  }
  const definition = input.definition ?? (await control.readGroup(input.group));
  const members: VmRef[] = await membersOf(definition);
  const snapshotId = input.snapshotId ?? snapshotIdNow();
  log.info('group run', { group: input.group, snapshotId, members: members.length, trigger: input.trigger });

  let snapshot: GroupSnapshotResult;
  try {
    const described = {
      group: input.group,
      vms: members,
      snapshotId,
      label: input.label,
      maxFreezeMs: input.maxFreezeMs ?? DEFAULT_MAX_FREEZE_MS,
      quiesce: input.quiesce ?? 'none',
    };
    snapshot = await executeChild(groupSnapshot, {
      workflowId: groupSnapshotWorkflowId(input.group, snapshotId),
      staticSummary: snapshotSummary(described),
      staticDetails: snapshotDetails(described),
      args: [
        {
          group: input.group,
          vms: members,
          snapshotId,
          ...(input.label !== undefined ? { label: input.label } : {}),
          ...(input.maxFreezeMs !== undefined ? { maxFreezeMs: input.maxFreezeMs } : {}),
          ...(input.quiesce !== undefined ? { quiesce: input.quiesce } : {}),
          ...((input.resumeWhen ?? definition.resumeWhen) !== undefined
            ? { resumeWhen: input.resumeWhen ?? definition.resumeWhen }
            : {}),
        },
      ],
    });
  } catch (err) {
    // Cancelled (e.g. by the Nexus caller that asked for it): the saga compensated; the run ends cancelled too.
    if (isCancellation(err)) throw err;
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof ApplicationFailure && cause.type === SNAPSHOT_FAILED && cause.details?.[0]) {
      const failed = cause.details[0] as GroupSnapshotResult;
      const result: GroupRunResult = { group: input.group, members, snapshot: failed };
      throw failure('snapshotFailed', cause.message, result);
    }
    throw failureOfType(rootType(err), errorMessage(err), 'groupRunFailed');
  }

  const result: GroupRunResult = { group: input.group, members, snapshot };
  // A group with a repository exports each completed snapshot off the host (after the VMs run again).
  if (definition.repository && patched('export-after-snapshot')) {
    result.export = await exportAfterSnapshot(input.group, snapshot.snapshotId, definition.repository);
    // A group with a copy target copies each exported point there (the copy worker, on the admin side).
    if (definition.copyTo && result.export.status === 'completed' && patched('copy-after-export')) {
      result.copy = await copyAfterExport(input.group, snapshot.snapshotId, definition.repository, definition.copyTo);
    }
  }
  if (retention) {
    try {
      result.retention = await applyRetention(input.group, retention, input.timezone, input.label);
    } catch (err) {
      // A plan that cannot be made (e.g. a catalog entry with an invalid createdAt) fails the run, not its task:
      // a workflow task that throws is retried for ever. The snapshot itself completed: it is in the details.
      if (!(err instanceof BadInputError)) throw err;
      throw failure(
        'retentionFailed',
        `snapshot ${snapshotId} completed, but retention of group ${input.group} failed: ${err.message}`,
        result,
      );
    }
  }
  return result;
}

/** Failure type of a run whose snapshot completed but whose retention could not be planned. */
export const RETENTION_FAILED = FAILURES.retentionFailed.type;

/**
 * Retention from this patch on: pinned snapshots, snapshots of another label than the run's own (the schedule's
 * `--label`) and snapshots a clone or in-place restore is built on are never planned for deletion; time-zone
 * buckets come from an activity (the worker's ICU data is not used in the workflow).
 */
const RETENTION_PATCH = 'retention-pins-labels-activity-buckets';

/**
 * Deletes the group's snapshots that `policy` does not keep, oldest first; deletion failures are reported, not
 * thrown. `label` is the run's own label: snapshots with another label are kept.
 * @throws BadInputError when no plan can be made (an invalid `createdAt` in a catalog entry).
 */
async function applyRetention(
  group: string,
  policy: RetentionPolicy,
  timezone: string | undefined,
  label: string | undefined,
): Promise<RetentionOutcome> {
  const inventory = await takeInventory();
  try {
    requireAllHosts(inventory, `apply retention to group ${group}`);
  } catch (err) {
    return { kept: [], deleted: [], failed: [{ snapshotId: '*', error: errorMessage(err) }] };
  }
  const listings = groupSnapshotsIn(inventory, group);
  let plan: RetentionPlan;
  let skipped: RetentionOutcome['skipped'];
  if (patched(RETENTION_PATCH)) {
    const skips = retentionSkips(inventory, listings, label);
    skipped = [...skips].map(([snapshotId, reason]) => ({ snapshotId, reason }));
    const candidates = listings
      .filter((l) => !skips.has(l.snapshotId))
      .map((l) => ({ snapshotId: l.snapshotId, createdAt: l.createdAt }));
    const buckets = await control.retentionBuckets({
      timezone: timezone ?? 'UTC',
      createdAt: [...new Set(candidates.map((c) => c.createdAt))],
    });
    plan = planRetention(candidates, policy, { ...(timezone ? { timezone } : {}), buckets });
  } else {
    plan = planRetention(
      listings.map((l) => ({ snapshotId: l.snapshotId, createdAt: l.createdAt })),
      policy,
      timezone ? { timezone } : undefined,
    );
  }
  const outcome: RetentionOutcome = {
    kept: plan.keep.map((k) => k.snapshotId),
    ...(skipped ? { skipped } : {}),
    deleted: [],
    failed: [],
  };
  for (const snapshotId of plan.remove) {
    try {
      await executeChild(deleteGroupSnapshot, {
        workflowId: deleteSnapshotWorkflowId(group, snapshotId),
        staticSummary: `Retention: delete snapshot ${snapshotId} of group ${group}`,
        args: [{ group, snapshotId }],
      });
      outcome.deleted.push(snapshotId);
    } catch (err) {
      outcome.failed.push({ snapshotId, error: errorMessage(err) });
    }
  }
  log.info('retention applied', { group, ...outcome });
  return outcome;
}

/** Exports a completed snapshot to the group's repository; a failure is reported in the run's result, not thrown. */
async function exportAfterSnapshot(
  group: string,
  snapshotId: string,
  repository: string,
): Promise<NonNullable<GroupRunResult['export']>> {
  const workflowId = exportWorkflowId(group, snapshotId, repository);
  try {
    await executeChild(exportGroupSnapshot, {
      workflowId,
      staticSummary: `Export snapshot ${snapshotId} of group ${group} to ${repository}`,
      args: [{ group, snapshotId, repository }],
    });
    return { repository, workflowId, status: 'completed' };
  } catch (err) {
    if (isCancellation(err)) throw err;
    log.warn('export after snapshot failed', { group, snapshotId, error: errorMessage(err) });
    return { repository, workflowId, status: 'failed', error: errorMessage(err) };
  }
}

/**
 * Starts the copy of an exported point to the group's copy target, and does not wait for it: the copy runs on the
 * copy worker (admin side), which may be slow or absent for a while, and must never hold up the group's next
 * snapshots. The copy outlives the run (abandoned child); its own workflow says how it ended.
 */
async function copyAfterExport(
  group: string,
  snapshotId: string,
  from: string,
  to: string,
): Promise<NonNullable<GroupRunResult['copy']>> {
  const workflowId = copyWorkflowId(group, snapshotId, to);
  try {
    await startChild(copyGroupPoint, {
      workflowId,
      parentClosePolicy: ParentClosePolicy.ABANDON,
      staticSummary: `Copy snapshot ${snapshotId} of group ${group} to ${to}`,
      args: [{ group, snapshotId, from, to }],
    });
    return { to, workflowId, status: 'started' };
  } catch (err) {
    if (isCancellation(err)) throw err;
    // One is running for this point and copy already: it is the copy.
    if (err instanceof WorkflowExecutionAlreadyStartedError) return { to, workflowId, status: 'started' };
    log.warn('copy after export not started', { group, snapshotId, error: errorMessage(err) });
    return { to, workflowId, status: 'failed', error: errorMessage(err) };
  }
}

import {
  CancellationScope,
  executeChild,
  log,
  proxyActivities,
  setCurrentDetails,
  upsertMemo,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { DrillActivities } from '../activities/drill';
import type { RepoRestoreActivities } from '../activities/repo-restore';
import { normalizeDrillInput, type DrillInput, type DrillReadiness, type DrillResult } from '../common/drill';
import { hostTaskQueue } from '../common/names';
import { repoRestoreWorkflowId, type RepoRestoreResult } from '../common/repo-restore';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { checked, errorMessage, rootType, BAD_INPUT, failure } from '../common/failures';
import { restoreFromRepo } from './repo-restore';

/**
 * A disaster-recovery drill of a group point: restores it from the repository on `toHost` as isolated clones (no
 * network interfaces), waits for them to be ready (running, a serial console line, or a check command), records
 * pass/fail and the times (restore, ready, RTO) beside the point in the repository and on this workflow (memo,
 * Temporal UI), and always tears the clones down. Can run on a Temporal Schedule.
 */
export async function drillGroup(rawInput: DrillInput): Promise<DrillResult> {
  const input = checked(() => normalizeDrillInput(rawInput));
  const drillId = input.drillId ?? `dr-${uuid4().slice(0, 8)}`;
  const taskQueue = hostTaskQueue(input.toHost);
  const host = proxyActivities<DrillActivities>({
    taskQueue,
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: [BAD_INPUT] },
  });
  const waiting = proxyActivities<DrillActivities>({
    taskQueue,
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: input.timeoutMs + 60_000,
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 2, nonRetryableErrorTypes: [BAD_INPUT, 'DrillNotReady'] },
  });
  const cleanup = proxyActivities<RepoRestoreActivities>({
    taskQueue,
    startToCloseTimeout: '5m',
    scheduleToCloseTimeout: '1h',
    retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '30s' },
  });
  const readiness: DrillReadiness =
    input.serialLine !== undefined ? 'serial-line' : input.check !== undefined ? 'command' : 'running';
  const started = Date.now();
  const snapshotId =
    input.point === 'latest' ? await host.repoLatestPoint({ repo: input.repo, group: input.group }) : input.point;
  upsertSearchAttributes([
    { key: GroupsnapGroup, value: input.group },
    { key: GroupsnapSnapshotId, value: snapshotId },
  ]);
  const result: DrillResult = {
    drillId,
    group: input.group,
    snapshotId,
    toHost: input.toHost,
    status: 'fail',
    readiness,
    startedAt: new Date(started).toISOString(),
    vms: [],
  };
  let restore: RepoRestoreResult | undefined;
  try {
    setCurrentDetails(`drill ${drillId}: restoring ${input.group} ${snapshotId} on ${input.toHost} as isolated clones`);
    try {
      restore = await executeChild(restoreFromRepo, {
        workflowId: repoRestoreWorkflowId(input.group, drillId),
        taskQueue: workflowInfo().taskQueue,
        args: [
          {
            group: input.group,
            snapshotId,
            repo: input.repo,
            toHost: input.toHost,
            mode: 'clone',
            suffix: `-${drillId}`,
            noNetwork: true,
            restoreId: drillId,
            ...(input.stripHostDevices ? { stripHostDevices: true } : {}),
          },
        ],
        staticSummary: `drill ${drillId}: restore ${input.group} ${snapshotId} on ${input.toHost}`,
      });
    } catch (err) {
      // A failed restore was rolled back by the child; its result (if any) rides in the failure's details.
      const details = (err as { cause?: { details?: unknown[] } }).cause?.details;
      if (details?.[0]) restore = details[0] as RepoRestoreResult;
      throw err;
    }
    result.restoreMs = Date.now() - started;
    result.vms = restore.vms.map((v) => ({ source: v.source, clone: v.domain }));
    setCurrentDetails(`drill ${drillId}: ${restore.vms.length} VMs running, waiting for ${readiness}`);
    const ready = await waiting.waitReady({
      domains: restore.vms.map((v) => v.domain),
      readiness,
      ...(input.serialLine !== undefined ? { serialLine: input.serialLine } : {}),
      ...(input.check !== undefined ? { check: input.check } : {}),
      timeoutMs: input.timeoutMs,
    });
    // A verdict ({ ready, reason }); runs recorded before verdicts returned { evidence } on success.
    const verdict = ready as Partial<{ ready: boolean; reason: string; evidence: string[] }>;
    if (verdict.ready === false) throw failure('drillNotReady', verdict.reason ?? 'not ready');
    result.readyMs = Date.now() - started - result.restoreMs;
    result.rtoMs = Date.now() - started;
    result.evidence = verdict.evidence ?? [verdict.reason ?? 'ready'];
    result.status = 'pass';
  } catch (err) {
    result.error = errorMessage(err);
    if (rootType(err) === BAD_INPUT && !restore) {
      // Nothing was made: report bad input as such (the CLI exits 2).
      throw failure('badInput', result.error);
    }
  } finally {
    await CancellationScope.nonCancellable(async () => {
      for (const v of restore?.status === 'restored' ? restore.vms : []) {
        await cleanup.removeRestoredVm
          .executeWithOptions({ summary: `tear down ${v.domain}` }, [
            { domain: v.domain, ...(v.uuid ? { uuid: v.uuid } : {}), files: v.disks.map((d) => d.file) },
          ])
          .catch((e: unknown) => (result.error = `${result.error ?? ''}; teardown of ${v.domain}: ${errorMessage(e)}`));
      }
    });
  }
  if (restore) result.restore = restore;
  const { restore: _omit, ...record } = result;
  await host.recordDrill({ repo: input.repo, record }).catch((e: unknown) => {
    result.recordError = errorMessage(e);
    log.warn('drill record not written to the repository', { error: result.recordError });
  });
  upsertMemo({
    lastDrill: { status: result.status, rtoMs: result.rtoMs ?? null, snapshotId, error: result.error ?? null },
  });
  setCurrentDetails(
    `drill ${drillId} of ${input.group} ${snapshotId} on ${input.toHost}: **${result.status}**` +
      (result.rtoMs !== undefined ? `, ready in ${(result.rtoMs / 1000).toFixed(1)} s` : '') +
      (result.error ? ` (${result.error})` : ''),
  );
  return result;
}

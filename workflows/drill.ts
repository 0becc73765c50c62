import {
  executeChild,
  log,
  setCurrentDetails,
  upsertMemo,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import { normalizeDrillInput, type DrillInput, type DrillReadiness, type DrillResult } from '../common/drill';
import { repoRestoreWorkflowId, type RepoRestoreResult } from '../common/repo-restore';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { checked, errorMessage, rootType, BAD_INPUT, failure } from '../common/failures';
import { onDrillHost } from './activity-options';
import { Compensations } from './compensations';
import { InstantRestores } from './instant-children';
import { restoreFromRepo } from './repo-restore';

/** The state of one drill: its input, the target's activities, the result, the restore and the teardown list. */
interface DrillRun {
  readonly input: ReturnType<typeof normalizeDrillInput>;
  readonly drillId: string;
  readonly started: number;
  readonly on: ReturnType<typeof onDrillHost>;
  readonly result: DrillResult;
  /** The child restore's result (also that of a failed restore, from its failure's details). */
  restore?: RepoRestoreResult;
  /** Run on every outcome: the drill's clones never outlive it. */
  readonly teardown: Compensations;
  /** An instant drill's restore, hydrating while the clones are checked; stopped at the teardown. */
  instant?: InstantRestores;
}

/**
 * A disaster-recovery drill of a group point: restores it from the repository on `toHost` as isolated clones (no
 * network interfaces), waits for them to be ready (running, a serial console line, or a check command), records
 * pass/fail and the times (restore, ready, RTO) beside the point in the repository and on this workflow (memo,
 * Temporal UI), and always tears the clones down. Can run on a Temporal Schedule.
 */
export async function drillGroup(rawInput: DrillInput): Promise<DrillResult> {
  const input = checked(() => normalizeDrillInput(rawInput));
  const run = await startDrill(input);
  try {
    await restoreClones(run);
    await waitReady(run);
  } catch (err) {
    run.result.error = errorMessage(err);
    // Nothing was made: report bad input as such (the CLI exits 2).
    if (rootType(err) === BAD_INPUT && !run.restore) throw failure('badInput', run.result.error);
  } finally {
    await run.teardown.run((what, e) => {
      run.result.error = `${run.result.error ?? ''}; teardown of ${what}: ${errorMessage(e)}`;
    });
  }
  return record(run);
}

/** Resolves the point (`latest`: the repository's newest) and the run's state. */
async function startDrill(input: DrillRun['input']): Promise<DrillRun> {
  const drillId = input.drillId ?? `dr-${uuid4().slice(0, 8)}`;
  const on = onDrillHost(input.toHost, input.timeoutMs);
  const readiness: DrillReadiness =
    input.serialLine !== undefined ? 'serial-line' : input.check !== undefined ? 'command' : 'running';
  const started = Date.now();
  const snapshotId =
    input.point === 'latest' ? await on.host.repoLatestPoint({ repo: input.repo, group: input.group }) : input.point;
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
  return { input, drillId, started, on, result, teardown: new Compensations() };
}

/**
 * The restore, as a child workflow: a failed (or cancelled) restore rolls itself back, so the clones' teardown is
 * registered once it has completed.
 */
async function restoreClones(run: DrillRun): Promise<void> {
  const { input, drillId, result } = run;
  const { snapshotId } = result;
  setCurrentDetails(`drill ${drillId}: restoring ${input.group} ${snapshotId} on ${input.toHost} as isolated clones`);
  let restore: RepoRestoreResult;
  const request = {
    group: input.group,
    snapshotId,
    repo: input.repo,
    toHost: input.toHost,
    mode: 'clone' as const,
    suffix: `-${drillId}`,
    noNetwork: true,
    restoreId: drillId,
    ...(input.stripHostDevices ? { stripHostDevices: true } : {}),
  };
  const options = {
    workflowId: repoRestoreWorkflowId(input.group, drillId),
    taskQueue: workflowInfo().taskQueue,
    staticSummary: `drill ${drillId}: restore ${input.group} ${snapshotId} on ${input.toHost}`,
  };
  try {
    if (input.instant) {
      run.instant = new InstantRestores();
      restore = await run.instant.start(request, options);
    } else restore = await executeChild(restoreFromRepo, { ...options, args: [request] });
  } catch (err) {
    // A failed restore was rolled back by the child; its result (if any) rides in the failure's details.
    const details = (err as { cause?: { details?: unknown[] } }).cause?.details;
    if (details?.[0]) run.restore = details[0] as RepoRestoreResult;
    throw err;
  }
  run.restore = restore;
  registerTeardown(run, restore);
  result.restoreMs = Date.now() - run.started;
  result.vms = restore.vms.map((v) => ({ source: v.source, clone: v.domain }));
}

/**
 * One teardown for all clones, removing them one at a time in the restore's order (the order recorded drills
 * replay), each failure noted and the others still removed.
 */
function registerTeardown(run: DrillRun, restore: RepoRestoreResult): void {
  const instant = run.instant;
  if (instant) {
    // Last: the serving process, once no clone reads from it (compensations run newest first).
    run.teardown.add(`serving ${run.drillId}`, () =>
      run.on.cleanup.instantStop.executeWithOptions({ summary: 'stop serving the point' }, [
        { restoreId: run.drillId },
      ]),
    );
  }
  run.teardown.add(`the clones of ${run.drillId}`, async () => {
    for (const v of restore.status === 'restored' ? restore.vms : []) {
      await run.on.cleanup.removeRestoredVm
        .executeWithOptions({ summary: `tear down ${v.domain}` }, [
          { domain: v.domain, ...(v.uuid ? { uuid: v.uuid } : {}), files: v.disks.map((d) => d.file) },
        ])
        .catch((e: unknown) => {
          run.result.error = `${run.result.error ?? ''}; teardown of ${v.domain}: ${errorMessage(e)}`;
        });
    }
  });
  // First: the hydration stops (the child restore is cancelled and has ended) before the clones go.
  if (instant) run.teardown.add(`the hydration of ${run.drillId}`, () => instant.stop());
}

/** Waits for the clones to be ready; the verdict decides pass or fail. */
async function waitReady(run: DrillRun): Promise<void> {
  const { input, result, restore } = run;
  setCurrentDetails(`drill ${run.drillId}: ${restore!.vms.length} VMs running, waiting for ${result.readiness}`);
  const ready = await run.on.waiting.waitReady({
    domains: restore!.vms.map((v) => v.domain),
    readiness: result.readiness as Exclude<DrillReadiness, 'plan'>,
    ...(input.serialLine !== undefined ? { serialLine: input.serialLine } : {}),
    ...(input.check !== undefined ? { check: input.check } : {}),
    timeoutMs: input.timeoutMs,
  });
  // A verdict ({ ready, reason }); runs recorded before verdicts returned { evidence } on success.
  const verdict = ready as Partial<{ ready: boolean; reason: string; evidence: string[] }>;
  if (verdict.ready === false) throw failure('drillNotReady', verdict.reason ?? 'not ready');
  result.readyMs = Date.now() - run.started - result.restoreMs!;
  result.rtoMs = Date.now() - run.started;
  result.evidence = verdict.evidence ?? [verdict.reason ?? 'ready'];
  result.status = 'pass';
}

/** Records the verdict beside the point in the repository (best effort), in the memo and the UI. */
async function record(run: DrillRun): Promise<DrillResult> {
  const { input, result, drillId } = run;
  if (run.restore) result.restore = run.restore;
  const { restore: _omit, ...rec } = result;
  await run.on.host.recordDrill({ repo: input.repo, record: rec }).catch((e: unknown) => {
    result.recordError = errorMessage(e);
    log.warn('drill record not written to the repository', { error: result.recordError });
  });
  upsertMemo({
    lastDrill: {
      status: result.status,
      rtoMs: result.rtoMs ?? null,
      snapshotId: result.snapshotId,
      error: result.error ?? null,
    },
  });
  setCurrentDetails(
    `drill ${drillId} of ${input.group} ${result.snapshotId} on ${input.toHost}: **${result.status}**` +
      (result.rtoMs !== undefined ? `, ready in ${(result.rtoMs / 1000).toFixed(1)} s` : '') +
      (result.error ? ` (${result.error})` : ''),
  );
  return result;
}

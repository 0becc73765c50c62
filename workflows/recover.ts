import {
  condition,
  defineQuery,
  defineUpdate,
  executeChild,
  isCancellation,
  log,
  setCurrentDetails,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { DrillRecord } from '../common/drill';
import type { GroupDefinition } from '../common/groups';
import {
  hostOf,
  normalizeRecoverInput,
  type PlanTier,
  type RecoverInput,
  type RecoverProgress,
  type RecoverResult,
  type RecoverState,
  type RecoveryPlan,
  type VmProgress,
} from '../common/plans';
import { repoRestoreWorkflowId, type RepoRestoreInput, type RepoRestoreResult } from '../common/repo-restore';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { checked, errorMessage, failure, rootType, BAD_INPUT } from '../common/failures';
import { control, onDrillHost } from './activity-options';
import { Compensations } from './compensations';
import { InstantRestores } from './instant-children';
import { restoreFromRepo } from './repo-restore';
import { escapeMarkdown, fittedTable, MAX_DETAILS_BYTES } from './ui';

/** The run's progress: tier, VM, state, time to ready (also the Temporal UI's current details). */
export const recoverProgressQuery = defineQuery<RecoverProgress>('recoverProgress');
/** Failover: keep the recovered group (re-created on the recovery side). Accepted once the last tier is ready. */
export const commitRecoveryUpdate = defineUpdate<RecoverState, []>('commit');
/** Failover: remove everything the run made. Accepted once the last tier is ready, or after a tier failed. */
export const rollbackRecoveryUpdate = defineUpdate<RecoverState, []>('rollback');

/** The state of one recovery run. */
interface RecoverRun {
  readonly input: ReturnType<typeof normalizeRecoverInput>;
  readonly runId: string;
  readonly started: number;
  plan?: RecoveryPlan;
  readonly result: RecoverResult;
  /** Removal of every VM the run's restores made, newest first. */
  readonly undo: Compensations;
  /** The instant restores (plan.restore `instant`): hydrating after their tier; stopped before `undo` runs. */
  readonly instant: InstantRestores;
  decision?: 'commit' | 'rollback';
}

/**
 * Brings a group back by its recovery plan: tier by tier, each VM restored from the repository on its recovery host
 * (a child `restoreFromRepo` per tier and host, so the restore's own all-or-nothing rollback holds), each VM's
 * readiness checked on its host; a tier starts only when every VM of the tier before is ready. `test`: isolated
 * clones, always torn down, the outcome recorded beside the point as drills are. `failover`: as the original VMs;
 * after the last tier waits for `commit` (the group re-created on the recovery side) or `rollback` (everything the
 * run made removed), or the plan's decision timeout. A failed check stops the plan (test: torn down; failover: the
 * VMs are left for inspection until `rollback`).
 */
export async function recoverGroup(rawInput: RecoverInput): Promise<RecoverResult> {
  const input = checked(() => normalizeRecoverInput(rawInput));
  const run = startRun(input);
  try {
    await readPlanAndPoint(run);
    for (let i = 0; i < run.plan!.tiers.length; i++) await runTier(run, i);
    run.result.rtoMs = Date.now() - run.started;
  } catch (err) {
    run.result.error = errorMessage(err);
    if (isCancellation(err)) {
      await tearDown(run, 'rolled-back');
      throw err;
    }
    if (rootType(err) === BAD_INPUT && run.undo.size === 0) {
      setState(run, 'failed');
      throw failure('badInput', run.result.error);
    }
    if (input.mode === 'test') return finishTest(run, 'failed');
    return awaitRollback(run);
  }
  if (input.mode === 'test') return finishTest(run, 'passed');
  return decide(run);
}

function startRun(input: RecoverRun['input']): RecoverRun {
  const runId = input.runId ?? `rc-${uuid4().slice(0, 8)}`;
  upsertSearchAttributes([{ key: GroupsnapGroup, value: input.group }]);
  const run: RecoverRun = {
    input,
    runId,
    started: Date.now(),
    result: {
      runId,
      group: input.group,
      plan: input.plan,
      mode: input.mode,
      state: 'starting',
      tiers: [],
      restores: [],
    },
    undo: new Compensations(),
    instant: new InstantRestores(),
  };
  setHandler(recoverProgressQuery, () => progressOf(run));
  setHandler(
    commitRecoveryUpdate,
    async () => {
      run.decision ??= 'commit';
      run.result.decidedBy ??= 'update';
      await condition(() => ['committed', 'rolled-back', 'failed'].includes(run.result.state));
      return run.result.state;
    },
    {
      validator: () => {
        if (run.input.mode !== 'failover') throw failure('badInput', 'a test run has nothing to commit');
        if (run.result.state !== 'awaiting-decision')
          throw failure('badInput', `run ${runId} is ${run.result.state}: commit once every tier is ready`);
      },
    },
  );
  setHandler(
    rollbackRecoveryUpdate,
    async () => {
      run.decision ??= 'rollback';
      run.result.decidedBy ??= 'update';
      await condition(() => ['committed', 'rolled-back', 'failed'].includes(run.result.state));
      return run.result.state;
    },
    {
      validator: () => {
        if (run.input.mode !== 'failover') throw failure('badInput', 'a test run always tears down by itself');
        if (run.result.state !== 'awaiting-decision' && run.result.state !== 'stopped')
          throw failure('badInput', `run ${runId} is ${run.result.state}: nothing to roll back now`);
      },
    },
  );
  return run;
}

function progressOf(run: RecoverRun): RecoverProgress {
  const { restores: _r, decidedBy: _d, recordError: _e, ...progress } = run.result;
  return progress;
}

/** Reads the stored plan (checked again), resolves the point, and lays out the progress of every tier and VM. */
async function readPlanAndPoint(run: RecoverRun): Promise<void> {
  const { input, result } = run;
  const plan = await control.readPlan({ group: input.group, name: input.plan });
  run.plan = plan;
  const firstHost = hostOf(plan, plan.tiers[0].vms[0].vm);
  result.snapshotId =
    input.point === 'latest'
      ? await onDrillHost(firstHost, 60_000).host.repoLatestPoint({ repo: plan.repository, group: input.group })
      : input.point;
  upsertSearchAttributes([{ key: GroupsnapSnapshotId, value: result.snapshotId }]);
  result.tiers = plan.tiers.map((t) => ({
    name: t.name,
    state: 'waiting',
    vms: t.vms.map((v): VmProgress => ({
      vm: v.vm,
      host: hostOf(plan, v.vm),
      domain: input.mode === 'test' ? `${v.vm}-${run.runId}` : v.vm,
      state: 'waiting',
    })),
  }));
  setState(run, 'recovering');
}

/** One tier: its VMs restored (one child restore per host, in parallel), then every VM's check, in parallel. */
async function runTier(run: RecoverRun, i: number): Promise<void> {
  const plan = run.plan!;
  const tier = plan.tiers[i];
  const progress = run.result.tiers[i];
  const tierStart = Date.now();
  progress.startedMs = tierStart - run.started;
  progress.state = 'restoring';
  for (const v of progress.vms) v.state = 'restoring';
  show(run);
  const hosts = [...new Set(progress.vms.map((v) => v.host))];
  const restores = await Promise.allSettled(hosts.map((h, k) => restoreOnHost(run, i, h, k)));
  const failed = restores.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    progress.state = 'failed';
    for (const v of progress.vms) if (v.state === 'restoring') v.state = 'failed';
    show(run);
    throw failed.reason;
  }
  progress.state = 'checking';
  for (const v of progress.vms) v.state = 'checking';
  show(run);
  const verdicts = await Promise.all(tier.vms.map((v, j) => checkVm(run, tier, progress.vms[j], v, tierStart)));
  const notReady = verdicts.filter((v) => v !== undefined);
  if (notReady.length) {
    progress.state = 'failed';
    show(run);
    throw failure('drillNotReady', `tier ${tier.name}: ${notReady.join('; ')}`);
  }
  progress.state = 'ready';
  progress.readyMs = Date.now() - run.started;
  show(run);
}

/** The tier's VMs placed on `host`, restored by a child restore; their removal registered once it completed. */
async function restoreOnHost(run: RecoverRun, i: number, host: string, k: number): Promise<void> {
  const { input, runId } = run;
  const plan = run.plan!;
  const progress = run.result.tiers[i];
  const vms = progress.vms.filter((v) => v.host === host);
  const restoreId = `${runId}-t${i + 1}-h${k + 1}`;
  const test = input.mode === 'test';
  const request: RepoRestoreInput & { instant?: boolean } = {
    group: input.group,
    snapshotId: run.result.snapshotId!,
    repo: plan.repository,
    toHost: host,
    mode: test ? 'clone' : 'original',
    ...(test ? { suffix: `-${runId}` } : {}),
    ...(test && plan.network.test === 'none' ? { noNetwork: true } : {}),
    ...(test && plan.network.test !== 'none' ? { networkMap: plan.network.test } : {}),
    ...(!test && Object.keys(plan.network.map).length ? { networkMap: plan.network.map } : {}),
    restoreId,
    vms: vms.map((v) => v.vm),
    // The restore's instant mode (VMs running while their data streams in), where the restore has it.
    ...(plan.restore === 'instant' ? { instant: true } : {}),
  };
  const options = {
    workflowId: repoRestoreWorkflowId(input.group, restoreId),
    taskQueue: workflowInfo().taskQueue,
    staticSummary: `recovery ${runId}, tier ${progress.name}: restore ${vms.map((v) => v.vm).join(', ')} on ${host}`,
  };
  let restore: RepoRestoreResult;
  const cleanup = onDrillHost(host, 60_000).cleanup;
  try {
    // Instant: back as soon as the VMs run; the tier's checks go on while the restore hydrates.
    if (plan.restore === 'instant') restore = await run.instant.start({ ...request, restoreId }, options);
    else restore = await executeChild(restoreFromRepo, { ...options, args: [request] });
  } catch (err) {
    // A failed restore rolled itself back; its result rides in the failure's details.
    const details = (err as { cause?: { details?: unknown[] } }).cause?.details;
    if (details?.[0]) run.result.restores.push(details[0] as RepoRestoreResult);
    for (const v of vms) v.reason = errorMessage(err);
    throw err;
  }
  run.result.restores.push(restore);
  if (plan.restore === 'instant') {
    // The serving process stops last, once no VM of this restore reads from it (compensations run newest first).
    run.undo.add(`serving ${restoreId} on ${host}`, () =>
      cleanup.instantStop.executeWithOptions({ summary: `stop serving (recovery ${runId})` }, [{ restoreId }]),
    );
  }
  for (const v of restore.vms) {
    run.undo.add(`${v.domain} on ${host}`, async () => {
      await cleanup.removeRestoredVm.executeWithOptions({ summary: `remove ${v.domain} (recovery ${runId})` }, [
        { domain: v.domain, ...(v.uuid ? { uuid: v.uuid } : {}), files: v.disks.map((d) => d.file) },
      ]);
      const p = vms.find((x) => x.domain === v.domain);
      if (p) p.state = 'removed';
    });
  }
  for (const v of vms) v.state = 'checking';
}

/** One VM's readiness check on its host; undefined when ready, else why not. */
async function checkVm(
  run: RecoverRun,
  tier: PlanTier,
  p: VmProgress,
  v: PlanTier['vms'][number],
  tierStart: number,
): Promise<string | undefined> {
  const verdict = await onDrillHost(p.host, v.check.timeoutMs)
    .waiting.checkVmReady.executeWithOptions({ summary: `tier ${tier.name}: ${v.check.kind} check of ${p.domain}` }, [
      { domain: p.domain, check: v.check },
    ])
    .catch((err: unknown) => ({ ready: false, reason: errorMessage(err) }));
  p.reason = verdict.reason;
  if (!verdict.ready) {
    p.state = 'not-ready';
    show(run);
    return `${p.vm} on ${p.host} not ready (${verdict.reason})`;
  }
  p.state = 'ready';
  p.readyMs = Date.now() - tierStart;
  log.info('VM ready', { tier: tier.name, vm: p.vm, host: p.host, readyMs: p.readyMs });
  show(run);
  return undefined;
}

function setState(run: RecoverRun, state: RecoverState): void {
  run.result.state = state;
  show(run);
}

/** The run's progress as the Temporal UI's current details: one row per VM. */
function show(run: RecoverRun): void {
  const r = run.result;
  const s = (ms?: number) => (ms === undefined ? '' : `${(ms / 1000).toFixed(1)} s`);
  const rows = r.tiers.flatMap((t) =>
    t.vms.map((v) => ({
      tier: `${t.name} (${t.state})`,
      vm: v.vm,
      host: v.host,
      domain: v.domain,
      state: v.state,
      'ready after': s(v.readyMs),
    })),
  );
  const head =
    `**${r.mode}** recovery ${r.runId} of ${r.group} by plan ${r.plan}` +
    (r.snapshotId ? `, point ${r.snapshotId}` : '') +
    `: **${r.state}**` +
    (r.rtoMs !== undefined ? `, last tier ready after ${s(r.rtoMs)}` : '') +
    (r.decisionDeadline && r.state === 'awaiting-decision' ? `, decision due ${r.decisionDeadline}` : '') +
    (r.error ? `\n\n${escapeMarkdown(r.error.slice(0, 1000))}` : '');
  const table = fittedTable(rows, ['tier', 'vm', 'host', 'domain', 'state', 'ready after'], MAX_DETAILS_BYTES - 2000);
  setCurrentDetails(rows.length ? `${head}\n\n${table}` : head);
}

/** Removes everything the run made (newest first), each failure noted. */
async function tearDown(run: RecoverRun, end: RecoverState): Promise<void> {
  setState(run, run.input.mode === 'test' ? 'tearing-down' : 'rolling-back');
  await run.instant.stop();
  await run.undo.run((what, e) => {
    run.result.error = `${run.result.error ?? ''}; removing ${what}: ${errorMessage(e)}`;
  });
  setState(run, end);
}

/** Test runs: tear down, record the outcome beside the point (as a drill), and in the memo. */
async function finishTest(run: RecoverRun, end: 'passed' | 'failed'): Promise<RecoverResult> {
  await tearDown(run, end);
  const r = run.result;
  const plan = run.plan!;
  const record: DrillRecord & { plan: string; tiers: { name: string; readyMs?: number }[] } = {
    drillId: r.runId,
    group: r.group,
    snapshotId: r.snapshotId!,
    toHost: hostOf(plan, plan.tiers[0].vms[0].vm),
    status: end === 'passed' ? 'pass' : 'fail',
    readiness: 'plan',
    startedAt: new Date(run.started).toISOString(),
    ...(r.rtoMs !== undefined ? { rtoMs: r.rtoMs } : {}),
    ...(r.error ? { error: r.error } : {}),
    evidence: r.tiers.flatMap((t) => t.vms.map((v) => `${t.name}/${v.vm}: ${v.state} ${v.reason ?? ''}`.trim())),
    vms: r.tiers.flatMap((t) => t.vms.map((v) => ({ source: v.vm, clone: v.domain }))),
    plan: r.plan,
    tiers: r.tiers.map((t) => ({ name: t.name, ...(t.readyMs !== undefined ? { readyMs: t.readyMs } : {}) })),
  };
  await onDrillHost(record.toHost, 60_000)
    .host.recordDrill({ repo: plan.repository, record })
    .catch((e: unknown) => {
      r.recordError = errorMessage(e);
      log.warn('recovery test record not written to the repository', { error: r.recordError });
    });
  upsertMemo({ lastRecoveryTest: { status: record.status, rtoMs: r.rtoMs ?? null, snapshotId: r.snapshotId } });
  return r;
}

/** Failover, every tier ready: waits for commit or rollback, or applies the plan's policy after its timeout. */
async function decide(run: RecoverRun): Promise<RecoverResult> {
  const { timeoutMs, onTimeout } = run.plan!.decision;
  run.result.decisionDeadline = new Date(Date.now() + timeoutMs).toISOString();
  setState(run, 'awaiting-decision');
  try {
    if (!(await condition(() => run.decision !== undefined, timeoutMs))) {
      run.decision = onTimeout;
      run.result.decidedBy = 'timeout';
    }
  } catch (err) {
    // Cancelled while waiting: as a rollback.
    if (isCancellation(err)) await tearDown(run, 'rolled-back');
    throw err;
  }
  if (run.decision === 'rollback') {
    await tearDown(run, 'rolled-back');
    return run.result;
  }
  await commit(run);
  return run.result;
}

/**
 * The group re-created on the recovery side: its definition is now the recovered VMs on their hosts (its plans
 * stay), exported to the plan's commit repository (else where it was), and snapshotted on the plan's schedule when it
 * has none.
 */
async function commit(run: RecoverRun): Promise<void> {
  setState(run, 'committing');
  if (run.instant.size > 0) {
    // The group is protected from here: its first snapshot must find local disks, no export read over NBD.
    setCurrentDetails(`committing recovery ${run.runId}: waiting until every disk is hydrated`);
    const hydrated = await run.instant.hydrated();
    run.result.restores = run.result.restores.map((r) => hydrated.find((h) => h.restoreId === r.restoreId) ?? r);
  }
  const plan = run.plan!;
  const current = await control.readGroup(run.input.group).catch(() => undefined);
  const repository = plan.commit.repository ?? current?.repository;
  const definition: GroupDefinition = {
    name: run.input.group,
    selector: { vms: run.result.tiers.flatMap((t) => t.vms.map((v) => ({ domain: v.domain, host: v.host }))) },
    ...(current?.description ? { description: current.description } : {}),
    ...(repository ? { repository } : {}),
    ...(current?.resumeWhen ? { resumeWhen: current.resumeWhen } : {}),
  };
  await control.defineGroupAs(definition);
  if (plan.commit.schedule) await control.ensureGroupSchedule({ group: run.input.group, ...plan.commit.schedule });
  setState(run, 'committed');
}

/** Failover, a tier failed: the VMs stay for inspection until `rollback`, or are left after the decision timeout. */
async function awaitRollback(run: RecoverRun): Promise<RecoverResult> {
  const timeoutMs = run.plan?.decision.timeoutMs ?? 0;
  run.result.decisionDeadline = new Date(Date.now() + timeoutMs).toISOString();
  setState(run, 'stopped');
  try {
    if (run.undo.size > 0 && (await condition(() => run.decision !== undefined, timeoutMs))) {
      await tearDown(run, 'rolled-back');
      return run.result;
    }
  } catch (err) {
    if (isCancellation(err)) await tearDown(run, 'rolled-back');
    throw err;
  }
  setState(run, 'failed');
  return run.result;
}

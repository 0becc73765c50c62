import {
  defineSignal,
  getExternalWorkflowHandle,
  log,
  patched,
  setCurrentDetails,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import {
  normalizeRepoRestoreInput,
  RESTORE_RUNNING_SIGNAL,
  type NormalizedRepoRestoreInput,
  type RepoRestoreInput,
  type RepoRestorePlan,
  type RepoRestoreResult,
  type RepoRestoreVmResult,
} from '../common/repo-restore';
import { GroupsnapGroup, GroupsnapSnapshotId, GroupsnapVmCount } from '../common/search-attributes';
import { checked, errorMessage, rootType, BAD_INPUT, failure } from '../common/failures';
import { onRestoreTarget } from './activity-options';
import { Compensations } from './compensations';

/** An instant restore's result once every VM runs, sent to the parent that asked (`reportRunning`). */
export const restoreRunningSignal = defineSignal<[RepoRestoreResult]>(RESTORE_RUNNING_SIGNAL);

/** The state of one restore from the repository: its input, the target's activities, the result, the undo list. */
interface RepoRestoreRun {
  readonly input: NormalizedRepoRestoreInput;
  readonly restoreId: string;
  readonly suffix: string;
  readonly started: number;
  readonly target: ReturnType<typeof onRestoreTarget>;
  readonly result: RepoRestoreResult;
  readonly undo: Compensations;
  /**
   * Whether a step on the target completed (a disk written, a VM defined): a failure is then no longer "bad input,
   * nothing changed" (CLI exit 2), even when rolled back.
   */
  changed: boolean;
}

/**
 * Restores a group point from the off-host repository onto one host, all VMs or none: plans on the target (point
 * readable with the host's key, names free, space enough: refused before anything is written), rebuilds every
 * disk from its chunks, defines every VM from its stored XML (clones: new names, UUIDs and MACs; as the original:
 * same identity), starts them all paused, then resumes them together. On any failure (or cancellation) every VM
 * and file it made is removed again (the compensations, newest first).
 */
export async function restoreFromRepo(rawInput: RepoRestoreInput): Promise<RepoRestoreResult> {
  const run = startRun(checked(() => normalizeRepoRestoreInput(rawInput)));
  const plan = await planRestore(run);
  if (run.input.instant) return instantRestore(run, plan);
  try {
    await rebuildDisks(run, plan);
    await defineVms(run, plan, patched(RESTORE_OVERLAP_PATCH));
    if (run.input.start) await startTogether(run, plan);
    else for (const v of run.result.vms) v.state = 'shutoff';
    return finish(run, plan);
  } catch (err) {
    await run.undo.run((what, undoErr) => {
      const vm = vmResult(run, what);
      vm.error = `${vm.error ?? ''}; rollback failed: ${errorMessage(undoErr)}`;
    });
    throw rolledBack(run, err);
  }
}

function startRun(input: NormalizedRepoRestoreInput): RepoRestoreRun {
  const restoreId = input.restoreId ?? `rr-${uuid4().slice(0, 8)}`;
  const { group, snapshotId, repo, toHost, mode } = input;
  upsertSearchAttributes([
    { key: GroupsnapGroup, value: group },
    { key: GroupsnapSnapshotId, value: snapshotId },
  ]);
  return {
    input,
    restoreId,
    suffix: input.suffix ?? `-${restoreId}`,
    started: Date.now(),
    target: onRestoreTarget(toHost),
    result: { restoreId, group, snapshotId, repo, toHost, mode, status: 'restored', vms: [], bytesWritten: 0 },
    undo: new Compensations(),
    changed: false,
  };
}

function vmResult(run: RepoRestoreRun, domain: string): RepoRestoreVmResult {
  return run.result.vms.find((v) => v.domain === domain)!;
}

/** Plans on the target: nothing is written yet, so a refusal leaves nothing to undo. */
async function planRestore(run: RepoRestoreRun): Promise<RepoRestorePlan> {
  const { input, result } = run;
  const { group, snapshotId, repo, toHost, mode } = input;
  setCurrentDetails(`planning the restore of ${group} ${snapshotId} on ${toHost}`);
  const plan = await run.target.plan.repoRestorePlan({
    repo,
    group,
    snapshotId,
    restoreId: run.restoreId,
    mode,
    suffix: run.suffix,
    format: input.format,
    // The stored definitions are checked here, before any disk is written (refused: bad input, nothing made).
    networkMap: input.networkMap,
    noNetwork: input.noNetwork,
    ...(input.stripHostDevices ? { stripHostDevices: true } : {}),
    ...(input.vms ? { vms: input.vms } : {}),
    ...(input.instant ? { instant: true } : {}),
  });
  upsertSearchAttributes([{ key: GroupsnapVmCount, value: plan.vms.length }]);
  if (plan.virtType) result.virtType = plan.virtType;
  result.vms = plan.vms.map((v): RepoRestoreVmResult => ({
    source: v.source,
    domain: v.domain,
    disks: v.disks.map((d) => ({ target: d.target, file: d.file, format: d.format, virtualSize: d.virtualSize })),
    ...(v.removed?.length ? { removed: v.removed } : {}),
  }));
  return plan;
}

/** Registers each VM's removal: its files, and its definition by the plan's UUID (known before define completes). */
function registerRemovals(run: RepoRestoreRun, plan: RepoRestorePlan): void {
  for (const v of plan.vms) {
    const made: { domain: string; uuid?: string; files: string[] } = {
      domain: v.domain,
      ...(v.uuid ? { uuid: v.uuid } : {}),
      files: v.disks.map((d) => d.file),
    };
    // The definition's UUID is added once it is known (defineVms), before any compensation can run.
    run.undo.add(v.domain, async () => {
      const defined = vmResult(run, v.domain).uuid;
      if (defined !== undefined) made.uuid = defined;
      await run.target.cleanup.removeRestoredVm.executeWithOptions({ summary: `remove ${v.domain}` }, [made]);
    });
  }
}

/**
 * Registers each VM's removal (its files, and its definition by the plan's UUID, so it is removed even if define's
 * completion is lost), then rebuilds every disk from its chunks, all in parallel.
 */
async function rebuildDisks(run: RepoRestoreRun, plan: RepoRestorePlan): Promise<void> {
  const { repo, group, snapshotId, toHost } = run.input;
  registerRemovals(run, plan);
  let done = 0;
  const total = plan.vms.reduce((n, v) => n + v.disks.length, 0);
  setCurrentDetails(`rebuilding ${total} disks (${plan.bytesNeeded} bytes of data) on ${toHost}`);
  await Promise.all(
    plan.vms.flatMap((v) =>
      v.disks.map(async (d) => {
        try {
          const r = await run.target.rebuild.rebuildDisk.executeWithOptions(
            { summary: `rebuild ${v.domain} ${d.target} from the repository` },
            [{ repo, group, snapshotId, domain: v.source, target: d.target, file: d.file, format: d.format }],
          );
          run.changed = true;
          vmResult(run, v.domain).disks.find((x) => x.target === d.target)!.bytesWritten = r.bytesWritten;
          run.result.bytesWritten += r.bytesWritten;
          setCurrentDetails(`rebuilt ${++done}/${total} disks on ${toHost}`);
        } catch (err) {
          vmResult(run, v.domain).error = errorMessage(err);
          throw err;
        }
      }),
    ),
  );
}

/**
 * Replay marker: the VMs are defined all at once (and, in an instant restore, while the point is being served)
 * instead of one after the other after serving. Histories recorded before it keep the old order.
 */
export const RESTORE_OVERLAP_PATCH = 'restore-define-in-parallel';

/**
 * Waits until every one of `tasks` has ended, then throws the first failure: nothing a compensation removes is
 * still being made when the compensations run.
 */
async function allEnded(tasks: Promise<unknown>[]): Promise<void> {
  const ended = await Promise.allSettled(tasks);
  const failed = ended.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Defines every VM from its stored XML: all at once, or (`parallel` false: histories before the patch) in turn. */
async function defineVms(run: RepoRestoreRun, plan: RepoRestorePlan, parallel: boolean): Promise<void> {
  if (parallel) await allEnded(plan.vms.map((v) => defineVm(run, plan, v)));
  else for (const v of plan.vms) await defineVm(run, plan, v);
}

async function defineVm(run: RepoRestoreRun, plan: RepoRestorePlan, v: RepoRestorePlan['vms'][number]): Promise<void> {
  const { input, restoreId } = run;
  const defined = await run.target.vm.defineRestoredVm.executeWithOptions({ summary: `define ${v.domain}` }, [
    {
      repo: input.repo,
      group: input.group,
      snapshotId: input.snapshotId,
      restoreId,
      vm: v,
      mode: input.mode,
      networkMap: input.networkMap,
      noNetwork: input.noNetwork,
      ...(plan.virtType ? { virtType: plan.virtType } : {}),
      // Fresh socket-link ports chosen by the plan on the target, the same map for every VM (clones only).
      ...(plan.socketPorts && input.mode === 'clone' ? { socketPorts: plan.socketPorts } : {}),
      ...(input.stripHostDevices ? { stripHostDevices: true } : {}),
      ...(input.instant ? { instant: true } : {}),
    },
  ]);
  run.changed = true;
  vmResult(run, v.domain).uuid = defined.uuid;
}

/** Every VM starts paused first, so the group comes up together, or not at all. */
async function startTogether(run: RepoRestoreRun, plan: RepoRestorePlan): Promise<void> {
  const { vm } = run.target;
  setCurrentDetails(`starting ${plan.vms.length} VMs paused on ${run.input.toHost}`);
  await Promise.all(
    plan.vms.map(async (v) => {
      try {
        vmResult(run, v.domain).state = await vm.startRestoredVm.executeWithOptions(
          { summary: `start ${v.domain} paused` },
          [{ domain: v.domain, paused: true }],
        );
      } catch (err) {
        vmResult(run, v.domain).error = errorMessage(err);
        throw err;
      }
    }),
  );
  await Promise.all(
    plan.vms.map(async (v) => {
      vmResult(run, v.domain).state = await vm.resumeRestoredVm.executeWithOptions({ summary: `resume ${v.domain}` }, [
        { domain: v.domain },
      ]);
    }),
  );
}

/** Steps of hydration: each reports within this long (ms), so the run's details show the progress. */
const HYDRATE_STEP_MS = 10_000;
const DEFAULT_HYDRATE_PARALLEL = 4;

/**
 * An instant restore (docs/adr/0013-instant-restore.md): the target serves the point's disks from the repository
 * (NBD) and makes a local qcow2 overlay per disk over its export; the VMs are defined on them, started paused and
 * resumed together, then hydrated in the background until no disk reads from the repository. Before the VMs were
 * resumed a failure removes everything; after, nothing is removed (the guests' writes are in the overlays).
 */
async function instantRestore(run: RepoRestoreRun, plan: RepoRestorePlan): Promise<RepoRestoreResult> {
  const { repo, group, snapshotId, toHost } = run.input;
  try {
    registerRemovals(run, plan);
    run.undo.add('serving', () =>
      run.target.cleanup.instantStop.executeWithOptions({ summary: 'stop serving the point' }, [
        { restoreId: run.restoreId },
      ]),
    );
    const total = plan.vms.reduce((n, v) => n + v.disks.length, 0);
    setCurrentDetails(`serving ${total} disks of ${group} ${snapshotId} from the repository on ${toHost}`);
    const serve = async () => {
      await run.target.serve.instantServe.executeWithOptions(
        { summary: `serve ${total} disks from the repository (NBD) and make their overlays` },
        [{ repo, group, snapshotId, restoreId: run.restoreId }],
      );
      run.changed = true;
    };
    if (patched(RESTORE_OVERLAP_PATCH)) {
      // A definition names its overlay and socket without opening them: the VMs are defined while the point is
      // being served; they start once both are done.
      await allEnded([serve(), defineVms(run, plan, true)]);
    } else {
      await serve();
      await defineVms(run, plan, false);
    }
    await startTogether(run, plan);
  } catch (err) {
    await run.undo.run((what, undoErr) => {
      const vm = run.result.vms.find((v) => v.domain === what);
      if (vm) vm.error = `${vm.error ?? ''}; rollback failed: ${errorMessage(undoErr)}`;
    });
    throw rolledBack(run, err);
  }
  // The guests run and write into their overlays: from here on nothing is removed.
  run.undo.discard();
  run.result.runningAfterMs = Date.now() - run.started;
  run.result.instant = true;
  log.info('instant restore: all VMs running, hydrating', { group, snapshotId, toHost, restoreId: run.restoreId });
  const parent = workflowInfo().parent;
  if (run.input.reportRunning && parent) {
    // The parent (a recovery plan's tier, a drill) goes on with its readiness checks while this one hydrates.
    await getExternalWorkflowHandle(parent.workflowId, parent.runId)
      .signal(restoreRunningSignal, { ...run.result, durationMs: run.result.runningAfterMs })
      .catch((err: unknown) => log.warn('parent not told the VMs run', { error: errorMessage(err) }));
  }
  await hydrate(run, plan);
  run.result.hydratedAfterMs = Date.now() - run.started;
  return finish(run, plan);
}

/** Hydration steps until every disk is local, then the NBD backing leaves the definitions and serving stops. */
async function hydrate(run: RepoRestoreRun, plan: RepoRestorePlan): Promise<void> {
  const disks = plan.vms.flatMap((v) =>
    v.disks.map((d) => ({ domain: v.domain, target: d.target, virtualSize: d.virtualSize })),
  );
  const maxParallel = run.input.hydrateParallel ?? DEFAULT_HYDRATE_PARALLEL;
  for (let step = 1; ; step++) {
    const r = await run.target.hydrate.instantHydrate.executeWithOptions(
      { summary: `hydrate ${disks.length} disks (step ${step})` },
      [
        {
          restoreId: run.restoreId,
          disks,
          maxParallel,
          stepMs: HYDRATE_STEP_MS,
          ...(run.input.hydrateBandwidthMiB ? { bandwidthMiB: run.input.hydrateBandwidthMiB } : {}),
        },
      ],
    );
    run.result.hydration = r.disks;
    if (r.serverRestarted) run.result.serverRestarts = (run.result.serverRestarts ?? 0) + 1;
    if (r.reopened.length) run.result.reopened = [...(run.result.reopened ?? []), ...r.reopened];
    if (r.resumed.length) run.result.resumedAfterIoError = [...(run.result.resumedAfterIoError ?? []), ...r.resumed];
    const done = r.disks.reduce((n, d) => n + d.done, 0);
    const all = r.disks.reduce((n, d) => n + d.total, 0);
    const pct = all ? Math.floor((done * 100) / all) : 100;
    const hydrated = r.disks.filter((d) => d.hydrated).length;
    setCurrentDetails(
      `all ${plan.vms.length} VMs running on ${run.input.toHost}; hydrating: ${hydrated}/${disks.length} disks done, ` +
        `${done}/${all} bytes (${pct}%)${r.storeReachable ? '' : '; the store is unreachable (VMs pause on a miss)'}`,
    );
    if (r.hydrated) break;
  }
  const finished = await run.target.hydrate.instantFinish.executeWithOptions(
    { summary: 'drop the NBD backing, stop serving' },
    [{ restoreId: run.restoreId, domains: plan.vms.map((v) => v.domain) }],
  );
  // A VM shut off meanwhile (by its guest, or a crash) was hydrated offline: its state says so.
  const states = finished?.states ?? {};
  for (const v of run.result.vms) if (states[v.domain]) v.state = states[v.domain];
}

function finish(run: RepoRestoreRun, plan: RepoRestorePlan): RepoRestoreResult {
  const { group, snapshotId, toHost } = run.input;
  run.result.durationMs = run.result.runningAfterMs ?? Date.now() - run.started;
  setCurrentDetails(`restored ${plan.vms.length} VMs of ${group} ${snapshotId} on ${toHost}`);
  log.info('group restored from the repository', {
    group,
    snapshotId,
    toHost,
    restoreId: run.restoreId,
    vms: plan.vms.length,
  });
  return run.result;
}

/** The failure of a rolled-back restore, its result in the details; bad input only when nothing was changed. */
function rolledBack(run: RepoRestoreRun, err: unknown) {
  const { result } = run;
  result.status = 'failed';
  result.error = errorMessage(err);
  for (const v of result.vms) delete v.state;
  return failure(
    rootType(err) === BAD_INPUT && !run.changed ? 'badInput' : 'restoreFailed',
    `restore of ${result.group} ${result.snapshotId} on ${result.toHost} failed and was rolled back: ${result.error}`,
    result,
  );
}

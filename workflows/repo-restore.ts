import {
  CancellationScope,
  log,
  proxyActivities,
  setCurrentDetails,
  upsertSearchAttributes,
  uuid4,
} from '@temporalio/workflow';
import type { RepoRestoreActivities } from '../activities/repo-restore';
import { hostTaskQueue } from '../common/names';
import {
  normalizeRepoRestoreInput,
  type RepoRestoreInput,
  type RepoRestoreResult,
  type RepoRestoreVmResult,
} from '../common/repo-restore';
import { GroupsnapGroup, GroupsnapSnapshotId, GroupsnapVmCount } from '../common/search-attributes';
import { checked, errorMessage, rootType, BAD_INPUT, failure } from '../common/failures';

/** The target host's restore activities, with timeouts per kind of work. */
function onTarget(hostId: string) {
  const taskQueue = hostTaskQueue(hostId);
  const retry = {
    maximumAttempts: 3,
    initialInterval: '1s' as const,
    nonRetryableErrorTypes: [BAD_INPUT, 'DamagedPoint'],
  };
  return {
    // A host without a worker is reported within seconds, not waited for.
    plan: proxyActivities<RepoRestoreActivities>({
      taskQueue,
      scheduleToStartTimeout: '15s',
      startToCloseTimeout: '2m',
      retry,
    }),
    // Rebuilding a disk moves its data: heartbeats tell a dead worker from a slow one.
    rebuild: proxyActivities<RepoRestoreActivities>({
      taskQueue,
      scheduleToStartTimeout: '1m',
      startToCloseTimeout: '6h',
      heartbeatTimeout: '1m',
      retry,
    }),
    vm: proxyActivities<RepoRestoreActivities>({
      taskQueue,
      scheduleToStartTimeout: '1m',
      startToCloseTimeout: '2m',
      retry,
    }),
    cleanup: proxyActivities<RepoRestoreActivities>({
      taskQueue,
      startToCloseTimeout: '5m',
      scheduleToCloseTimeout: '1h',
      retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '30s' },
    }),
  };
}

/**
 * Restores a group point from the off-host repository onto one host, all VMs or none: plans on the target (point
 * readable with the host's key, names free, space enough: refused before anything is written), rebuilds every
 * disk from its chunks, defines every VM from its stored XML (clones: new names, UUIDs and MACs; as the original:
 * same identity), starts them all paused, then resumes them together. On any failure (or cancellation) every VM
 * and file it made is removed again.
 */
export async function restoreFromRepo(rawInput: RepoRestoreInput): Promise<RepoRestoreResult> {
  const input = checked(() => normalizeRepoRestoreInput(rawInput));
  const started = Date.now();
  const restoreId = input.restoreId ?? `rr-${uuid4().slice(0, 8)}`;
  const suffix = input.suffix ?? `-${restoreId}`;
  const { group, snapshotId, repo, toHost, mode } = input;
  upsertSearchAttributes([
    { key: GroupsnapGroup, value: group },
    { key: GroupsnapSnapshotId, value: snapshotId },
  ]);
  const target = onTarget(toHost);
  const result: RepoRestoreResult = {
    restoreId,
    group,
    snapshotId,
    repo,
    toHost,
    mode,
    status: 'restored',
    vms: [],
    bytesWritten: 0,
  };
  setCurrentDetails(`planning the restore of ${group} ${snapshotId} on ${toHost}`);
  const plan = await target.plan.repoRestorePlan({
    repo,
    group,
    snapshotId,
    restoreId,
    mode,
    suffix,
    format: input.format,
    // The stored definitions are checked here, before any disk is written (refused: bad input, nothing made).
    networkMap: input.networkMap,
    noNetwork: input.noNetwork,
    ...(input.stripHostDevices ? { stripHostDevices: true } : {}),
  });
  upsertSearchAttributes([{ key: GroupsnapVmCount, value: plan.vms.length }]);
  if (plan.virtType) result.virtType = plan.virtType;
  result.vms = plan.vms.map((v): RepoRestoreVmResult => ({
    source: v.source,
    domain: v.domain,
    disks: v.disks.map((d) => ({ target: d.target, file: d.file, format: d.format, virtualSize: d.virtualSize })),
    ...(v.removed?.length ? { removed: v.removed } : {}),
  }));
  const vmResult = (domain: string) => result.vms.find((v) => v.domain === domain)!;
  // What was (or may have been) made, by VM: compensation removes it, newest first.
  const made: { domain: string; uuid?: string; files: string[] }[] = [];
  // Whether a step on the target completed (a disk written, a VM defined): a failure is then no longer "bad input,
  // nothing changed" (CLI exit 2), even when rolled back.
  let changed = false;
  try {
    let done = 0;
    const total = plan.vms.reduce((n, v) => n + v.disks.length, 0);
    setCurrentDetails(`rebuilding ${total} disks (${plan.bytesNeeded} bytes of data) on ${toHost}`);
    // The plan's UUID (plans since UUIDs are planned): compensation removes the VM even if define's completion is lost.
    for (const v of plan.vms)
      made.push({ domain: v.domain, ...(v.uuid ? { uuid: v.uuid } : {}), files: v.disks.map((d) => d.file) });
    await Promise.all(
      plan.vms.flatMap((v) =>
        v.disks.map(async (d) => {
          try {
            const r = await target.rebuild.rebuildDisk.executeWithOptions(
              { summary: `rebuild ${v.domain} ${d.target} from the repository` },
              [{ repo, group, snapshotId, domain: v.source, target: d.target, file: d.file, format: d.format }],
            );
            changed = true;
            vmResult(v.domain).disks.find((x) => x.target === d.target)!.bytesWritten = r.bytesWritten;
            result.bytesWritten += r.bytesWritten;
            setCurrentDetails(`rebuilt ${++done}/${total} disks on ${toHost}`);
          } catch (err) {
            vmResult(v.domain).error = errorMessage(err);
            throw err;
          }
        }),
      ),
    );
    for (const v of plan.vms) {
      const defined = await target.vm.defineRestoredVm.executeWithOptions({ summary: `define ${v.domain}` }, [
        {
          repo,
          group,
          snapshotId,
          restoreId,
          vm: v,
          mode,
          networkMap: input.networkMap,
          noNetwork: input.noNetwork,
          ...(plan.virtType ? { virtType: plan.virtType } : {}),
          // Fresh socket-link ports chosen by the plan on the target, the same map for every VM (clones only).
          ...(plan.socketPorts && mode === 'clone' ? { socketPorts: plan.socketPorts } : {}),
          ...(input.stripHostDevices ? { stripHostDevices: true } : {}),
        },
      ]);
      changed = true;
      made.find((m) => m.domain === v.domain)!.uuid = defined.uuid;
      vmResult(v.domain).uuid = defined.uuid;
    }
    if (input.start) {
      // Every VM starts paused first, so the group comes up together, or not at all.
      setCurrentDetails(`starting ${plan.vms.length} VMs paused on ${toHost}`);
      await Promise.all(
        plan.vms.map(async (v) => {
          try {
            vmResult(v.domain).state = await target.vm.startRestoredVm.executeWithOptions(
              { summary: `start ${v.domain} paused` },
              [{ domain: v.domain, paused: true }],
            );
          } catch (err) {
            vmResult(v.domain).error = errorMessage(err);
            throw err;
          }
        }),
      );
      await Promise.all(
        plan.vms.map(async (v) => {
          vmResult(v.domain).state = await target.vm.resumeRestoredVm.executeWithOptions(
            { summary: `resume ${v.domain}` },
            [{ domain: v.domain }],
          );
        }),
      );
    } else {
      for (const v of result.vms) v.state = 'shutoff';
    }
    result.durationMs = Date.now() - started;
    setCurrentDetails(`restored ${plan.vms.length} VMs of ${group} ${snapshotId} on ${toHost}`);
    log.info('group restored from the repository', { group, snapshotId, toHost, restoreId, vms: plan.vms.length });
    return result;
  } catch (err) {
    await CancellationScope.nonCancellable(async () => {
      for (const m of [...made].reverse()) {
        try {
          await target.cleanup.removeRestoredVm.executeWithOptions({ summary: `remove ${m.domain}` }, [m]);
        } catch (undoErr) {
          const vm = vmResult(m.domain);
          vm.error = `${vm.error ?? ''}; rollback failed: ${errorMessage(undoErr)}`;
        }
      }
    });
    result.status = 'failed';
    result.error = errorMessage(err);
    for (const v of result.vms) delete v.state;
    throw failure(
      rootType(err) === BAD_INPUT && !changed ? 'badInput' : 'restoreFailed',
      `restore of ${group} ${snapshotId} on ${toHost} failed and was rolled back: ${result.error}`,
      result,
    );
  }
}

import { ApplicationFailure, CancellationScope, log, patched, uuid4, workflowInfo } from '@temporalio/workflow';
import {
  deletionBlockers,
  groupSnapshotsIn,
  normalizeRestoreInput,
  type GroupSnapshotListing,
  type DeleteSnapshotInput,
  type DeleteSnapshotResult,
  type Inventory,
  type RestoreInput,
  type RestoreResult,
} from '../common/groups';
import type { SetTagsRequest } from '../common/dr-types';
import { GroupsnapGroup, GroupsnapSnapshotId, GroupsnapVmCount } from '../common/search-attributes';
import { upsertSearchAttributes } from '@temporalio/workflow';
import { BAD_INPUT, checked, errorMessage, FAILURE, isBadInput, failure } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { onHost } from './activity-options';
import { requireAllHosts, takeInventory } from './inventory';
import { mergeSocketPortChoices, type SocketPortChoice } from '../common/socket-ports';
import { Compensations } from './compensations';

/** Failure types that carry the per-VM result in their details. */
export const DELETE_FAILED = FAILURE.deleteFailed;
export const RESTORE_FAILED = FAILURE.restoreFailed;

/** The VMs (by host) holding `snapshotId` of `group`, or a bad-input failure naming the known snapshots. */
function snapshotVms(inventory: Inventory, group: string, snapshotId: string) {
  const listings = groupSnapshotsIn(inventory, group);
  const listing = listings.find((l) => l.snapshotId === snapshotId);
  if (!listing) {
    const known = listings.map((l) => l.snapshotId);
    throw failure(
      'badInput',
      `group ${group} has no snapshot ${JSON.stringify(snapshotId)}` +
        (known.length ? ` (known: ${known.slice(0, 10).join(', ')}${known.length > 10 ? ', ...' : ''})` : ''),
    );
  }
  return listing;
}

/** What every registered host (or `hosts`) has: VMs, tags and catalogs. Read-only. */
export async function groupsnapInventory(input: { hosts?: string[] } = {}): Promise<Inventory> {
  return takeInventory(input.hosts);
}

/** Adds or removes tags on one VM, on its host. Returns the VM's tags after. */
export async function setVmTags(input: SetTagsRequest & { host: string }): Promise<string[]> {
  checked(() => {
    assertSafeName('host id', input.host);
    for (const t of [...(input.add ?? []), ...(input.remove ?? [])]) assertSafeName('tag', t);
  });
  return onHost(input.host).change.setTags.executeWithOptions(
    { summary: `set tags of ${input.domain} on ${input.host}` },
    [{ domain: input.domain, add: input.add, remove: input.remove }],
  );
}

/**
 * Deletes one group snapshot from every VM that holds it: on each VM, each disk's layer above the snapshot image is
 * merged into it (block commit, online for running VMs) and removed, and the catalog updated. All VMs are checked
 * first (nothing changes when any cannot be deleted); a VM that fails half-way is reported and the run can be
 * repeated, VMs already done reporting `absent`.
 */
export async function deleteGroupSnapshot(input: DeleteSnapshotInput): Promise<DeleteSnapshotResult> {
  checked(() => {
    assertSafeName('group name', input.group);
    assertSafeName('snapshot id', input.snapshotId);
  });
  const { group, snapshotId } = input;
  upsertSearchAttributes([
    { key: GroupsnapGroup, value: group },
    { key: GroupsnapSnapshotId, value: snapshotId },
  ]);
  const inventory = await takeInventory();
  requireAllHosts(inventory, `delete snapshot ${snapshotId}`);
  const listing = snapshotVms(inventory, group, snapshotId);
  const blockers = listing.vms.flatMap((v) => {
    const vm = inventory.hosts.find((h) => h.host === v.host)!.vms.find((x) => x.domain === v.domain)!;
    return deletionBlockers(vm, snapshotId);
  });
  if (blockers.length > 0) {
    throw failure('badInput', `snapshot ${snapshotId} cannot be deleted: ${blockers.join('; ')}`);
  }
  upsertSearchAttributes([{ key: GroupsnapVmCount, value: listing.vms.length }]);

  const result: DeleteSnapshotResult = { group, snapshotId, status: 'deleted', vms: [] };
  const hosts = [...new Set(listing.vms.map((v) => v.host))].sort();
  await Promise.all(
    hosts.map(async (h) => {
      // One VM at a time per host: each merge is I/O bound on the same storage.
      for (const v of listing.vms.filter((x) => x.host === h)) {
        try {
          const r = await onHost(h).merge.deleteSnapshot.executeWithOptions(
            { summary: `merge snapshot ${snapshotId} out of ${v.domain} on ${h}` },
            [
              {
                // The lease is this run's: two deletions of one snapshot never both think they hold a VM.
                owner: workflowInfo().runId,
                snapshotId,
                domain: v.domain,
              },
            ],
          );
          result.vms.push({ host: h, ...r });
        } catch (err) {
          result.vms.push({ host: h, domain: v.domain, outcome: 'failed', removed: [], error: errorMessage(err) });
        }
      }
    }),
  );
  result.vms.sort((a, b) => a.host.localeCompare(b.host) || a.domain.localeCompare(b.domain));
  const failed = result.vms.filter((v) => v.outcome === 'failed');
  if (failed.length > 0) {
    result.status = 'failed';
    throw failure(
      'deleteFailed',
      `snapshot ${snapshotId} was not deleted on ${failed.map((v) => `${v.domain}@${v.host}: ${v.error}`).join('; ')}` +
        ' (run the delete again to retry; VMs already done are skipped)',
      result,
    );
  }
  log.info('snapshot deleted', { group, snapshotId, vms: result.vms.length });
  return result;
}

/** The state of one local restore: its input, the VMs and hosts, the result, the leases and the undo list. */
interface RestoreRun {
  readonly input: ReturnType<typeof normalizeRestoreInput>;
  readonly restoreId: string;
  readonly suffix: string;
  readonly listing: GroupSnapshotListing;
  readonly hosts: string[];
  readonly byHost: Map<string, string[]>;
  readonly result: RestoreResult;
  /** The lease is this run's (a caller may reuse a restore id), renewed by each restore step while it runs. */
  readonly owner: string;
  /** Hosts whose leases were asked for (released at the end, whatever happened). */
  readonly locked: string[];
  readonly undo: Compensations;
}

/**
 * Restores a whole group to one of its snapshots, all VMs or none. `clone`: new VMs (`<domain><suffix>`) on new
 * overlays over the snapshot images, booted beside the untouched originals. `in-place`: each VM is stopped, its
 * disks moved to new overlays over the snapshot images (the discarded layers are kept), and started again as it was.
 * Any failure rolls back what was changed on every VM.
 */
export async function restoreGroup(rawInput: RestoreInput): Promise<RestoreResult> {
  const run = await startRestore(checked(() => normalizeRestoreInput(rawInput)));
  try {
    await leaseVms(run);
    const socketPorts = await chooseSocketPorts(run);
    await restoreVms(run, socketPorts);
    return run.result;
  } catch (err) {
    await run.undo.run();
    const { result } = run;
    result.status = 'failed';
    result.error = errorMessage(err);
    const kind = err instanceof ApplicationFailure && err.type === BAD_INPUT ? 'badInput' : 'restoreFailed';
    throw failure(
      kind,
      `restore of ${result.group} to ${result.snapshotId} failed and was rolled back: ${result.error}`,
      result,
    );
  } finally {
    await CancellationScope.nonCancellable(() =>
      Promise.all(
        run.locked.map((h) =>
          onHost(h)
            .cleanup.releaseLocks({ owner: run.owner, domains: run.byHost.get(h)! })
            .catch(() => undefined),
        ),
      ),
    );
  }
}

/** Finds the snapshot on every host (all must answer) and checks that no clone name is taken. */
async function startRestore(input: RestoreRun['input']): Promise<RestoreRun> {
  const restoreId = input.restoreId ?? `rs-${uuid4().slice(0, 8)}`;
  const suffix = input.suffix ?? `-${restoreId}`;
  const { group, snapshotId, mode } = input;
  upsertSearchAttributes([
    { key: GroupsnapGroup, value: group },
    { key: GroupsnapSnapshotId, value: snapshotId },
  ]);
  const inventory = await takeInventory();
  requireAllHosts(inventory, `restore snapshot ${snapshotId}`);
  const listing = snapshotVms(inventory, group, snapshotId);
  upsertSearchAttributes([{ key: GroupsnapVmCount, value: listing.vms.length }]);
  const hosts = [...new Set(listing.vms.map((v) => v.host))].sort();
  if (mode === 'clone') {
    const taken = listing.vms
      .map((v) => ({ host: v.host, name: `${v.domain}${suffix}` }))
      .filter((c) => inventory.hosts.find((h) => h.host === c.host)!.vms.some((vm) => vm.domain === c.name));
    if (taken.length > 0) {
      throw failure(
        'badInput',
        `cannot clone: VM ${taken.map((c) => `${c.name}@${c.host}`).join(', ')} already exists (choose another --suffix)`,
      );
    }
  }
  return {
    input,
    restoreId,
    suffix,
    listing,
    hosts,
    byHost: new Map(hosts.map((h) => [h, listing.vms.filter((v) => v.host === h).map((v) => v.domain)])),
    result: {
      restoreId,
      group,
      snapshotId,
      mode,
      status: 'restored',
      vms: listing.vms.map((v) => ({ host: v.host, domain: v.domain, disks: [] })),
    },
    owner: workflowInfo().runId,
    locked: [],
    undo: new Compensations(),
  };
}

/** Leases, host by host: no snapshot or deletion may touch these VMs' chains while they are restored. */
async function leaseVms(run: RestoreRun): Promise<void> {
  for (const h of run.hosts) {
    run.locked.push(h);
    await onHost(h).lock.acquireLocks({ owner: run.owner, domains: run.byHost.get(h)!, ttlMs: 30 * 60_000 });
  }
}

/**
 * Socket links (UDP/TCP/multicast interfaces wired through host ports): clones get fresh ports, one map for the
 * whole restore, so clones pair with each other and never with the originals still running. The ports are chosen on
 * the hosts, not here: each host picks ports free on itself for the ports its VMs bind (a UDP local port, a TCP
 * server), so a port bound on host A and connected to from host B's VM gets A's choice in B's clone too; hosts are
 * asked in turn, each avoiding ports the others chose. The map is an activity result, so a replay reuses it.
 */
async function chooseSocketPorts(run: RestoreRun): Promise<Record<string, number> | undefined> {
  if (!(run.input.mode === 'clone' && patched('clone-socket-ports'))) return undefined;
  const choices: SocketPortChoice[] = [];
  for (const h of run.hosts) {
    const avoid: number[] = choices.flatMap((c) => [...Object.values(c.bound), ...Object.values(c.connected)]);
    choices.push(
      await onHost(h).plan.chooseSocketPorts.executeWithOptions(
        { summary: `choose fresh socket-link ports for the clones on ${h}` },
        [{ domains: run.byHost.get(h)!, avoid }],
      ),
    );
  }
  return mergeSocketPortChoices(choices);
}

/**
 * Restores every VM at once. Its compensation, registered first, rolls back every VM that was attempted, whatever
 * happened to it, all at once (the host steps are idempotent).
 */
async function restoreVms(run: RestoreRun, socketPorts: Record<string, number> | undefined): Promise<void> {
  const { input, result } = run;
  const attempted: { host: string; domain: string }[] = [];
  const vmOf = (v: { host: string; domain: string }) =>
    result.vms.find((x) => x.host === v.host && x.domain === v.domain)!;
  run.undo.add('the restored VMs', () =>
    Promise.all(
      attempted.map(async (v) => {
        try {
          await rollBackVm(run, v);
        } catch (undoErr) {
          const vm = vmOf(v);
          vm.error = `${vm.error ?? ''}; rollback failed: ${errorMessage(undoErr)}`;
        }
      }),
    ).then(() => undefined),
  );
  const outcomes = await Promise.allSettled(
    run.listing.vms.map(async (v) => {
      attempted.push(v);
      const vm = vmOf(v);
      try {
        if (input.mode === 'clone') {
          const r = await onHost(v.host).change.cloneVm.executeWithOptions(
            { summary: `clone ${v.domain} as ${v.domain}${run.suffix} on ${v.host}` },
            [
              {
                snapshotId: input.snapshotId,
                domain: v.domain,
                cloneName: `${v.domain}${run.suffix}`,
                start: true,
                leaseOwner: run.owner,
                ...(socketPorts ? { socketPorts } : {}),
              },
            ],
          );
          Object.assign(vm, { clone: r.clone, state: r.state, disks: r.disks });
        } else {
          const r = await onHost(v.host).change.restoreInPlace.executeWithOptions(
            { summary: `restore ${v.domain} in place to ${input.snapshotId} on ${v.host}` },
            [{ restoreId: run.restoreId, snapshotId: input.snapshotId, domain: v.domain, leaseOwner: run.owner }],
          );
          Object.assign(vm, { state: r.state, disks: r.disks });
        }
      } catch (err) {
        vm.error = errorMessage(err);
        throw err;
      }
    }),
  );
  const failures = outcomes.filter((o) => o.status === 'rejected');
  if (failures.length > 0) {
    const badInput = failures.every((f) => isBadInput((f as PromiseRejectedResult).reason));
    throw failure(
      badInput ? 'badInput' : 'restoreFailed',
      result.vms
        .filter((v) => v.error)
        .map((v) => `${v.domain}@${v.host}: ${v.error}`)
        .join('; '),
    );
  }
}

/** Removes a VM's clone, or undoes its in-place restore. */
async function rollBackVm(run: RestoreRun, v: { host: string; domain: string }): Promise<void> {
  if (run.input.mode === 'clone')
    await onHost(v.host).cleanup.removeClone.executeWithOptions(
      { summary: `remove clone ${v.domain}${run.suffix} on ${v.host}` },
      [{ domain: v.domain, clone: `${v.domain}${run.suffix}` }],
    );
  else
    await onHost(v.host).cleanup.undoInPlace.executeWithOptions(
      { summary: `undo in-place restore of ${v.domain} on ${v.host}` },
      [{ restoreId: run.restoreId, domain: v.domain }],
    );
}

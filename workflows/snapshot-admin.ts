import { ApplicationFailure, CancellationScope, log, patched, uuid4, workflowInfo } from '@temporalio/workflow';
import {
  deletionBlockers,
  groupSnapshotsIn,
  normalizeRestoreInput,
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

/**
 * Restores a whole group to one of its snapshots, all VMs or none. `clone`: new VMs (`<domain><suffix>`) on new
 * overlays over the snapshot images, booted beside the untouched originals. `in-place`: each VM is stopped, its
 * disks moved to new overlays over the snapshot images (the discarded layers are kept), and started again as it was.
 * Any failure rolls back what was changed on every VM.
 */
export async function restoreGroup(rawInput: RestoreInput): Promise<RestoreResult> {
  const input = checked(() => normalizeRestoreInput(rawInput));
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
  const result: RestoreResult = {
    restoreId,
    group,
    snapshotId,
    mode,
    status: 'restored',
    vms: listing.vms.map((v) => ({ host: v.host, domain: v.domain, disks: [] })),
  };
  const hosts = [...new Set(listing.vms.map((v) => v.host))].sort();
  const byHost = new Map(hosts.map((h) => [h, listing.vms.filter((v) => v.host === h).map((v) => v.domain)]));
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
  // The lease is this run's (a caller may reuse a restore id), renewed by each restore step while it runs.
  const owner = workflowInfo().runId;
  const locked: string[] = [];
  const attempted: { host: string; domain: string }[] = [];

  try {
    // Leases: no snapshot or deletion may touch these VMs' chains while they are restored.
    for (const h of hosts) {
      locked.push(h);
      await onHost(h).lock.acquireLocks({ owner, domains: byHost.get(h)!, ttlMs: 30 * 60_000 });
    }
    // Socket links (UDP/TCP/multicast interfaces wired through host ports): clones get fresh ports, one map for the
    // whole restore, so clones pair with each other and never with the originals still running. The ports are
    // chosen on the hosts, not here: each host picks ports free on itself for the ports its VMs bind (a UDP local
    // port, a TCP server), so a port bound on host A and connected to from host B's VM gets A's choice in B's clone
    // too; hosts are asked in turn, each avoiding ports the others chose. The map is an activity result, so a
    // replay reuses it.
    let socketPorts: Record<string, number> | undefined;
    if (mode === 'clone' && patched('clone-socket-ports')) {
      const choices: SocketPortChoice[] = [];
      for (const h of hosts) {
        const avoid: number[] = choices.flatMap((c) => [...Object.values(c.bound), ...Object.values(c.connected)]);
        choices.push(
          await onHost(h).plan.chooseSocketPorts.executeWithOptions(
            { summary: `choose fresh socket-link ports for the clones on ${h}` },
            [{ domains: byHost.get(h)!, avoid }],
          ),
        );
      }
      socketPorts = mergeSocketPortChoices(choices);
    }
    const outcomes = await Promise.allSettled(
      listing.vms.map(async (v) => {
        attempted.push(v);
        const vm = result.vms.find((x) => x.host === v.host && x.domain === v.domain)!;
        try {
          if (mode === 'clone') {
            const r = await onHost(v.host).change.cloneVm.executeWithOptions(
              { summary: `clone ${v.domain} as ${v.domain}${suffix} on ${v.host}` },
              [
                {
                  snapshotId,
                  domain: v.domain,
                  cloneName: `${v.domain}${suffix}`,
                  start: true,
                  leaseOwner: owner,
                  ...(socketPorts ? { socketPorts } : {}),
                },
              ],
            );
            Object.assign(vm, { clone: r.clone, state: r.state, disks: r.disks });
          } else {
            const r = await onHost(v.host).change.restoreInPlace.executeWithOptions(
              { summary: `restore ${v.domain} in place to ${snapshotId} on ${v.host}` },
              [{ restoreId, snapshotId, domain: v.domain, leaseOwner: owner }],
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
    return result;
  } catch (err) {
    // Roll back every VM that was attempted, whatever happened to it; the host steps are idempotent.
    await CancellationScope.nonCancellable(() =>
      Promise.all(
        attempted.map(async (v) => {
          try {
            if (mode === 'clone')
              await onHost(v.host).cleanup.removeClone.executeWithOptions(
                { summary: `remove clone ${v.domain}${suffix} on ${v.host}` },
                [{ domain: v.domain, clone: `${v.domain}${suffix}` }],
              );
            else
              await onHost(v.host).cleanup.undoInPlace.executeWithOptions(
                { summary: `undo in-place restore of ${v.domain} on ${v.host}` },
                [{ restoreId, domain: v.domain }],
              );
          } catch (undoErr) {
            const vm = result.vms.find((x) => x.host === v.host && x.domain === v.domain)!;
            vm.error = `${vm.error ?? ''}; rollback failed: ${errorMessage(undoErr)}`;
          }
        }),
      ),
    );
    result.status = 'failed';
    result.error = errorMessage(err);
    const kind = err instanceof ApplicationFailure && err.type === BAD_INPUT ? 'badInput' : 'restoreFailed';
    throw failure(kind, `restore of ${group} to ${snapshotId} failed and was rolled back: ${result.error}`, result);
  } finally {
    await CancellationScope.nonCancellable(() =>
      Promise.all(
        locked.map((h) =>
          onHost(h)
            .cleanup.releaseLocks({ owner, domains: byHost.get(h)! })
            .catch(() => undefined),
        ),
      ),
    );
  }
}

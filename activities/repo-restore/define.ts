/**
 * A restored VM's life on this host after its disks: defined from its stored XML (with the planned UUID, so a retried
 * define finds the VM it made), started with its vCPUs paused, resumed.
 */
import type { DefineRestoredVmRequest } from '../../common/repo-restore';
import type { VmPowerState } from '../../common/types';
import { bad, type RepoRestoreContext } from './context';
import { pointEndpoints, restoredDefinition } from './definition';
import { plannedUuidOf } from './records';
import { exportOf, instantSocketDir } from './instant';
import { withRepo } from './repo';

/**
 * Whether `existing`, a VM with the restored VM's name already on this host, is the one an earlier attempt of this
 * define made: it has the planned UUID (a define whose completion was lost). Without a planned UUID, never.
 */
export function isEarlierDefine(existing: { uuid: string }, planned: string | undefined): boolean {
  return planned !== undefined && existing.uuid.toLowerCase() === planned;
}

/**
 * Defines the VM from its stored XML, rewritten for this host. Returns its name and UUID.
 * @throws BAD_INPUT when another VM has its name, or the request's UUID is not the planned one
 */
export async function defineRestoredVm(
  ctx: RepoRestoreContext,
  req: DefineRestoredVmRequest,
): Promise<{ domain: string; uuid: string }> {
  return withRepo(ctx, req.repo, async (repo) => {
    const vm = await repo.readVmManifest(req.group, req.snapshotId, req.vm.source);
    const planned = plannedUuidOf(ctx.records, req.restoreId, req.vm.domain, req.vm.uuid);
    const { xml } = restoredDefinition(ctx, vm.domainXml, {
      ...(planned ? { assignUuid: planned } : {}),
      sourceName: req.vm.source,
      name: req.vm.domain,
      identity: req.mode === 'original' ? 'keep' : 'new',
      disks: req.vm.disks.map((d) => ({
        target: d.target,
        file: d.file,
        format: d.format,
        // An instant restore's overlay over its export: the socket derived here, from the restore's own names.
        ...(req.instant ? { nbd: exportOf(ctx, req.restoreId, req.vm.domain, d.target) } : {}),
      })),
      ...(req.instant ? { nbdSocketDir: instantSocketDir(ctx) } : {}),
      networkMap: req.networkMap,
      noNetwork: req.noNetwork,
      ...(req.socketPorts ? { socketPorts: req.socketPorts } : {}),
      ...(req.virtType ? { virtType: req.virtType } : {}),
      stripHostDevices: req.stripHostDevices ?? false,
      restoreEndpoints: await pointEndpoints(repo, await repo.readGroupManifest(req.group, req.snapshotId)),
    });
    const existing = (await ctx.hypervisor.listDomains()).find((d) => d.name === req.vm.domain);
    if (existing) {
      // A retry after a define whose completion was lost: the VM with the planned name and UUID is this one.
      if (isEarlierDefine(existing, planned)) {
        ctx.log('restored VM already defined (retry)', { domain: existing.name, uuid: existing.uuid });
        return { domain: existing.name, uuid: existing.uuid };
      }
      throw bad(`VM ${req.vm.domain} already exists on ${ctx.hostId}`);
    }
    const defined = await ctx.hypervisor.defineDomain(xml);
    ctx.log('restored VM defined', { domain: defined.name, uuid: defined.uuid, restoreId: req.restoreId });
    return { domain: defined.name, uuid: defined.uuid };
  });
}

/** Starts a restored VM with its vCPUs paused (idempotent: a running or paused VM is left as it is). */
export async function startRestoredVm(
  ctx: RepoRestoreContext,
  req: { domain: string; paused: boolean },
): Promise<VmPowerState> {
  const { hypervisor } = ctx;
  const state = await hypervisor.state(req.domain);
  if (state === 'shutoff') await hypervisor.start(req.domain, { paused: req.paused });
  return hypervisor.state(req.domain);
}

/** Resumes a restored VM started paused. */
export async function resumeRestoredVm(ctx: RepoRestoreContext, req: { domain: string }): Promise<VmPowerState> {
  const { hypervisor } = ctx;
  if ((await hypervisor.state(req.domain)) === 'paused') await hypervisor.resume(req.domain);
  return hypervisor.state(req.domain);
}

/**
 * Planning: resolves a run's VMs on this host, reads their disks, chooses overlay names and checks space, changing
 * nothing (or, under the leases in the `group-paused` order, making the overlay files). The freeze plans each VM
 * again ({@link replan}) to refuse a chain that moved since.
 */
import { existsSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { overlayPath, type PlannedVm, type PlanRequest } from '../../common/host-types';
import { QUIESCE_MODES, type DiskSnapshot, type QuiesceMode, type VmPowerState } from '../../common/types';
import { DomainNotFoundError } from '../../hypervisor/errors';
import type { DomainDescription } from '../../hypervisor/hypervisor';
import { badInput, checkDomains, checkName, checkOwner, failIf } from '../input-checks';
import { message, type HostContext } from './context';
import { assertLeasesHeld } from './leases';
import { prepareOverlays } from './overlays';

/** Free space required per new overlay file before a snapshot is attempted. */
export const MIN_FREE_BYTES_PER_OVERLAY = 64 * 1024 * 1024;

/**
 * Plans one VM. With `prepared` (the run made this snapshot's overlays under its lease, see `planVms`), a running
 * or paused VM's overlay files must exist (they are used as they are); otherwise no overlay file may exist yet.
 */
export function planOne(
  d: DomainDescription,
  snapshotId: string,
  quiesce: QuiesceMode,
  problems: string[],
  prepared = false,
): PlannedVm {
  const reuse = prepared && d.state !== 'shutoff';
  if (d.state === 'other') problems.push(`VM ${d.name} is in a state that cannot be snapshotted`);
  const disks: DiskSnapshot[] = [];
  const skip: string[] = [];
  for (const disk of d.disks) {
    if (disk.device === 'cdrom' || disk.device === 'floppy' || disk.readonly || !disk.source) {
      skip.push(disk.target);
      continue;
    }
    if (disk.type !== 'file' || (disk.format !== 'qcow2' && disk.format !== 'raw')) {
      problems.push(
        `VM ${d.name} disk ${disk.target}: a ${disk.type} disk with format ${disk.format ?? 'unknown'} is not ` +
          `supported (only file-backed qcow2 or raw disks)`,
      );
      continue;
    }
    const overlay = overlayPath(disk.source, d.name, disk.target, snapshotId);
    if (reuse && !existsSync(overlay))
      problems.push(`VM ${d.name} disk ${disk.target}: prepared overlay ${overlay} is missing`);
    if (!reuse && existsSync(overlay))
      problems.push(`VM ${d.name} disk ${disk.target}: overlay ${overlay} already exists`);
    disks.push({ target: disk.target, image: disk.source, overlay });
  }
  if (disks.length === 0) problems.push(`VM ${d.name} has no disk to snapshot`);
  if (quiesce === 'agent' && !d.hasGuestAgent && d.state === 'running') {
    problems.push(`VM ${d.name} has no QEMU guest agent channel, required by --quiesce agent`);
  }
  return {
    domain: d.name,
    uuid: d.uuid,
    state: d.state,
    disks,
    skip,
    quiesce: quiesce !== 'none' && d.hasGuestAgent && d.state === 'running',
    ...(reuse ? { prepared: true } : {}),
  };
}

/** Adds a problem for each directory without room for the new overlay files planned in it. */
export function checkSpace(vms: PlannedVm[], problems: string[]): void {
  const perDir = new Map<string, number>();
  for (const vm of vms)
    for (const d of vm.disks) perDir.set(dirname(d.overlay), (perDir.get(dirname(d.overlay)) ?? 0) + 1);
  for (const [dir, count] of perDir) {
    try {
      const st = statfsSync(dir);
      const free = st.bavail * st.bsize;
      if (free < count * MIN_FREE_BYTES_PER_OVERLAY) {
        problems.push(
          `not enough free space in ${dir}: ${Math.floor(free / 2 ** 20)} MiB free, need ${(count * MIN_FREE_BYTES_PER_OVERLAY) / 2 ** 20} MiB`,
        );
      }
    } catch (err) {
      problems.push(`cannot check free space in ${dir}: ${message(err)}`);
    }
  }
}

/** Same disks, same files, same order: what the freeze relies on did not change since planning. */
function samePlan(a: PlannedVm, b: PlannedVm): boolean {
  const disks = (v: PlannedVm) => JSON.stringify(v.disks.map((d) => [d.target, d.image, d.overlay]));
  return disks(a) === disks(b) && JSON.stringify([...a.skip].sort()) === JSON.stringify([...b.skip].sort());
}

/**
 * Plans `planned`'s VM again from what libvirt says now: the same disks, files and overlay names, or an error saying
 * what changed since planning. The fresh plan carries the power state as it is now.
 */
export async function replan(
  ctx: HostContext,
  planned: PlannedVm,
  snapshotId: string,
  quiesce: QuiesceMode,
): Promise<PlannedVm> {
  const problems: string[] = [];
  const now = planOne(await ctx.hypervisor.describe(planned.domain), snapshotId, quiesce, problems, planned.prepared);
  if (problems.length > 0) throw new Error(problems.join('; '));
  if (!samePlan(planned, now)) {
    const was = planned.disks.map((d) => `${d.target}:${d.image}`).join(', ');
    const is = now.disks.map((d) => `${d.target}:${d.image}`).join(', ');
    throw new Error(`the disks of ${planned.domain} changed since planning (planned ${was}; now ${is})`);
  }
  if (planned.prepared !== now.prepared || (planned.state === 'shutoff') !== (now.state === 'shutoff'))
    throw new Error(`${planned.domain} was ${planned.state} when planned and is ${now.state} now`);
  return now;
}

/** The planning activities: `planVms`, and `vmStates` for the run's result. Neither changes a VM. */
export function createPlanActivities(ctx: HostContext) {
  const { hypervisor } = ctx;
  return {
    /**
     * Resolves VMs, reads their disks, chooses overlay names and checks space. Changes nothing. With `leaseOwner`,
     * the run plans again under its leases (what the freeze will rely on), and fails if it does not hold them.
     */
    async planVms(req: PlanRequest): Promise<PlannedVm[]> {
      const problems: string[] = [];
      checkName('snapshot id', req.snapshotId, problems);
      checkDomains(req.domains, problems);
      if (!QUIESCE_MODES.includes(req.quiesce))
        problems.push(`quiesce mode ${JSON.stringify(req.quiesce)} is not valid`);
      if (req.leaseOwner !== undefined) checkOwner(req.leaseOwner, problems);
      if (req.prepareOverlays && req.leaseOwner === undefined)
        problems.push('overlays are prepared only under the leases (give leaseOwner)');
      failIf(problems);
      if (req.leaseOwner !== undefined) assertLeasesHeld(ctx, req.leaseOwner, req.domains);
      const described = await Promise.all(
        req.domains.map((name) =>
          hypervisor.describe(name).catch((err) => {
            if (err instanceof DomainNotFoundError) {
              problems.push(`VM ${JSON.stringify(name)} not found on host ${ctx.hostId}`);
              return undefined;
            }
            throw err;
          }),
        ),
      );
      const planned = described
        .filter((d): d is DomainDescription => d !== undefined)
        .map((d) => planOne(d, req.snapshotId, req.quiesce, problems));
      checkSpace(planned, problems);
      if (problems.length > 0) throw badInput(problems);
      if (req.prepareOverlays) {
        for (const vm of planned) if (vm.state !== 'shutoff') vm.prepared = true;
        await prepareOverlays(ctx, planned);
      }
      return planned;
    },

    /** Current power state of each VM (for results). */
    async vmStates(req: { domains: string[] }): Promise<Record<string, VmPowerState | 'missing'>> {
      const out: Record<string, VmPowerState | 'missing'> = {};
      for (const d of req.domains) out[d] = await hypervisor.state(d).catch(() => 'missing' as const);
      return out;
    },
  };
}

/**
 * Overlay files: the only files a host creates or removes for a snapshot, each named by {@link overlayPath}. Checks
 * that a request names exactly those files, makes them before the pause (the `group-paused` order), and removes the
 * ones a failed freeze did not use.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { overlayPath, type FreezeVmReport, type PlannedVm } from '../../common/host-types';
import type { DiskSnapshot } from '../../common/types';
import { checkDomain } from '../input-checks';
import { message, type HostContext } from './context';

/**
 * The disks of a request must be exactly the files this host would use for this snapshot: each overlay is the
 * name {@link overlayPath} gives for its image, so no request can make a host create, commit or remove any other
 * file.
 */
export function checkDisks(domain: string, snapshotId: string, disks: unknown, problems: string[]): void {
  if (!Array.isArray(disks) || disks.length === 0) {
    problems.push(`VM ${domain}: a non-empty list of disks is required`);
    return;
  }
  for (const d of disks as DiskSnapshot[]) {
    if (
      typeof d?.target !== 'string' ||
      !/^[A-Za-z0-9_-]{1,32}$/.test(d.target) ||
      typeof d.image !== 'string' ||
      !d.image.startsWith('/') ||
      typeof d.overlay !== 'string'
    ) {
      problems.push(`VM ${domain}: disk ${JSON.stringify(d)} is not valid`);
      continue;
    }
    if (d.overlay !== overlayPath(d.image, domain, d.target, snapshotId))
      problems.push(
        `VM ${domain} disk ${d.target}: ${d.overlay} is not the overlay this host makes for snapshot ${snapshotId}`,
      );
  }
}

/** A non-empty list of VMs, each a valid name with exactly the disks this host makes for `snapshotId`. */
export function checkVmDisks(vms: unknown, snapshotId: string, problems: string[]): void {
  if (!Array.isArray(vms) || vms.length === 0) {
    problems.push('a non-empty list of VMs is required');
    return;
  }
  for (const vm of vms as { domain?: unknown; disks?: unknown }[]) {
    checkDomain(vm?.domain, problems);
    if (typeof vm?.domain === 'string') checkDisks(vm.domain, snapshotId, vm.disks, problems);
  }
}

/**
 * Makes the overlay files of every running or paused VM over its active images, before any pause (the snapshot
 * then only switches the disks over). All or nothing: on any failure every file made here is removed again.
 */
export async function prepareOverlays(ctx: HostContext, vms: PlannedVm[]): Promise<void> {
  const made: string[] = [];
  const errors: string[] = [];
  await Promise.all(
    vms
      .filter((vm) => vm.prepared)
      .flatMap((vm) =>
        vm.disks.map(async (d) => {
          try {
            const format = (await ctx.hypervisor.imageInfo(d.image)).format;
            // Claims the name first: never overwrite a file someone else made since planning.
            writeFileSync(d.overlay, '', { flag: 'wx' });
            made.push(d.overlay);
            await ctx.hypervisor.createOverlay(d.overlay, d.image, format);
          } catch (err) {
            errors.push(`VM ${vm.domain} disk ${d.target}: cannot make overlay ${d.overlay}: ${message(err)}`);
          }
        }),
      ),
  );
  if (errors.length > 0) {
    for (const f of made) rmSync(f, { force: true });
    throw new Error(errors.join('; '));
  }
}

/**
 * Removes the prepared overlays of VMs that were not snapshotted, when no disk uses them (compensation's undo checks
 * again, for a run whose freeze report was lost).
 */
export async function removeUnusedOverlays(
  ctx: HostContext,
  vms: PlannedVm[],
  reports: FreezeVmReport[],
): Promise<void> {
  await Promise.all(
    vms.map(async (vm, i) => {
      if (reports[i].snapshotted) return;
      const active = await ctx.hypervisor.describe(vm.domain).then(
        (d) => new Set(d.disks.map((k) => k.source)),
        () => undefined,
      );
      if (!active) return;
      for (const d of vm.disks) if (!active.has(d.overlay)) rmSync(d.overlay, { force: true });
    }),
  );
}

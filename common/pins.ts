/**
 * Pinned snapshots and the clone / in-place restore records that keep a snapshot from being deleted: their types,
 * the listing of records over an inventory, and the input checks. Pure and deterministic (workflows, client and CLI).
 */
import type { HostVm } from './dr-types';
import { deletionBlockers, type GroupSnapshotListing, type Inventory } from './groups';
import { BadInputError } from './failures';
import { assertSafeName, problemList } from './validation';

export interface PinGroupSnapshotInput {
  group: string;
  snapshotId: string;
  /** true: pin (retention keeps it, deletion is refused); false: unpin. */
  pinned: boolean;
}

export interface PinGroupSnapshotResult {
  group: string;
  snapshotId: string;
  pinned: boolean;
  vms: { host: string; domain: string; changed: boolean }[];
}

/** What a record is: a clone VM built on a snapshot, or an in-place restore whose discarded layers are kept. */
export type RestoreRecordKind = 'clone' | 'in-place';

/** A clone or in-place restore record on one VM, and the snapshots whose deletion it blocks. */
export interface RestoreRecordListing {
  kind: RestoreRecordKind;
  host: string;
  /** The VM the record is on (the clone's source VM, or the VM restored in place). */
  domain: string;
  /** The clone's VM name, or the in-place restore's id (shared by every VM of one group restore). */
  id: string;
  /** The snapshot it was made from. */
  snapshotId: string;
  /** That snapshot's group, while it is still catalogued on the VM. */
  group?: string;
  createdAt: string;
  /** Snapshots of the VM that cannot be deleted while the record exists. */
  blocks: string[];
}

/** Which records to release: by id (clone name or restore id), optionally only on some VMs. */
export interface ReleaseRestoreRecordsInput {
  ids: string[];
  /** Only records on these VMs (`domain@host`); default: wherever the ids are found. */
  vms?: { domain: string; host: string }[];
}

export interface ReleaseRestoreRecordsResult {
  released: { kind: RestoreRecordKind; host: string; domain: string; id: string; removed: string[]; kept: string[] }[];
}

function recordsOfVm(host: string, vm: HostVm): RestoreRecordListing[] {
  const blocked = (image: (files: Set<string>) => boolean): string[] =>
    vm.snapshots.filter((s) => image(new Set(s.disks.flatMap((d) => [d.image, d.overlay])))).map((s) => s.snapshotId);
  const groupOf = (snapshotId: string) => vm.snapshots.find((s) => s.snapshotId === snapshotId)?.group;
  const out: RestoreRecordListing[] = [];
  for (const c of vm.clones) {
    const group = groupOf(c.snapshotId);
    out.push({
      kind: 'clone',
      host,
      domain: vm.domain,
      id: c.name,
      snapshotId: c.snapshotId,
      ...(group !== undefined ? { group } : {}),
      createdAt: c.createdAt,
      blocks: blocked((files) => c.disks.some((d) => files.has(d.image))),
    });
  }
  for (const r of vm.restores) {
    const group = groupOf(r.snapshotId);
    out.push({
      kind: 'in-place',
      host,
      domain: vm.domain,
      id: r.restoreId,
      snapshotId: r.snapshotId,
      ...(group !== undefined ? { group } : {}),
      createdAt: r.createdAt,
      blocks: blocked((files) => r.disks.some((d) => files.has(d.image))),
    });
  }
  return out;
}

const byText = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Every clone and in-place restore record of `inventory` (of snapshots of `group` only, when given), sorted by host,
 * VM, kind and id.
 */
export function restoreRecordsIn(inventory: Inventory, group?: string): RestoreRecordListing[] {
  return inventory.hosts
    .flatMap((h) => h.vms.flatMap((vm) => recordsOfVm(h.host, vm)))
    .filter((r) => group === undefined || r.group === group)
    .sort(
      (a, b) => byText(a.host, b.host) || byText(a.domain, b.domain) || byText(a.kind, b.kind) || byText(a.id, b.id),
    );
}

/** @throws BadInputError listing every problem. */
export function checkPinInput(input: PinGroupSnapshotInput): void {
  const { problems, check } = problemList();
  check(() => assertSafeName('group name', input.group));
  check(() => assertSafeName('snapshot id', input.snapshotId));
  if (typeof input.pinned !== 'boolean') problems.push('pinned must be true or false');
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
}

/** @throws BadInputError listing every problem. */
export function checkReleaseInput(input: ReleaseRestoreRecordsInput): void {
  const { problems, check } = problemList();
  if (!Array.isArray(input.ids) || input.ids.length === 0) problems.push('give the clone name(s) or restore id(s)');
  for (const id of input.ids ?? []) check(() => assertSafeName('clone name or restore id', id));
  for (const vm of input.vms ?? []) {
    if (!vm.domain || vm.domain.includes('/') || vm.domain.includes('\0'))
      problems.push(`VM name ${JSON.stringify(vm.domain)} is not valid`);
    check(() => assertSafeName('host id', vm.host));
  }
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
}

/**
 * Why retention must keep each of `listings` whatever its policy says (snapshots absent from the map are planned by
 * the policy): pinned; a label other than the schedule's own (`label`: the label of the run that applies the
 * retention, i.e. the schedule's `--label`, or none); or a clone or in-place restore built on it on some VM.
 */
export function retentionSkips(
  inventory: Inventory,
  listings: GroupSnapshotListing[],
  label: string | undefined,
): Map<string, string> {
  const skips = new Map<string, string>();
  for (const l of listings) {
    if (l.pinned) {
      skips.set(l.snapshotId, 'pinned');
      continue;
    }
    if ((l.label ?? undefined) !== (label ?? undefined)) {
      skips.set(l.snapshotId, `label ${l.label ?? '(none)'}, not the schedule's ${label ?? '(none)'}`);
      continue;
    }
    const blockers = l.vms.flatMap((v) => {
      const vm = inventory.hosts.find((h) => h.host === v.host)?.vms.find((x) => x.domain === v.domain);
      return vm ? deletionBlockers(vm, l.snapshotId) : [];
    });
    if (blockers.length > 0) skips.set(l.snapshotId, blockers.join('; '));
  }
  return skips;
}

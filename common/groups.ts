/**
 * Software-defined groups: definitions, their validation, and the ids of the workflows that manage them. Pure and
 * deterministic (imported by workflows, the client and the CLI).
 */
import type { HostVm } from './dr-types';
import type { RetentionPolicy } from './retention';
import type { GroupSnapshotResult, QuiesceMode, ResumeWhen, VmRef } from './types';
import { BadInputError } from './failures';
import { assertSafeName, checkSnapshotOptions, checkVmRefs, problemList } from './validation';

/** How a group's members are chosen: a fixed list of VMs, or every VM carrying a tag on any registered host. */
export type GroupSelector = { vms: VmRef[] } | { tag: string };

export interface GroupDefinition {
  name: string;
  selector: GroupSelector;
  description?: string;
  /**
   * Repository (`s3://bucket/prefix` or `file:///path`) every completed snapshot of the group is exported to
   * (each host's worker holds the key). None: snapshots stay on their hosts.
   */
  repository?: string;
  /**
   * A second repository every exported point of the group is copied to after its export (`copyGroupPoint`, run by
   * the copy worker on the admin side, which holds both repositories' credentials). Needs `repository`.
   */
  copyTo?: string;
  /** When its VMs resume in each snapshot (see {@link ResumeWhen}). @default 'group-paused' */
  resumeWhen?: ResumeWhen;
  /** ISO time the group was created. */
  createdAt?: string;
}

/** Words the CLI uses as sub-commands after `snapshot`/`group`: not allowed as group names. */
const RESERVED = new Set(['list', 'show', 'create', 'delete', 'adhoc', 'pin', 'unpin', 'release']);

/** Workflow id of a group's entity workflow (its durable definition, and the door for "snapshot now"). */
export function groupWorkflowId(group: string): string {
  return `group/${group}`;
}

/** Workflow id of the one host registry of a namespace. */
export const HOST_REGISTRY_WORKFLOW_ID = 'groupsnap-hosts';

/** A host as the registry knows it. */
export interface RegisteredHost {
  hostId: string;
  registeredAt: string;
  lastSeenAt: string;
}

export function groupRunWorkflowId(group: string, snapshotId: string): string {
  return `group-run/${group}/${snapshotId}`;
}

export function deleteSnapshotWorkflowId(group: string, snapshotId: string): string {
  return `snapshot-delete/${group}/${snapshotId}`;
}

export function restoreWorkflowId(group: string, snapshotId: string, restoreId: string): string {
  return `restore/${group}/${snapshotId}/${restoreId}`;
}

export function selectorText(selector: GroupSelector): string {
  return 'tag' in selector ? `tag ${selector.tag}` : selector.vms.map((v) => `${v.domain}@${v.host}`).join(', ');
}

/**
 * Checks a group definition.
 * @throws BadInputError listing every problem.
 */
export function normalizeGroupDefinition(def: GroupDefinition): GroupDefinition {
  const { problems, check } = problemList();
  check(() => assertSafeName('group name', def.name));
  if (RESERVED.has(def.name)) problems.push(`group name ${JSON.stringify(def.name)} is reserved`);
  const sel = def.selector as Partial<{ vms: VmRef[]; tag: string }> | undefined;
  if (!sel || (sel.vms === undefined) === (sel.tag === undefined)) {
    problems.push('a group needs either a list of VMs or a tag selector (not both)');
  } else if (sel.tag !== undefined) {
    check(() => assertSafeName('tag', sel.tag!));
  } else {
    checkVmRefs(sel.vms!, problems);
  }
  if (
    def.repository !== undefined &&
    !/^(s3:\/\/[a-z0-9][a-z0-9.-]+[a-z0-9](\/.*)?|file:\/\/\/.+)$/.test(def.repository)
  )
    problems.push(`repository ${JSON.stringify(def.repository)} is not an s3://bucket/prefix or file:///path URL`);
  if (def.copyTo !== undefined) {
    if (!/^(s3:\/\/[a-z0-9][a-z0-9.-]+[a-z0-9](\/.*)?|file:\/\/\/.+)$/.test(def.copyTo))
      problems.push(`copy target ${JSON.stringify(def.copyTo)} is not an s3://bucket/prefix or file:///path URL`);
    else if (def.repository === undefined) problems.push('a copy target needs a repository to copy from');
    else if (def.copyTo.replace(/\/+$/, '') === def.repository.replace(/\/+$/, ''))
      problems.push('the copy target is the repository itself');
  }
  checkSnapshotOptions({ resumeWhen: def.resumeWhen }, problems);
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
  const selector: GroupSelector =
    sel!.tag !== undefined ? { tag: sel!.tag } : { vms: sel!.vms!.map((v) => ({ domain: v.domain, host: v.host })) };
  return {
    name: def.name,
    selector,
    ...(def.description ? { description: def.description } : {}),
    ...(def.repository ? { repository: def.repository } : {}),
    ...(def.copyTo ? { copyTo: def.copyTo } : {}),
    ...(def.resumeWhen ? { resumeWhen: def.resumeWhen } : {}),
    ...(def.createdAt ? { createdAt: def.createdAt } : {}),
  };
}

/** What every registered host answered when asked for its VMs; `unreachable` hosts did not answer. */
export interface Inventory {
  hosts: { host: string; vms: HostVm[] }[];
  unreachable: { host: string; error: string }[];
}

/** The members of a group now: the fixed list, or the tagged VMs of every host, sorted. */
export function resolveMembers(def: GroupDefinition, inventory: Inventory): VmRef[] {
  if ('vms' in def.selector) return def.selector.vms;
  const tag = def.selector.tag;
  return inventory.hosts
    .flatMap((h) => h.vms.filter((vm) => vm.tags.includes(tag)).map((vm) => ({ domain: vm.domain, host: h.host })))
    .sort((a, b) => a.host.localeCompare(b.host) || a.domain.localeCompare(b.domain));
}

/** One group snapshot as found on its VMs' hosts. */
export interface GroupSnapshotListing {
  snapshotId: string;
  group: string;
  label?: string;
  createdAt: string;
  /** Pinned on at least one of its VMs (`groupsnap snapshot pin`): retention keeps it, deletion is refused. */
  pinned?: boolean;
  vms: { host: string; domain: string; disks: { target: string; image: string }[] }[];
}

/** The snapshots of `group` recorded on the VMs of `inventory`, newest first. */
export function groupSnapshotsIn(inventory: Inventory, group: string): GroupSnapshotListing[] {
  const byId = new Map<string, GroupSnapshotListing>();
  for (const h of inventory.hosts) {
    for (const vm of h.vms) {
      for (const s of vm.snapshots) {
        if (s.group !== group) continue;
        let listing = byId.get(s.snapshotId);
        if (!listing) {
          listing = {
            snapshotId: s.snapshotId,
            group,
            ...(s.label ? { label: s.label } : {}),
            createdAt: s.createdAt,
            vms: [],
          };
          byId.set(s.snapshotId, listing);
        }
        if (s.pinned) listing.pinned = true;
        listing.vms.push({
          host: h.host,
          domain: vm.domain,
          disks: s.disks.map((d) => ({ target: d.target, image: d.image })),
        });
      }
    }
  }
  // Code-unit order (not localeCompare): the same on every worker, whatever its locale or ICU data.
  const cmp = (x: string, y: string): number => (x < y ? -1 : x > y ? 1 : 0);
  return [...byId.values()].sort((a, b) => cmp(b.createdAt, a.createdAt) || cmp(b.snapshotId, a.snapshotId));
}

/** Options of one group snapshot taken by name (the group gives the members). */
export interface GroupRunInput {
  group: string;
  /** The definition, when the caller already has it (the group's entity workflow); else read from the entity. */
  definition?: GroupDefinition;
  snapshotId?: string;
  label?: string;
  maxFreezeMs?: number;
  quiesce?: QuiesceMode;
  /** @default the group definition's, else 'group-paused' */
  resumeWhen?: ResumeWhen;
  /** Applied after a completed snapshot: snapshots of the group it does not keep are deleted. */
  retention?: RetentionPolicy;
  /** IANA time zone of the retention's hours, days, weeks and months. @default 'UTC' */
  timezone?: string;
  /** Who asked: `manual`, `schedule`, `api`. */
  trigger?: string;
}

/** Options of a "snapshot now" request on a named group (its entity workflow's `snapshotNow` update). */
export type SnapshotNowOptions = Omit<GroupRunInput, 'group' | 'definition' | 'retention'>;

export interface RetentionOutcome {
  /** Kept by the policy. */
  kept: string[];
  /** Kept whatever the policy: pinned, another label than the schedule's, or a clone or restore built on it. */
  skipped?: { snapshotId: string; reason: string }[];
  deleted: string[];
  failed: { snapshotId: string; error: string }[];
}

export interface GroupRunResult {
  group: string;
  members: VmRef[];
  snapshot: GroupSnapshotResult;
  retention?: RetentionOutcome;
  /** The export to the group's repository, when it has one (`exportWorkflowId`, status, error). */
  export?: { repository: string; workflowId: string; status: 'completed' | 'failed'; error?: string };
  /**
   * The copy of the exported point to the group's copy target, when it has one (after a completed export): started
   * (a workflow of its own, `copyWorkflowId`, not waited for) or not started (`failed`, with the error).
   */
  copy?: { to: string; workflowId: string; status: 'started' | 'failed'; error?: string };
}

export interface DeleteSnapshotInput {
  group: string;
  snapshotId: string;
}

export interface DeleteSnapshotResult {
  group: string;
  snapshotId: string;
  status: 'deleted' | 'failed';
  vms: { host: string; domain: string; outcome: 'deleted' | 'absent' | 'failed'; removed: string[]; error?: string }[];
}

export type RestoreMode = 'clone' | 'in-place';

export interface RestoreInput {
  group: string;
  snapshotId: string;
  mode: RestoreMode;
  /** Clone names are `<domain><suffix>`. @default `-<restoreId>` */
  suffix?: string;
  /** @default generated */
  restoreId?: string;
  /**
   * Required (true) for `in-place`, which stops the VMs and discards their current state: the same explicit
   * confirmation as the CLI's `--yes`, asked by the client library and the Nexus operation.
   */
  confirmInPlace?: boolean;
}

/** @throws BadInputError for an in-place restore without `confirmInPlace: true`. */
export function assertRestoreConfirmed(input: RestoreInput): void {
  if (input.mode === 'in-place' && input.confirmInPlace !== true)
    throw new BadInputError(
      'an in-place restore stops the VMs and discards their current state (kept on disk): ' +
        'confirm it with confirmInPlace: true (the CLI: --yes)',
    );
}

export interface RestoreResult {
  restoreId: string;
  group: string;
  snapshotId: string;
  mode: RestoreMode;
  status: 'restored' | 'failed';
  vms: {
    host: string;
    domain: string;
    /** The new VM (clone mode). */
    clone?: string;
    state?: string;
    disks: { target: string; image: string; overlay: string; discarded?: string }[];
    error?: string;
  }[];
  error?: string;
}

const SUFFIX = /^[A-Za-z0-9._-]{1,40}$/;

export function normalizeRestoreInput(input: RestoreInput): RestoreInput {
  const { problems, check } = problemList();
  check(() => assertSafeName('group name', input.group));
  check(() => assertSafeName('snapshot id', input.snapshotId));
  if (input.mode !== 'clone' && input.mode !== 'in-place')
    problems.push(`restore mode ${JSON.stringify(input.mode)} is not 'clone' or 'in-place'`);
  if (input.restoreId !== undefined) check(() => assertSafeName('restore id', input.restoreId!));
  if (input.suffix !== undefined && (!SUFFIX.test(input.suffix) || input.suffix.includes('..')))
    problems.push(`clone suffix ${JSON.stringify(input.suffix)} is not safe: use 1-40 letters, digits, '.', '_', '-'`);
  if (input.suffix !== undefined && input.mode === 'in-place') problems.push('--suffix only applies to --as-clone');
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
  return input;
}

/**
 * Why snapshot `snapshotId` cannot be deleted on `vm` (empty when it can): deleting merges the layer above each
 * snapshot image into it and removes that layer, which would corrupt a clone or an in-place restore built on either;
 * a pinned snapshot is kept until unpinned. The one rule, checked by the workflows and again by the host.
 */
export function deletionBlockers(
  vm: Pick<HostVm, 'domain' | 'snapshots' | 'clones' | 'restores'>,
  snapshotId: string,
): string[] {
  const snap = vm.snapshots.find((s) => s.snapshotId === snapshotId);
  if (!snap) return [];
  const files = new Set(snap.disks.flatMap((d) => [d.image, d.overlay]));
  const blockers: string[] = [];
  if (snap.pinned) blockers.push(`snapshot ${snapshotId} is pinned on ${vm.domain}: unpin it first`);
  for (const c of vm.clones)
    if (c.disks.some((d) => files.has(d.image)))
      blockers.push(
        `clone ${c.name} of ${vm.domain} is built on it (snapshot ${c.snapshotId}): remove the clone first`,
      );
  for (const r of vm.restores)
    if (r.disks.some((d) => files.has(d.image)))
      blockers.push(
        `the in-place restore ${r.restoreId} of ${vm.domain} (to snapshot ${r.snapshotId}) is built on it: ` +
          `remove that restore record first`,
      );
  return blockers;
}

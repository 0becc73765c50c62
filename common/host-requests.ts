/**
 * The declared shape of every host activity's request: one zod schema per activity, checked on the host before the
 * activity runs (worker/activity-door.ts applies them where the host plugin registers its activities). Anyone who can
 * start a workflow can schedule a host activity directly, so names, ids and paths are checked here for their shape;
 * the activities still check state and what they derive. Request types of the newer activities are inferred from
 * these schemas (`z.infer`); the older ones' interfaces are checked against them at compile time
 * (test/unit/host-requests.test.ts).
 *
 * Host-only at run time: workflows import the inferred types, never this module's values.
 */
import { z } from 'zod';
import type { DiskExportStats, PointStats } from './backup-types';
import { assertSafeName } from './validation';

/** A name that becomes part of a file name (ids, labels, tags): {@link assertSafeName}'s rule. */
export function safeName(what: string) {
  return z.string().superRefine((value, ctx) => {
    try {
      assertSafeName(what, value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
    }
  });
}

const CONTROL = /[\u0000-\u001f\u007f]/;

/** Whether `name` may be a libvirt domain name here: 1-200 characters, no '/', no control characters, not `.`/`..`. */
export function isDomainName(name: unknown): name is string {
  return (
    typeof name === 'string' &&
    name.length > 0 &&
    name.length <= 200 &&
    !name.includes('/') &&
    !CONTROL.test(name) &&
    name !== '.' &&
    name !== '..'
  );
}

export const domainName = z
  .string()
  .refine(isDomainName, { message: "a VM name: 1-200 characters, no '/' or control characters" });

/** A disk's target device (`vda`, `sdb`, `hdc`, `xvda`, `fda`, `nvme0n1`): the only targets a file name is made of. */
export const DISK_TARGET = /^(?:(?:[hsv]d|xvd)[a-z]{1,3}|fd[a-z]|nvme[0-9]{1,3}n[0-9]{1,3})$/;

export const diskTarget = z.string().regex(DISK_TARGET, { message: 'a disk target such as vda, sdb or hdc' });

/** Whether `p` is an absolute, normalised path: starts with '/', no empty, `.` or `..` segment, no control characters. */
export function isNormalAbsolutePath(p: unknown): p is string {
  if (typeof p !== 'string' || !p.startsWith('/') || p.length > 4096 || CONTROL.test(p)) return false;
  if (p === '/') return true;
  return p
    .slice(1)
    .split('/')
    .every((s) => s !== '' && s !== '.' && s !== '..');
}

export const absolutePath = z
  .string()
  .refine(isNormalAbsolutePath, { message: "an absolute, normalised path (no '..', '.' or '//')" });

export const uuid = z
  .string()
  .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/, { message: 'a UUID' });

export const repoUrl = z
  .string()
  .regex(/^(s3|file):\/\/[^\0]+$/, { message: 'a repository URL: s3://bucket[/prefix] or file:///path' })
  .max(2048);

/** A lease owner: the id of the workflow run that works under it. */
export const leaseOwner = z.string().trim().min(1).max(200);

const powerState = z.enum(['running', 'paused', 'shutoff', 'other']);
const quiesceMode = z.enum(['none', 'agent', 'agent-or-crash']);
const domains = z.array(domainName).min(1).max(10_000);
const diskFormat = z.enum(['raw', 'qcow2']);
const virtType = z.enum(['kvm', 'qemu']);
const port = z.number().int().min(1).max(65535);
const socketPorts = z.record(z.string().max(200), port);
export const networkName = z.string().regex(/^[A-Za-z0-9._:-]{1,64}$/, { message: 'a network name' });

const diskSnapshot = z.object({ target: diskTarget, image: absolutePath, overlay: absolutePath });

/** A record of figures passed through as data (statistics): an object, typed as `T`. */
function record<T>() {
  return z.custom<T>((v) => typeof v === 'object' && v !== null && !Array.isArray(v), { message: 'an object' });
}

// ---- snapshots (activities/host-activities.ts; types in common/host-types.ts) ----

const hostPlannedVm = z.object({
  domain: domainName,
  uuid,
  state: powerState,
  disks: z.array(diskSnapshot),
  skip: z.array(z.string().max(64)),
  quiesce: z.boolean(),
  prepared: z.boolean().optional(),
});

export const planRequest = z.object({
  snapshotId: safeName('snapshot id'),
  domains,
  quiesce: quiesceMode,
  leaseOwner: leaseOwner.optional(),
  prepareOverlays: z.boolean().optional(),
});

export const freezeRequest = z.object({
  snapshotId: safeName('snapshot id'),
  vms: z.array(hostPlannedVm),
  maxFreezeMs: z.number().int().min(1).max(3_600_000),
  release: z.enum(['local', 'barrier', 'thaw', 'signal']),
  host: safeName('host id'),
  quiesce: quiesceMode,
  leaseOwner,
  resumeWhen: z.enum(['group-paused', 'group-snapshotted']).optional(),
  snapshotsInFlight: z.number().int().min(1).max(64).optional(),
  arm: z.literal(true).optional(),
});

export const releaseRequest = z.object({
  snapshotId: safeName('snapshot id'),
  leaseOwner,
  release: z.boolean(),
});

export const thawRequest = z.object({
  snapshotId: safeName('snapshot id'),
  domains: z.array(domainName),
  quiesced: z.array(domainName),
});

export const undoRequest = z.object({
  snapshotId: safeName('snapshot id'),
  vms: z.array(z.object({ domain: domainName, disks: z.array(diskSnapshot) })),
  leaseOwner,
});

export const catalogRequest = z.object({
  // The catalog entry is data recorded in the VM's metadata; its names are checked, the rest kept as given.
  entry: z.looseObject({ snapshotId: safeName('snapshot id'), group: safeName('group') }),
  host: safeName('host id'),
  vms: z.array(z.object({ domain: domainName, uuid, disks: z.array(diskSnapshot) })),
  leaseOwner,
});

export const acquireLocksRequest = z.object({
  owner: leaseOwner,
  domains,
  ttlMs: z.number().int().min(1).max(86_400_000),
});
export const releaseLocksRequest = z.object({ owner: leaseOwner, domains });
export const vmStatesRequest = z.object({ domains: z.array(domainName) });

// ---- administration (activities/dr-activities.ts; types in common/dr-types.ts) ----

export const noRequest = z.undefined();

const tag = safeName('tag');
export const setTagsRequest = z.object({
  domain: domainName,
  add: z.array(tag).optional(),
  remove: z.array(tag).optional(),
});
export const deleteSnapshotRequest = z.object({
  owner: leaseOwner,
  snapshotId: safeName('snapshot id'),
  domain: domainName,
});
export const cloneVmRequest = z.object({
  snapshotId: safeName('snapshot id'),
  domain: domainName,
  cloneName: safeName('clone name'),
  start: z.boolean().optional(),
  leaseOwner: leaseOwner.optional(),
  socketPorts: socketPorts.optional(),
});
export const chooseSocketPortsRequest = z.object({ domains: z.array(domainName), avoid: z.array(port).optional() });
export const removeCloneRequest = z.object({ domain: domainName, clone: domainName });
export const inPlaceRequest = z.object({
  restoreId: safeName('restore id'),
  snapshotId: safeName('snapshot id'),
  domain: domainName,
  leaseOwner: leaseOwner.optional(),
});
export const undoInPlaceRequest = z.object({ restoreId: safeName('restore id'), domain: domainName });
export const pinSnapshotRequest = z.object({
  domain: domainName,
  snapshotId: safeName('snapshot id'),
  pinned: z.boolean(),
});
export const releaseInPlaceRestoreRequest = z.object({ domain: domainName, restoreId: safeName('restore id') });

// ---- exports (activities/export-activities.ts; types in common/backup-types.ts) ----

const repoPoint = { repository: repoUrl, group: safeName('group'), snapshotId: safeName('snapshot id') };
export const exportDiskRequest = z.object({
  ...repoPoint,
  domain: domainName,
  target: diskTarget,
  maxBytesPerSecond: z.number().positive().optional(),
});
export const writeVmManifestRequest = z.object({
  ...repoPoint,
  domain: domainName,
  disks: z.array(
    z.object({
      target: diskTarget,
      manifest: z.string().min(1).max(1024),
      virtualSize: z.number().int().nonnegative(),
      sourceFormat: z.string().max(64),
      sourceImage: z.string().max(4096),
      stats: record<DiskExportStats>(),
    }),
  ),
});
export const writeGroupManifestRequest = z.object({
  ...repoPoint,
  label: z.string().max(200).optional(),
  snapshotCreatedAt: z.string().max(64),
  vms: z.array(
    z.object({
      domain: domainName,
      host: safeName('host id'),
      manifest: z.string().min(1).max(1024),
      disks: z.array(z.object({ target: diskTarget, virtualSize: z.number().int().nonnegative() })),
    }),
  ),
  stats: record<PointStats>(),
});

// ---- restores from the repository (activities/repo-restore.ts; types in common/repo-restore.ts) ----

const restorePoint = { repo: repoUrl, group: safeName('group'), snapshotId: safeName('snapshot id') };
const suffix = z.string().regex(/^[A-Za-z0-9._-]{1,40}$/, { message: 'letters, digits and . _ - (at most 40)' });

export const repoRestorePlanRequest = z.object({
  ...restorePoint,
  restoreId: safeName('restore id'),
  mode: z.enum(['clone', 'original']),
  suffix: suffix.or(z.literal('')),
  format: diskFormat,
  /** The definitions are built (and checked) in the plan with the options the VMs are defined with. */
  networkMap: z.record(networkName, networkName).optional(),
  noNetwork: z.boolean().optional(),
  stripHostDevices: z.boolean().optional(),
  /** Only these VMs of the point (names in the point); absent: all. */
  vms: z.array(domainName).min(1).max(1000).optional(),
  /** An instant restore (qcow2 overlays over the point's disks served by NBD, hydrated in the background). */
  instant: z.boolean().optional(),
});

export const plannedDisk = z.object({
  target: diskTarget,
  file: absolutePath,
  format: diskFormat,
  virtualSize: z.number().int().nonnegative(),
  dataBytes: z.number().int().nonnegative(),
});

export const plannedRestoredVm = z.object({
  source: domainName,
  domain: domainName,
  sourceHost: safeName('host id'),
  /** The UUID the VM gets on the target, chosen by the plan; absent in plans made before UUIDs were planned. */
  uuid: uuid.optional(),
  disks: z.array(plannedDisk),
  /** What `stripHostDevices` removes from its stored definition (each element named). */
  removed: z.array(z.string().max(1000)).max(1000).optional(),
});

export const rebuildDiskRequest = z.object({
  ...restorePoint,
  domain: domainName,
  target: diskTarget,
  file: absolutePath,
  format: diskFormat,
});

export const defineRestoredVmRequest = z.object({
  ...restorePoint,
  restoreId: safeName('restore id'),
  vm: plannedRestoredVm,
  mode: z.enum(['clone', 'original']),
  networkMap: z.record(networkName, networkName),
  noNetwork: z.boolean(),
  virtType: virtType.optional(),
  socketPorts: socketPorts.optional(),
  stripHostDevices: z.boolean().optional(),
  /** Define on the instant restore's overlays over its NBD exports (sockets derived on the host, never given). */
  instant: z.boolean().optional(),
});

export const startRestoredVmRequest = z.object({ domain: domainName, paused: z.boolean() });
export const resumeRestoredVmRequest = z.object({ domain: domainName });

export const removeRestoredVmRequest = z.object({
  domain: domainName,
  uuid: uuid.optional(),
  files: z.array(absolutePath).max(1000),
});

// ---- instant restores (activities/repo-restore/instant.ts; types in common/repo-restore.ts) ----

export const instantServeRequest = z.object({ ...restorePoint, restoreId: safeName('restore id') });

const hydratedDisk = z.object({
  domain: domainName,
  target: diskTarget,
  virtualSize: z.number().int().nonnegative(),
});

export const instantHydrateRequest = z.object({
  restoreId: safeName('restore id'),
  disks: z.array(hydratedDisk).min(1).max(1000),
  /** At most this many block pulls at once on the host. */
  maxParallel: z.number().int().min(1).max(64),
  /** How long one step polls before it reports (ms). */
  stepMs: z.number().int().min(0).max(600_000),
  /** Each pull's bandwidth limit (MiB/s); absent: unlimited. */
  bandwidthMiB: z.number().int().min(1).max(1_000_000).optional(),
});

export const instantFinishRequest = z.object({
  restoreId: safeName('restore id'),
  domains: z.array(domainName).min(1).max(1000),
});

export const instantStopRequest = z.object({ restoreId: safeName('restore id') });

// ---- drills (activities/drill.ts; types in common/drill.ts) ----

/** A JavaScript regular expression (checked by compiling it), at most 1000 characters. */
export const jsRegex = z
  .string()
  .max(1000)
  .refine(
    (s) => {
      try {
        new RegExp(s);
        return true;
      } catch {
        return false;
      }
    },
    { message: 'a JavaScript regular expression' },
  );

export const repoLatestPointRequest = z.object({ repo: repoUrl, group: safeName('group') });

export const waitReadyRequest = z.object({
  domains,
  readiness: z.enum(['running', 'serial-line', 'command']),
  serialLine: jsRegex.optional(),
  check: z.string().min(1).max(10_000).optional(),
  timeoutMs: z
    .number()
    .int()
    .min(1000)
    .max(6 * 3600_000),
});

const readyTimeoutMs = z
  .number()
  .int()
  .min(1000)
  .max(6 * 3600_000);

/** One VM of a recovery plan checked on its recovery host (activities/drill.ts `checkVmReady`; common/plans.ts). */
export const checkVmReadyRequest = z.object({
  domain: domainName,
  check: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('running'), timeoutMs: readyTimeoutMs }),
    z.object({ kind: z.literal('serial'), pattern: jsRegex, timeoutMs: readyTimeoutMs }),
    z.object({
      kind: z.literal('tcp'),
      port: z.number().int().min(1).max(65535),
      address: z.union([z.ipv4(), z.ipv6()]),
      timeoutMs: readyTimeoutMs,
    }),
    z.object({ kind: z.literal('command'), command: z.string().min(1).max(10_000), timeoutMs: readyTimeoutMs }),
  ]),
});

export const recordDrillRequest = z.object({
  repo: repoUrl,
  record: z.looseObject({
    drillId: safeName('drill id'),
    group: safeName('group'),
    snapshotId: safeName('snapshot id'),
    toHost: safeName('host id'),
  }),
});

/**
 * Every host activity's request schema, by activity name: the host plugin refuses to register an activity missing
 * here. An activity taking no argument has {@link noRequest}.
 */
export const HOST_ACTIVITY_SCHEMAS = {
  planVms: planRequest,
  acquireLocks: acquireLocksRequest,
  releaseLocks: releaseLocksRequest,
  freezeVms: freezeRequest,
  releaseFreeze: releaseRequest,
  thawVms: thawRequest,
  undoSnapshots: undoRequest,
  recordCatalog: catalogRequest,
  vmStates: vmStatesRequest,
  listVms: noRequest,
  setTags: setTagsRequest,
  deleteSnapshot: deleteSnapshotRequest,
  chooseSocketPorts: chooseSocketPortsRequest,
  cloneVm: cloneVmRequest,
  removeClone: removeCloneRequest,
  restoreInPlace: inPlaceRequest,
  undoInPlace: undoInPlaceRequest,
  pinSnapshot: pinSnapshotRequest,
  releaseInPlaceRestore: releaseInPlaceRestoreRequest,
  exportVmDisk: exportDiskRequest,
  writeVmManifest: writeVmManifestRequest,
  writeGroupManifest: writeGroupManifestRequest,
  repoRestorePlan: repoRestorePlanRequest,
  rebuildDisk: rebuildDiskRequest,
  defineRestoredVm: defineRestoredVmRequest,
  startRestoredVm: startRestoredVmRequest,
  resumeRestoredVm: resumeRestoredVmRequest,
  removeRestoredVm: removeRestoredVmRequest,
  instantServe: instantServeRequest,
  instantHydrate: instantHydrateRequest,
  instantFinish: instantFinishRequest,
  instantStop: instantStopRequest,
  repoLatestPoint: repoLatestPointRequest,
  waitReady: waitReadyRequest,
  recordDrill: recordDrillRequest,
  checkVmReady: checkVmReadyRequest,
} as const satisfies Record<string, z.ZodType>;

export type HostActivityName = keyof typeof HOST_ACTIVITY_SCHEMAS;

/** The issues of a failed parse as sentences naming each field: `vm.disks.0.target: a disk target ...`. */
export function describeIssues(error: z.ZodError): string[] {
  return error.issues.map((i) => `${i.path.length ? i.path.map(String).join('.') : 'request'}: ${i.message}`);
}

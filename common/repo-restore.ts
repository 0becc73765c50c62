/**
 * Restore of a group point from the off-host repository onto another host: the contract between the workflow,
 * client, CLI and the target host's activities. Pure (used by workflows). The repository key never appears here:
 * the target host's worker reads it from its own key file.
 */
import type { z } from 'zod';
import type * as schemas from './host-requests';
import type { VmPowerState } from './types';
import { BadInputError } from './failures';
import { assertSafeName } from './validation';

export type RepoRestoreMode = 'clone' | 'original';
export type RestoredDiskFormat = 'raw' | 'qcow2';

export interface RepoRestoreInput {
  group: string;
  /** The point's id in the repository (the group snapshot's id). */
  snapshotId: string;
  /** Repository URL (`s3://bucket/prefix` or `file:///path`). */
  repo: string;
  /** Host id whose worker rebuilds and runs the VMs. */
  toHost: string;
  /** `clone`: new names `<domain><suffix>`, UUIDs and MACs; `original`: same identity (failover). @default 'clone' */
  mode?: RepoRestoreMode;
  /** Clone name suffix. @default `-<restoreId>` */
  suffix?: string;
  /** Networks/bridges renamed on the target. */
  networkMap?: Record<string, string>;
  /** Leave out every network interface (isolated clones, e.g. a drill). */
  noNetwork?: boolean;
  /**
   * Remove what in the stored definitions names a resource of the target host (host shares and devices, disks that
   * are not restored files, chardevs reaching host files or networks, non-loopback listeners, QEMU passthrough),
   * listed per VM in the result, instead of refusing the restore (docs/restore-policy.md). @default false
   */
  stripHostDevices?: boolean;
  /** Format of the rebuilt disks. @default 'qcow2' */
  format?: RestoredDiskFormat;
  /** Start the VMs (paused, then all resumed together). @default true */
  start?: boolean;
  /** @default generated */
  restoreId?: string;
  /**
   * Instant restore: the VMs run at once on local qcow2 overlays over the point's disks served from the repository
   * (NBD), and the data is copied in the background (hydration). qcow2 only. @default false
   */
  instant?: boolean;
  /** Only these VMs of the point (their names in the point). @default all */
  vms?: string[];
  /** Instant restore: at most this many disks hydrate at once. @default 4 */
  hydrateParallel?: number;
  /** Instant restore: each disk's hydration limited to this many MiB/s (spares the guests' I/O). @default unlimited */
  hydrateBandwidthMiB?: number;
  /**
   * Instant restore started as a child workflow: signal the parent ({@link RESTORE_RUNNING_SIGNAL}) with the result
   * so far once every VM runs, so it goes on (readiness checks) while this restore hydrates. @default false
   */
  reportRunning?: boolean;
}

/** The signal an instant restore sends its parent once every VM runs (see `reportRunning`). */
export const RESTORE_RUNNING_SIGNAL = 'restoreRunning';

export interface NormalizedRepoRestoreInput extends Required<
  Omit<
    RepoRestoreInput,
    'suffix' | 'restoreId' | 'instant' | 'vms' | 'hydrateParallel' | 'hydrateBandwidthMiB' | 'reportRunning'
  >
> {
  suffix: string | undefined;
  restoreId: string | undefined;
  /** Set only when asked (a normalized input of a restore that is not instant stays as it was). */
  instant?: true;
  vms?: string[];
  hydrateParallel?: number;
  hydrateBandwidthMiB?: number;
  reportRunning?: true;
}

/** Checks a restore request before anything runs. @throws BadInputError listing every problem */
export function normalizeRepoRestoreInput(input: RepoRestoreInput): NormalizedRepoRestoreInput {
  const problems: string[] = [];
  const check = (fn: () => void) => {
    try {
      fn();
    } catch (err) {
      problems.push((err as Error).message);
    }
  };
  check(() => assertSafeName('group', input.group));
  check(() => assertSafeName('snapshot id', input.snapshotId));
  check(() => assertSafeName('host id', input.toHost));
  if (!input.repo || !/^(s3|file):\/\//.test(input.repo))
    problems.push(`repository URL ${JSON.stringify(input.repo ?? '')} must be s3://bucket[/prefix] or file:///path`);
  const mode = input.mode ?? 'clone';
  if (mode !== 'clone' && mode !== 'original') problems.push(`mode must be clone or original, not ${String(mode)}`);
  if (mode === 'original' && input.suffix !== undefined) problems.push('a suffix applies to clones only');
  if (input.suffix !== undefined && !/^[A-Za-z0-9._-]{1,40}$/.test(input.suffix))
    problems.push(`suffix ${JSON.stringify(input.suffix)} may only hold letters, digits and . _ - (at most 40)`);
  if (input.restoreId !== undefined) check(() => assertSafeName('restore id', input.restoreId!));
  const format = input.format ?? 'qcow2';
  if (format !== 'raw' && format !== 'qcow2') problems.push(`disk format must be raw or qcow2, not ${String(format)}`);
  for (const [from, to] of Object.entries(input.networkMap ?? {})) {
    if (!/^[A-Za-z0-9._:-]{1,64}$/.test(from) || !/^[A-Za-z0-9._:-]{1,64}$/.test(to))
      problems.push(`network map ${from}=${to}: names may only hold letters, digits and . _ : -`);
  }
  if (input.stripHostDevices !== undefined && typeof input.stripHostDevices !== 'boolean')
    problems.push(`stripHostDevices must be true or false, not ${JSON.stringify(input.stripHostDevices)}`);
  if (input.noNetwork && input.networkMap && Object.keys(input.networkMap).length)
    problems.push('a network map and no network exclude each other');
  if (input.instant !== undefined && typeof input.instant !== 'boolean')
    problems.push(`instant must be true or false, not ${JSON.stringify(input.instant)}`);
  if (input.instant && input.format === 'raw') problems.push('an instant restore writes qcow2 overlays, not raw');
  if (input.instant && input.start === false) problems.push('an instant restore starts the VMs');
  if (input.vms !== undefined) {
    if (!Array.isArray(input.vms) || input.vms.length === 0) problems.push('--vm names at least one VM');
    else for (const v of input.vms) check(() => assertSafeName('VM name', v));
  }
  const par = input.hydrateParallel;
  if (par !== undefined && (!Number.isInteger(par) || par < 1 || par > 64))
    problems.push(`hydrate parallelism must be 1-64, not ${JSON.stringify(par)}`);
  const bw = input.hydrateBandwidthMiB;
  if (bw !== undefined && (!Number.isInteger(bw) || bw < 1 || bw > 1_000_000))
    problems.push(`hydrate bandwidth must be a whole number of MiB/s (1-1000000), not ${JSON.stringify(bw)}`);
  if (!input.instant && (par !== undefined || bw !== undefined))
    problems.push('hydrate parallelism and bandwidth apply to an instant restore only');
  if (input.reportRunning && !input.instant) problems.push('only an instant restore reports its VMs running');
  if (problems.length) throw new BadInputError(problems.join('; '));
  return {
    ...(bw !== undefined ? { hydrateBandwidthMiB: bw } : {}),
    ...(input.reportRunning ? { reportRunning: true as const } : {}),
    ...(input.instant ? { instant: true as const } : {}),
    ...(input.vms ? { vms: [...new Set(input.vms)] } : {}),
    ...(par !== undefined ? { hydrateParallel: par } : {}),
    group: input.group,
    snapshotId: input.snapshotId,
    repo: input.repo,
    toHost: input.toHost,
    mode,
    suffix: input.suffix,
    networkMap: input.networkMap ?? {},
    noNetwork: input.noNetwork ?? false,
    stripHostDevices: input.stripHostDevices ?? false,
    format,
    start: input.start ?? true,
    restoreId: input.restoreId,
    vms: input.vms,
  };
}

/** Parses `old=new` (CLI `--map-network`). @throws BadInputError */
export function parseNetworkMapping(value: string): [string, string] {
  const m = /^([^=]+)=([^=]+)$/.exec(value);
  if (!m) throw new BadInputError(`--map-network takes old=new, not ${JSON.stringify(value)}`);
  return [m[1], m[2]];
}

/** Request of the target host's planning step (reads the point, checks the host; changes nothing). */
export type RepoRestorePlanRequest = z.infer<typeof schemas.repoRestorePlanRequest>;

/** A disk of a planned VM: where it is rebuilt on the target host, its size and the bytes of stored data. */
export type PlannedDisk = z.infer<typeof schemas.plannedDisk>;

/**
 * A VM of the plan: its name in the point (`source`) and on the target (`domain`), the host it was exported from,
 * the UUID it gets on the target (chosen by the plan: a fresh one for clones, the stored one as the original) and
 * its disks.
 */
export type PlannedVm = z.infer<typeof schemas.plannedRestoredVm>;

export interface RepoRestorePlan {
  vms: PlannedVm[];
  imagesDir: string;
  /** Sum of `dataBytes`, and what the target's image directory has free. */
  bytesNeeded: number;
  bytesFree: number;
  snapshotCreatedAt: string;
  /** Domain type the VMs get on the target when it differs from the stored one (e.g. `qemu`: no KVM there). */
  virtType?: 'kvm' | 'qemu';
  /**
   * Clones only: every socket-link port (UDP/TCP/multicast interfaces) of the group's VMs -> a fresh port free on
   * the target, one map for all the VMs so the clones pair with each other, not with the originals.
   */
  socketPorts?: Record<string, number>;
}

export type RebuildDiskRequest = z.infer<typeof schemas.rebuildDiskRequest>;

export interface RebuildDiskReport {
  file: string;
  /** Bytes of data written (zero chunks are holes). */
  bytesWritten: number;
  virtualSize: number;
}

export type DefineRestoredVmRequest = z.infer<typeof schemas.defineRestoredVmRequest>;

export type InstantServeRequest = z.infer<typeof schemas.instantServeRequest>;
export type InstantHydrateRequest = z.infer<typeof schemas.instantHydrateRequest>;
export type InstantFinishRequest = z.infer<typeof schemas.instantFinishRequest>;
export type InstantStopRequest = z.infer<typeof schemas.instantStopRequest>;

/** An instant restore's export of one disk on the target host. */
export interface InstantExport {
  domain: string;
  target: string;
  socket: string;
  exportName: string;
}

/** Hydration of one disk: bytes copied into the local overlay of its size, and whether its backing is gone. */
export interface HydrationDisk {
  domain: string;
  target: string;
  done: number;
  total: number;
  hydrated: boolean;
}

/** What one hydration step saw and did on the target host. */
export interface HydrationReport {
  disks: HydrationDisk[];
  /** Every disk hydrated (no NBD backing left). */
  hydrated: boolean;
  /** Whether the serving process says the store is reachable now. */
  storeReachable: boolean;
  /** VMs resumed after QEMU paused them on an I/O error (the store was away). */
  resumed: string[];
  /** VMs whose disks were re-opened (managed save and restore) after the serving process was restarted. */
  reopened: string[];
  /** The serving process was (re)started by this step. */
  serverRestarted: boolean;
}

/**
 * Compensation of a restored VM: stop it, undefine it (only when its UUID is the one planned or defined), remove its
 * files (only those the host recorded for the restore).
 */
export type RemoveRestoredVmRequest = z.infer<typeof schemas.removeRestoredVmRequest>;

export interface RepoRestoreVmResult {
  source: string;
  domain: string;
  uuid?: string;
  state?: VmPowerState;
  disks: { target: string; file: string; format: RestoredDiskFormat; virtualSize: number; bytesWritten?: number }[];
  /** Removed from the stored definition (`stripHostDevices`), each element named. */
  removed?: string[];
  error?: string;
}

export interface RepoRestoreResult {
  restoreId: string;
  group: string;
  snapshotId: string;
  repo: string;
  toHost: string;
  mode: RepoRestoreMode;
  status: 'restored' | 'failed';
  error?: string;
  vms: RepoRestoreVmResult[];
  /** Data bytes written to the target's disks. */
  bytesWritten: number;
  /** Workflow time from start to every VM running (ms). */
  durationMs?: number;
  /** Set for an instant restore. */
  instant?: true;
  /** Instant restore: workflow time from start to every VM running (ms), before hydration. */
  runningAfterMs?: number;
  /** Instant restore: workflow time from start to every disk hydrated (ms). */
  hydratedAfterMs?: number;
  /** Instant restore: each disk's hydration at the end (or as far as it got). */
  hydration?: HydrationDisk[];
  /** Instant restore: how often the serving process was restarted, and the VMs whose disks were then re-opened. */
  serverRestarts?: number;
  reopened?: string[];
  /** Instant restore: VMs resumed after QEMU paused them on an I/O error (the store was away). */
  resumedAfterIoError?: string[];
  /** Set when the VMs run under another domain type than stored (e.g. TCG: no KVM on the target). */
  virtType?: 'kvm' | 'qemu';
}

/** Workflow id of a restore from the repository. */
export function repoRestoreWorkflowId(group: string, restoreId: string): string {
  return `groupsnap/repo-restore/${group}/${restoreId}`;
}

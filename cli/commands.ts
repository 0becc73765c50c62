import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { groupSnapshotProgress, groupSnapshotResult, startGroupSnapshot } from '../client';
import { defaults, temporalSettings, type TemporalOverrides } from '../common/config';
import { defaultImagesDir } from '../common/images-dir';
import { METRICS_ADDRESS_ENV } from '../common/metrics';
import type { GroupSnapshotInput, GroupSnapshotResult } from '../common/types';
import { parseVmMetadata } from '../common/catalog';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import {
  claimGuardPidFile,
  ensureGuard,
  runGuardReconnecting,
  runningGuardPid,
  stopIdleGuard,
  superviseGuard,
} from '../worker/guard';
import { checkMetricsAddress, prometheusTelemetry } from '../worker/telemetry';
import { createGroupsnapWorker } from '../worker/worker';
import { formatProgress, formatResult } from './format';
import { reportError } from './exit';

/** Exit codes of `groupsnap snapshot`. */
import { EXIT } from '../common/failures';

export { EXIT };

export function logLine(message: string, fields: Record<string, unknown> = {}): void {
  console.error(JSON.stringify({ time: new Date().toISOString(), msg: message, ...fields }));
}

export interface WorkerCommandOptions extends TemporalOverrides {
  host?: string;
  libvirtUri?: string;
  stateDir?: string;
  /** Where restored and cloned disks go on this host. @default defaultImagesDir(libvirtUri) */
  imagesDir?: string;
  /** The off-host repository's key file (export, restore). @default $GROUPSNAP_REPO_KEY_FILE */
  keyFile?: string;
  /** Run DR drills' check commands on this host. */
  allowDrillChecks?: boolean;
  /** More directories restored VMs may boot read-only files from (docs/restore-policy.md). */
  bootFilesDir?: string[];
  workflows?: boolean;
  guard?: boolean;
  /** Prometheus exporter address (`ip:port`); else `GROUPSNAP_METRICS_ADDRESS`; none: no metrics. */
  metrics?: string;
  /** Most snapshots taken at once in the `group-paused` order. @default 2 */
  snapshotsInFlight?: number;
}

/** `groupsnap worker`: the host's worker, plus its guard process. Runs until SIGINT/SIGTERM. */
export async function workerCommand(opts: WorkerCommandOptions): Promise<void> {
  const metricsAddress = opts.metrics ?? (process.env[METRICS_ADDRESS_ENV] || undefined);
  if (metricsAddress !== undefined) checkMetricsAddress(metricsAddress);
  // Before any connection or worker: the SDK's runtime (and its metrics exporter) is created once per process.
  Runtime.install({
    logger: new DefaultLogger('WARN'),
    ...(metricsAddress ? { telemetryOptions: prometheusTelemetry(metricsAddress) } : {}),
  });
  const hostId = opts.host ?? defaults.hostId();
  const libvirtUri = opts.libvirtUri ?? defaults.libvirtUri();
  const stateDir = opts.stateDir ?? defaults.stateDir(hostId);
  const imagesDir = opts.imagesDir ?? defaultImagesDir(libvirtUri);
  const { connectionOptions, namespace } = temporalSettings(opts);
  const hypervisor = await LibvirtHypervisor.open(libvirtUri);
  try {
    let stopSupervising = () => {};
    // A guard that was already running (e.g. the compose file's own guard service) is not this worker's to stop.
    const ownsGuard = opts.guard !== false && runningGuardPid(stateDir) === undefined;
    if (opts.guard !== false) {
      const pid = ensureGuard(stateDir, libvirtUri, process.argv[1]);
      logLine('host guard running', { hostId, pid, stateDir });
      // A guard that dies (killed, crashed) is started again while this worker lives.
      stopSupervising = superviseGuard(stateDir, libvirtUri, process.argv[1], (msg, fields) =>
        logLine(msg, { hostId, ...fields }),
      );
    }
    const worker = await createGroupsnapWorker({
      connectionOptions,
      namespace,
      hostId,
      hypervisor,
      stateDir,
      imagesDir,
      ...(opts.keyFile ? { repoKeyFile: opts.keyFile } : {}),
      ...(opts.allowDrillChecks ? { allowDrillChecks: true } : {}),
      ...(opts.bootFilesDir?.length ? { bootFileDirs: opts.bootFilesDir } : {}),
      ...(opts.snapshotsInFlight !== undefined ? { snapshotsInFlight: opts.snapshotsInFlight } : {}),
      workflows: opts.workflows,
      log: (msg, fields) => logLine(msg, { hostId, ...fields }),
    });
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => worker.shutdown());
    logLine('worker started', {
      hostId,
      libvirtUri,
      imagesDir,
      address: connectionOptions.address,
      namespace,
      ...(metricsAddress ? { metrics: `http://${metricsAddress}/metrics` } : {}),
    });
    try {
      await worker.run();
    } finally {
      stopSupervising();
    }
    // A clean stop (a crash throws above and leaves the guard, as designed) with nothing open ends our guard.
    if (ownsGuard) {
      const stopped = await stopIdleGuard(stateDir);
      if (stopped) logLine('host guard stopped: no freeze is open', { hostId, pid: stopped });
      else if (runningGuardPid(stateDir)) logLine('host guard left running: a freeze is still open', { hostId });
    }
  } finally {
    await hypervisor.close();
  }
}

/** `groupsnap guard` (started by the worker): resumes VMs left paused past their deadline. */
export async function guardCommand(opts: { stateDir: string; libvirtUri: string }): Promise<void> {
  const other = runningGuardPid(opts.stateDir);
  if (other && other !== process.pid) {
    logLine('another guard already serves this state dir', { pid: other, stateDir: opts.stateDir });
    return;
  }
  claimGuardPidFile(opts.stateDir);
  const controller = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => controller.abort());
  logLine('guard started', { stateDir: opts.stateDir, libvirtUri: opts.libvirtUri });
  await runGuardReconnecting({
    open: () => LibvirtHypervisor.open(opts.libvirtUri),
    stateDir: opts.stateDir,
    signal: controller.signal,
    log: logLine,
  });
}

export interface SnapshotCommandOptions extends TemporalOverrides {
  json?: boolean;
}

/** `groupsnap snapshot`: starts a group snapshot, shows progress on a TTY, prints the result. */
export async function snapshotCommand(input: GroupSnapshotInput, opts: SnapshotCommandOptions): Promise<number> {
  const { connectionOptions, namespace } = temporalSettings(opts);
  const connection = await Connection.connect(connectionOptions as Parameters<typeof Connection.connect>[0]);
  try {
    const client = new Client({ connection, namespace });
    let result: GroupSnapshotResult;
    try {
      const handle = await startGroupSnapshot(client, input);
      const showProgress = !opts.json && process.stderr.isTTY;
      if (!opts.json) console.error(`started ${handle.workflowId}`);
      const done = groupSnapshotResult(handle);
      if (showProgress) {
        let last = '';
        let finished = false;
        void done.finally(() => (finished = true)).catch(() => undefined);
        while (!finished) {
          const line = await groupSnapshotProgress(handle).then(formatProgress, () => last);
          if (line !== last) console.error(`  ${line}`);
          last = line;
          await Promise.race([sleep(100), done.catch(() => undefined)]);
        }
      }
      result = await done;
    } catch (err) {
      return reportError(err, opts.json);
    }
    console.log(opts.json ? JSON.stringify(result, null, 2) : formatResult(result));
    return result.status === 'completed' ? EXIT.ok : EXIT.failed;
  } finally {
    await connection.close();
  }
}

/**
 * `groupsnap catalog <domain>`: the group snapshots recorded on a VM, read from its libvirt metadata on this host,
 * without Temporal (the catalog outlives workflow history retention).
 */
export async function catalogCommand(domain: string, opts: { libvirtUri?: string; json?: boolean }): Promise<void> {
  const hypervisor = await LibvirtHypervisor.open(opts.libvirtUri ?? defaults.libvirtUri());
  try {
    const { snapshots } = parseVmMetadata(await hypervisor.getMetadata(domain));
    if (opts.json) {
      console.log(JSON.stringify(snapshots, null, 2));
      return;
    }
    if (snapshots.length === 0) console.log(`${domain}: no group snapshots recorded`);
    for (const s of snapshots) {
      console.log(`${s.snapshotId}  group ${s.group}${s.label ? ` (${s.label})` : ''}  taken ${s.createdAt}`);
      for (const d of s.disks) console.log(`  ${d.target}: ${d.image}`);
    }
  } finally {
    await hypervisor.close();
  }
}

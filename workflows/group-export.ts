import {
  defineQuery,
  defineSignal,
  log,
  metricMeter,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { ExportActivities } from '../activities/export-activities';
import {
  REPO_KEY_MISSING,
  type DiskProgressReport,
  type ExportDiskReport,
  type ExportInput,
  type ExportResult,
} from '../common/backup-types';
import { sumStats } from '../common/repository-manifest';
import { groupSnapshotsIn } from '../common/groups';
import { METRICS } from '../common/metrics';
import { hostTaskQueue } from '../common/names';
import { assertSafeName } from '../common/validation';
import { checked, errorMessage, BAD_INPUT, BadInputError, failure } from '../common/failures';
import { takeInventory } from './inventory';

/** Repository errors a retry cannot fix (backup/errors.ts), plus bad input and a host without a key. */
const PERMANENT = [
  BAD_INPUT,
  REPO_KEY_MISSING,
  'RepositoryInputError',
  'RepositoryNotFoundError',
  'BucketNotFoundError',
  'StoreAccessDeniedError',
  'WrongKeyError',
  'PointNotFoundError',
];

/** Live per-disk progress of the export (also shown as the workflow's current details). */
export const exportProgressQuery = defineQuery<DiskProgressReport[]>('exportProgress');
export const exportProgressSignal = defineSignal<[DiskProgressReport]>('exportProgress');

function onHostExport(host: string) {
  const taskQueue = hostTaskQueue(host);
  return {
    // One disk: long, heartbeating; a killed worker is noticed within the heartbeat timeout and the retry resumes
    // from the host's checkpoint. S3 outages are retried with backoff for up to a day.
    disk: proxyActivities<ExportActivities>({
      taskQueue,
      startToCloseTimeout: '12h',
      heartbeatTimeout: '20s',
      scheduleToCloseTimeout: '24h',
      retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1m', nonRetryableErrorTypes: PERMANENT },
    }),
    manifest: proxyActivities<ExportActivities>({
      taskQueue,
      startToCloseTimeout: '2m',
      scheduleToCloseTimeout: '24h',
      retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1m', nonRetryableErrorTypes: PERMANENT },
    }),
  };
}

const gib = (n: number): string => `${(n / 1024 ** 3).toFixed(2)} GiB`;
const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(1)} MiB`;

function details(input: ExportInput, progress: Map<string, DiskProgressReport>, phase: string): string {
  const rows = [...progress.values()].map(
    (p) =>
      `| ${p.domain} | ${p.target} | ${mib(p.bytesDone)} / ${mib(p.bytesTotal)} | ` +
      `${p.bytesTotal ? Math.floor((100 * p.bytesDone) / p.bytesTotal) : 100}% | ${mib(p.bytesUploaded)} |`,
  );
  return [
    `**Export** of ${input.snapshotId} (group ${input.group}) to ${input.repository}: ${phase}`,
    '',
    '| VM | disk | read / to read | done | uploaded |',
    '| --- | --- | --- | --- | --- |',
    ...rows,
  ].join('\n');
}

/**
 * Exports one group snapshot to a repository: one activity per disk on its VM's host (in parallel, bounded), then
 * each VM's manifest, then the group manifest, last, so a point is either complete or absent. Runs after the
 * group was resumed (never inside a freeze). The repository key stays on the hosts.
 */
export async function exportGroupSnapshot(input: ExportInput): Promise<ExportResult> {
  const started = Date.now();
  const workflowId = workflowInfo().workflowId;
  checked(() => {
    assertSafeName('group name', input.group);
    assertSafeName('snapshot id', input.snapshotId);
    if (typeof input.repository !== 'string' || !/^(s3|file):\/\//.test(input.repository)) {
      throw new BadInputError(`repository must be an s3:// or file:// URL, not ${JSON.stringify(input.repository)}`);
    }
  });

  const progress = new Map<string, DiskProgressReport>();
  let phase = 'finding the snapshot';
  const show = () => setCurrentDetails(details(input, progress, phase));
  setHandler(exportProgressQuery, () => [...progress.values()]);
  setHandler(exportProgressSignal, (p) => {
    const key = `${p.domain}/${p.target}`;
    if (!progress.has(key)) return;
    progress.set(key, p);
    show();
  });
  show();

  // Where the snapshot lives: every host's catalog.
  const inventory = await takeInventory(input.vms ? [...new Set(input.vms.map((v) => v.host))] : undefined);
  const listing = groupSnapshotsIn(inventory, input.group).find((l) => l.snapshotId === input.snapshotId);
  const vms = (listing?.vms ?? []).filter(
    (v) => !input.vms || input.vms.some((r) => r.domain === v.domain && r.host === v.host),
  );
  if (!listing || vms.length === 0) {
    const unreachable = inventory.unreachable.map((u) => u.host);
    throw failure(
      'badInput',
      `snapshot ${input.snapshotId} of group ${input.group} is on no reachable host` +
        (unreachable.length ? ` (not answering: ${unreachable.join(', ')})` : ''),
    );
  }
  if (inventory.unreachable.length > 0 && !input.vms) {
    throw failure(
      'hostUnreachable',
      `cannot export ${input.snapshotId}: host(s) ${inventory.unreachable.map((u) => u.host).join(', ')} did not answer`,
    );
  }

  for (const v of vms)
    for (const d of v.disks)
      progress.set(`${v.domain}/${d.target}`, {
        domain: v.domain,
        target: d.target,
        bytesDone: 0,
        bytesTotal: 0,
        bytesUploaded: 0,
      });
  phase = `exporting ${progress.size} disk(s) of ${vms.length} VM(s)`;
  show();

  // Disks, a bounded number at a time across the group.
  const reports = new Map<string, ExportDiskReport | { target: string; error: string }>();
  const queue = vms.flatMap((v) => v.disks.map((d) => ({ vm: v, target: d.target })));
  const limit = Math.max(1, input.parallelDisks ?? 4);
  let next = 0;
  let firstError: unknown;
  const lane = async () => {
    while (next < queue.length) {
      const { vm, target } = queue[next++];
      try {
        const r = await onHostExport(vm.host).disk.exportVmDisk.executeWithOptions(
          { summary: `export ${vm.domain}/${target} on ${vm.host}` },
          [
            {
              repository: input.repository,
              group: input.group,
              snapshotId: input.snapshotId,
              domain: vm.domain,
              target,
              ...(input.maxBytesPerSecond ? { maxBytesPerSecond: input.maxBytesPerSecond } : {}),
            },
          ],
        );
        reports.set(`${vm.domain}/${target}`, r);
        progress.set(`${vm.domain}/${target}`, {
          domain: vm.domain,
          target,
          bytesDone: r.stats.bytesRead,
          bytesTotal: r.stats.bytesRead,
          bytesUploaded: r.stats.bytesUploaded,
        });
        show();
      } catch (err) {
        firstError ??= err;
        reports.set(`${vm.domain}/${target}`, { target, error: errorMessage(err) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, queue.length) }, () => lane()));

  const result: ExportResult = {
    workflowId,
    group: input.group,
    snapshotId: input.snapshotId,
    repository: input.repository,
    status: 'failed',
    vms: vms.map((v) => ({
      domain: v.domain,
      host: v.host,
      disks: v.disks.map((d) => reports.get(`${v.domain}/${d.target}`) ?? { target: d.target, error: 'not exported' }),
    })),
    durationMs: 0,
  };
  const fail = (err: unknown): never => {
    result.error = errorMessage(err);
    result.durationMs = Date.now() - started;
    phase = `failed: ${result.error}`;
    show();
    log.warn('export failed', { group: input.group, snapshotId: input.snapshotId, error: result.error });
    throw failure('exportFailed', result.error, result);
  };
  if (firstError) fail(firstError);

  phase = 'writing manifests';
  show();
  try {
    const entries = await Promise.all(
      vms.map(async (v) => {
        const disks = v.disks.map((d) => reports.get(`${v.domain}/${d.target}`) as ExportDiskReport);
        const manifest = await onHostExport(v.host).manifest.writeVmManifest.executeWithOptions(
          { summary: `write manifest of ${v.domain} on ${v.host}` },
          [
            {
              repository: input.repository,
              group: input.group,
              snapshotId: input.snapshotId,
              domain: v.domain,
              disks: disks.map((r) => ({
                target: r.target,
                manifest: r.manifestKey,
                virtualSize: r.virtualSize,
                sourceFormat: r.sourceFormat,
                sourceImage: r.sourceImage,
                stats: r.stats,
              })),
            },
          ],
        );
        return {
          domain: v.domain,
          host: v.host,
          manifest,
          disks: disks.map((r) => ({ target: r.target, virtualSize: r.virtualSize })),
        };
      }),
    );
    const all = [...reports.values()] as ExportDiskReport[];
    const stats = sumStats(all);
    // The group manifest last, from the first VM's host (any host with the key would do).
    await onHostExport(vms[0].host).manifest.writeGroupManifest.executeWithOptions(
      { summary: `write group manifest of ${input.snapshotId}` },
      [
        {
          repository: input.repository,
          group: input.group,
          snapshotId: input.snapshotId,
          ...(listing.label !== undefined ? { label: listing.label } : {}),
          snapshotCreatedAt: listing.createdAt,
          vms: entries,
          stats,
        },
      ],
    );
    result.status = 'completed';
    result.durationMs = Date.now() - started;
    result.stats = { ...stats, dedupRatio: stats.chunksData / Math.max(1, stats.chunksNew) };
    recordExport(input.group, result);
    phase = `completed in ${(result.durationMs / 1000).toFixed(1)} s: ${gib(stats.bytesRead)} read, ${mib(stats.bytesUploaded)} uploaded`;
    show();
    return result;
  } catch (err) {
    return fail(err);
  }
}

/** Export metrics, through the workflow meter (emitted once per run, never on replay). */
function recordExport(group: string, result: ExportResult): void {
  metricMeter
    .createCounter(METRICS.exportBytesUploaded, 'bytes', 'bytes uploaded by exports')
    .add(result.stats?.bytesUploaded ?? 0, { group });
  metricMeter
    .createCounter(METRICS.exportBytesRead, 'bytes', 'bytes read from disk images by exports')
    .add(result.stats?.bytesRead ?? 0, { group });
  metricMeter
    .createHistogram(METRICS.exportDurationMs, 'float', 'ms', 'duration of completed exports')
    .record(result.durationMs, { group });
  metricMeter
    .createGauge(METRICS.exportDedupRatio, 'float', 'ratio', 'data chunks of the point over chunks uploaded new')
    .set(result.stats?.dedupRatio ?? 1, { group });
}

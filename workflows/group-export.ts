import {
  defineQuery,
  defineSignal,
  log,
  metricMeter,
  setCurrentDetails,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import {
  type DiskProgressReport,
  type ExportDiskReport,
  type ExportInput,
  type ExportResult,
} from '../common/backup-types';
import { sumStats } from '../common/repository-manifest';
import { groupSnapshotsIn, type GroupSnapshotListing } from '../common/groups';
import { METRICS } from '../common/metrics';
import { assertSafeName } from '../common/validation';
import { checked, errorMessage, BadInputError, failure } from '../common/failures';
import { onExportHost } from './activity-options';
import { takeInventory } from './inventory';

/** Live per-disk progress of the export (also shown as the workflow's current details). */
export const exportProgressQuery = defineQuery<DiskProgressReport[]>('exportProgress');
export const exportProgressSignal = defineSignal<[DiskProgressReport]>('exportProgress');

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

/** The state of one export: input, where the snapshot lives, per-disk progress and reports, the result. */
interface ExportRun {
  readonly input: ExportInput;
  readonly started: number;
  readonly progress: Map<string, DiskProgressReport>;
  phase: string;
  listing?: GroupSnapshotListing;
  vms: GroupSnapshotListing['vms'];
  readonly reports: Map<string, ExportDiskReport | { target: string; error: string }>;
  result?: ExportResult;
}

/**
 * Exports one group snapshot to a repository: one activity per disk on its VM's host (in parallel, bounded), then
 * each VM's manifest, then the group manifest, last, so a point is either complete or absent. Runs after the
 * group was resumed (never inside a freeze). The repository key stays on the hosts. Nothing is compensated: until
 * the group manifest is written the point does not exist, and the chunks already uploaded are shared (deduplicated)
 * data that a later export reuses.
 */
export async function exportGroupSnapshot(input: ExportInput): Promise<ExportResult> {
  checkExportInput(input);
  const run: ExportRun = { input, started: Date.now(), progress: new Map(), phase: '', vms: [], reports: new Map() };
  watchProgress(run);
  await findSnapshot(run);
  const firstError = await exportDisks(run);
  const result = exportResult(run);
  if (firstError) failExport(run, firstError);
  try {
    await writeManifests(run, result);
    return result;
  } catch (err) {
    return failExport(run, err);
  }
}

function checkExportInput(input: ExportInput): void {
  checked(() => {
    assertSafeName('group name', input.group);
    assertSafeName('snapshot id', input.snapshotId);
    if (typeof input.repository !== 'string' || !/^(s3|file):\/\//.test(input.repository)) {
      throw new BadInputError(`repository must be an s3:// or file:// URL, not ${JSON.stringify(input.repository)}`);
    }
  });
}

function show(run: ExportRun, phase?: string): void {
  if (phase !== undefined) run.phase = phase;
  setCurrentDetails(details(run.input, run.progress, run.phase));
}

/** The progress query and the hosts' progress signal (only disks of this export are taken). */
function watchProgress(run: ExportRun): void {
  run.phase = 'finding the snapshot';
  setHandler(exportProgressQuery, () => [...run.progress.values()]);
  setHandler(exportProgressSignal, (p) => {
    const key = `${p.domain}/${p.target}`;
    if (!run.progress.has(key)) return;
    run.progress.set(key, p);
    show(run);
  });
  show(run);
}

/** Where the snapshot lives: every host's catalog (all must answer unless the VMs are named). */
async function findSnapshot(run: ExportRun): Promise<void> {
  const { input } = run;
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
  run.listing = listing;
  run.vms = vms;
  for (const v of vms)
    for (const d of v.disks)
      run.progress.set(`${v.domain}/${d.target}`, {
        domain: v.domain,
        target: d.target,
        bytesDone: 0,
        bytesTotal: 0,
        bytesUploaded: 0,
      });
  show(run, `exporting ${run.progress.size} disk(s) of ${vms.length} VM(s)`);
}

/** Disks, a bounded number at a time across the group. Returns the first failure (every disk is still tried). */
async function exportDisks(run: ExportRun): Promise<unknown> {
  const { input, reports, progress } = run;
  const queue = run.vms.flatMap((v) => v.disks.map((d) => ({ vm: v, target: d.target })));
  const limit = Math.max(1, input.parallelDisks ?? 4);
  let next = 0;
  let firstError: unknown;
  const lane = async () => {
    while (next < queue.length) {
      const { vm, target } = queue[next++];
      try {
        const r = await onExportHost(vm.host).disk.exportVmDisk.executeWithOptions(
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
        show(run);
      } catch (err) {
        firstError ??= err;
        reports.set(`${vm.domain}/${target}`, { target, error: errorMessage(err) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, queue.length) }, () => lane()));
  return firstError;
}

function exportResult(run: ExportRun): ExportResult {
  const { input, reports } = run;
  run.result = {
    workflowId: workflowInfo().workflowId,
    group: input.group,
    snapshotId: input.snapshotId,
    repository: input.repository,
    status: 'failed',
    vms: run.vms.map((v) => ({
      domain: v.domain,
      host: v.host,
      disks: v.disks.map((d) => reports.get(`${v.domain}/${d.target}`) ?? { target: d.target, error: 'not exported' }),
    })),
    durationMs: 0,
  };
  return run.result;
}

function failExport(run: ExportRun, err: unknown): never {
  const result = run.result!;
  result.error = errorMessage(err);
  result.durationMs = Date.now() - run.started;
  show(run, `failed: ${result.error}`);
  log.warn('export failed', { group: run.input.group, snapshotId: run.input.snapshotId, error: result.error });
  throw failure('exportFailed', result.error, result);
}

/** Each VM's manifest (in parallel, on its host), then the group manifest last: the point now exists. */
async function writeManifests(run: ExportRun, result: ExportResult): Promise<void> {
  const { input, reports, vms } = run;
  const listing = run.listing!;
  show(run, 'writing manifests');
  const entries = await Promise.all(
    vms.map(async (v) => {
      const disks = v.disks.map((d) => reports.get(`${v.domain}/${d.target}`) as ExportDiskReport);
      const manifest = await onExportHost(v.host).manifest.writeVmManifest.executeWithOptions(
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
      const sizes = disks.map((r) => ({ target: r.target, virtualSize: r.virtualSize }));
      return { domain: v.domain, host: v.host, manifest, disks: sizes };
    }),
  );
  const stats = sumStats([...reports.values()] as ExportDiskReport[]);
  // The group manifest last, from the first VM's host (any host with the key would do).
  await onExportHost(vms[0].host).manifest.writeGroupManifest.executeWithOptions(
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
  result.durationMs = Date.now() - run.started;
  result.stats = { ...stats, dedupRatio: stats.chunksData / Math.max(1, stats.chunksNew) };
  recordExport(input.group, result);
  show(
    run,
    `completed in ${(result.durationMs / 1000).toFixed(1)} s: ${gib(stats.bytesRead)} read, ${mib(stats.bytesUploaded)} uploaded`,
  );
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

/**
 * One disk's export on its host: reads the frozen chain under a hold (so a deletion does not merge it meanwhile) and
 * the repository's export lock, stores its chunks (backup/export-disk.ts), heartbeats from the first step on,
 * signals live progress to the export workflow, and checkpoints in the state dir so a retry goes on where it stopped.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Context } from '@temporalio/activity';
import { exportDisk, type ExportDiskResult } from '../../backup/export-disk';
import { imageChain } from '../../backup/image-reader';
import { RepositoryLock } from '../../backup/locks';
import type { Repository } from '../../backup/repository';
import type { DiskProgressReport, ExportDiskReport, ExportDiskRequest } from '../../common/backup-types';
import { failure } from '../../common/failures';
import { ExportHold } from '../export-hold';
import { asFailure, openRepo, type ExportContext } from './context';
import { findBase, snapshotRecord } from './snapshot';

/** Signal through which disk activities report live progress to the export workflow. */
export const EXPORT_PROGRESS_SIGNAL = 'exportProgress';

/** The running activity's context, or undefined outside an activity (a direct call). */
function activityContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

/**
 * An export's heartbeats: one now and every second until `stop()` (the lock, the repository's listings and the
 * chain's reading can take longer than the heartbeat timeout), each with the latest details; each keeps the export's
 * hold fresh once it has one.
 */
export class KeepAlive {
  /** The export's hold, refreshed with each beat. */
  hold?: ExportHold;
  private details: unknown = { phase: 'starting' };
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly actx: Context | undefined) {
    this.beat();
    this.timer = setInterval(() => this.beat(), 1000);
  }

  /** Heartbeats now, with `details` when given (else the last ones). */
  beat(details?: unknown): void {
    if (details !== undefined) this.details = details;
    this.actx?.heartbeat(this.details);
    this.hold?.refresh();
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/**
 * Live progress to the export workflow: the latest report, signalled every `everyMs` while started and once more at
 * the end, never the same twice; best effort (no client: a test's mock context).
 */
export class ProgressSignals {
  private latest?: DiskProgressReport;
  private sent?: string;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly actx: Context | undefined,
    private readonly everyMs: number,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.send(), this.everyMs);
  }

  note(report: DiskProgressReport): void {
    this.latest = report;
  }

  /** Stops the timer and signals the latest report (if not sent yet). */
  async finish(): Promise<void> {
    this.stop();
    await this.send();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async send(): Promise<void> {
    const wf = this.actx?.info.workflowExecution;
    const { actx, latest } = this;
    if (!latest || !wf || !actx) return;
    const text = JSON.stringify(latest);
    if (text === this.sent) return;
    this.sent = text;
    await Promise.resolve()
      .then(() => actx.client.workflow.getHandle(wf.workflowId, wf.runId).signal(EXPORT_PROGRESS_SIGNAL, latest))
      .catch(() => undefined);
  }
}

/** Exports one disk of one VM at one snapshot; safe to retry (resumes from its checkpoint). */
export async function exportVmDisk(ctx: ExportContext, req: ExportDiskRequest): Promise<ExportDiskReport> {
  const actx = activityContext();
  // Heartbeats from the first step on, and every second until the end; the hold is kept fresh with them.
  const beats = new KeepAlive(actx);
  let opened: Awaited<ReturnType<typeof openExport>>;
  try {
    opened = await openExport(ctx, req);
  } catch (err) {
    beats.stop();
    throw err;
  }
  const { snap, meta, disk, repo } = opened;
  let lock: RepositoryLock | undefined;
  const signals = new ProgressSignals(actx, ctx.progressSignalMs);
  try {
    beats.beat({ phase: 'reading the chain' });
    const chain = await imageChain(disk.image);
    beats.hold = takeHold(ctx, actx, req, chain.files);
    // A deletion may have marked the snapshot before this hold existed: it merges once it sees no hold, so the
    // export gives up (releasing its hold, in finally) rather than read layers being merged.
    await snapshotRecord(ctx, req.domain, req.snapshotId);
    beats.beat({ phase: 'locking the repository' });
    lock = await RepositoryLock.acquire(repo, 'export', ctx.hostId);
    // A lost lock (refresh failed, taken over as stale) stops the export before its next write.
    repo.useLock(lock);
    beats.beat({ phase: 'finding the base' });
    const base = await findBase(ctx, repo, req, meta, snap.createdAt, chain.files, () => beats.beat());
    const sourceFormat =
      (await ctx.hypervisor.describe(req.domain).catch(() => undefined))?.disks.find((d) => d.target === req.target)
        ?.format ?? chain.formats[0];
    const checkpointFile = checkpointFileOf(ctx, repo, req);
    // Live progress: heartbeats (throttled by the SDK) and, every few seconds, a signal to the workflow.
    signals.start();
    const result = await exportDisk({
      repo,
      names: { group: req.group, snapshotId: req.snapshotId, domain: req.domain, target: req.target },
      image: disk.image,
      format: chain.formats[0],
      sourceFormat,
      ...(base ? { base } : {}),
      checkpointFile,
      ...(req.maxBytesPerSecond ? { maxBytesPerSecond: req.maxBytesPerSecond } : {}),
      signal: actx ? AbortSignal.any([actx.cancellationSignal, lock.signal]) : lock.signal,
      onListing: () => beats.beat(),
      onProgress: (p) => {
        signals.note({
          domain: req.domain,
          target: req.target,
          bytesDone: p.bytesDone,
          bytesTotal: p.bytesTotal,
          bytesUploaded: p.bytesUploaded,
        });
        beats.beat(p);
      },
    });
    await signals.finish();
    logExported(ctx, req, result);
    return diskReport(req, result);
  } catch (err) {
    throw asFailure(err);
  } finally {
    beats.stop();
    signals.stop();
    beats.hold?.release();
    await lock?.release().catch(() => undefined);
    repo.close();
  }
}

/**
 * The snapshot's record of the disk and the opened repository.
 * @throws BAD_INPUT when the VM, the snapshot or its disk is not on this host (see {@link snapshotRecord})
 */
async function openExport(ctx: ExportContext, req: ExportDiskRequest) {
  const { snap, meta } = await snapshotRecord(ctx, req.domain, req.snapshotId);
  const disk = snap.disks.find((d) => d.target === req.target);
  if (!disk) throw failure('badInput', `snapshot ${req.snapshotId} of ${req.domain} has no disk ${req.target}`);
  const repo = await openRepo(ctx, req.repository);
  return { snap, meta, disk, repo };
}

/** Takes this attempt's hold on the chain's files (one holder per workflow run, activity and attempt). */
function takeHold(ctx: ExportContext, actx: Context | undefined, req: ExportDiskRequest, files: string[]): ExportHold {
  const info = actx?.info;
  return ExportHold.take(ctx.stateDir, {
    domain: req.domain,
    snapshotId: req.snapshotId,
    target: req.target,
    repository: req.repository,
    holder: info?.workflowExecution
      ? `${info.workflowExecution.workflowId}/${info.workflowExecution.runId}/${info.activityId}/${info.attempt}`
      : randomUUID(),
    files,
  });
}

/** The checkpoint file of this disk's export into this repository (made the dir if missing). */
function checkpointFileOf(ctx: ExportContext, repo: Repository, req: ExportDiskRequest): string {
  mkdirSync(ctx.checkpointDir, { recursive: true });
  return join(
    ctx.checkpointDir,
    createHash('sha256')
      .update(JSON.stringify([req.repository, repo.config.id, req.group, req.snapshotId, req.domain, req.target]))
      .digest('hex')
      .slice(0, 32) + '.json',
  );
}

function logExported(ctx: ExportContext, req: ExportDiskRequest, result: ExportDiskResult): void {
  ctx.log('disk exported', {
    hostId: ctx.hostId,
    domain: req.domain,
    target: req.target,
    snapshotId: req.snapshotId,
    mode: result.manifest.stats.mode,
    bytesRead: result.manifest.stats.bytesRead,
    bytesNew: result.manifest.stats.bytesNew,
    chunksResumed: result.chunksResumed,
  });
}

/** The activity's answer for a stored disk. */
function diskReport(req: ExportDiskRequest, result: ExportDiskResult): ExportDiskReport {
  return {
    domain: req.domain,
    target: req.target,
    manifestKey: result.manifestKey,
    virtualSize: result.manifest.virtualSize,
    sourceFormat: result.manifest.sourceFormat,
    sourceImage: result.manifest.sourceImage,
    stats: result.manifest.stats,
    chunksResumed: result.chunksResumed,
  };
}

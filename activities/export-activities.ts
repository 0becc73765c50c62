import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Context } from '@temporalio/activity';
import { readKeyFile } from '../backup/crypto';
import { PERMANENT_REPOSITORY_ERRORS, RepositoryError } from '../backup/errors';
import { exportDisk, type ExportBase } from '../backup/export-disk';
import { imageChain } from '../backup/image-reader';
import { RepositoryLock } from '../backup/locks';
import { FORMAT_VERSION, type DiskManifest } from '../backup/manifest';
import { Repository, type OpenOptions } from '../backup/repository';
import {
  REPO_KEY_FILE_ENV,
  type DiskProgressReport,
  type ExportDiskReport,
  type ExportDiskRequest,
  type WriteGroupManifestRequest,
  type WriteVmManifestRequest,
} from '../common/backup-types';
import { failure, failureOfType } from '../common/failures';
import { DomainNotFoundError } from '../hypervisor/errors';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { manifestPath, parseVmMetadata } from '../common/catalog';
import { ExportHold, registerExportHoldDir } from './export-hold';

export interface ExportActivityDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** The host's state dir: export checkpoints and holds live under it. */
  stateDir: string;
  /** The repository key file; default `GROUPSNAP_REPO_KEY_FILE` read when an export runs. */
  keyFile?: string;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** How often live progress is signalled to the export workflow. @default 5000 */
  progressSignalMs?: number;
  /** Options of every repository the activities open (tests: a wrapped store). */
  repositoryOptions?: OpenOptions;
}

/** Signal through which disk activities report live progress to the export workflow. */
export const EXPORT_PROGRESS_SIGNAL = 'exportProgress';

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Repository errors a retry cannot fix become non-retryable failures of the same type; the rest stay retryable. */
function asFailure(err: unknown): unknown {
  if (err instanceof RepositoryError && (PERMANENT_REPOSITORY_ERRORS as readonly string[]).includes(err.name)) {
    return failureOfType(err.name, err.message, 'badInput');
  }
  return err;
}

function activityContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

/**
 * The host side of exports: one activity per disk (reads the frozen chain, stores chunks, heartbeats its progress
 * and checkpoints it in the state dir so a retry after a crash goes on where it stopped), then the VM's manifest,
 * then the group's. The repository key is read from the host's key file when needed, never passed in or logged.
 */
export function createExportActivities(deps: ExportActivityDeps) {
  const { hypervisor, hostId, stateDir } = deps;
  const log = deps.log ?? (() => {});
  registerExportHoldDir(hostId, stateDir);
  const checkpointDir = join(stateDir, 'export-checkpoints');

  function key(): Buffer {
    const file = deps.keyFile ?? process.env[REPO_KEY_FILE_ENV];
    if (!file) {
      throw failure(
        'repoKeyMissing',
        `host ${hostId} has no repository key: start its worker with ${REPO_KEY_FILE_ENV}=<key file> (or --repo-key-file)`,
      );
    }
    return readKeyFile(file);
  }

  async function openRepo(url: string): Promise<Repository> {
    try {
      return await Repository.open(url, key(), deps.repositoryOptions);
    } catch (err) {
      throw asFailure(err);
    }
  }

  async function snapshotRecord(domain: string, snapshotId: string) {
    let xml: string | undefined;
    try {
      xml = await hypervisor.getMetadata(domain);
    } catch (err) {
      if (err instanceof DomainNotFoundError) {
        throw failure('badInput', `VM ${domain} not found on host ${hostId}`);
      }
      throw err;
    }
    const meta = parseVmMetadata(xml);
    const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
    if (!snap || snap.deleting) {
      throw failure(
        'badInput',
        `snapshot ${snapshotId} of ${domain} ${snap ? 'is being deleted' : 'does not exist'} on host ${hostId}`,
      );
    }
    return { meta, snap };
  }

  /**
   * The VM's definition at the point: the one its catalog recorded beside its images when the snapshot was taken;
   * the current one for points catalogued before definitions were recorded.
   */
  async function pointDomainXml(domain: string, snapshotId: string): Promise<string> {
    const { snap } = await snapshotRecord(domain, snapshotId);
    if (snap.disks.length > 0) {
      try {
        const doc = JSON.parse(readFileSync(manifestPath(dirname(snap.disks[0].image), domain, snapshotId), 'utf8'));
        if (typeof doc?.domainXml === 'string' && doc.domainXml.length > 0) return doc.domainXml as string;
      } catch {
        // no manifest (removed, or an older point): the current definition
      }
    }
    log('the point has no recorded definition: exporting the current one', { domain, snapshotId });
    return hypervisor.domainXml(domain);
  }

  /**
   * The newest earlier point of this disk in the repository whose layer is still below `chain[0]`. Found from the
   * host's catalog (the earlier snapshots of this VM, newest first), each looked up in the repository by name: no
   * listing of the repository's points, whatever their number.
   */
  async function findBase(
    repo: Repository,
    req: ExportDiskRequest,
    meta: ReturnType<typeof parseVmMetadata>,
    createdAt: string,
    chain: string[],
    beat: () => void,
  ): Promise<ExportBase | undefined> {
    const candidates = meta.snapshots
      .filter((s) => s.snapshotId !== req.snapshotId && !s.deleting && s.createdAt <= createdAt)
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.snapshotId.localeCompare(a.snapshotId));
    for (const s of candidates) {
      const image = s.disks.find((d) => d.target === req.target)?.image;
      if (!image || !chain.slice(1).includes(image)) continue;
      beat();
      try {
        if (!(await repo.hasPoint(req.group, s.snapshotId))) continue;
        const manifest = await repo.readDiskManifest(req.group, s.snapshotId, req.domain, req.target);
        return { snapshotId: s.snapshotId, image, manifest };
      } catch (err) {
        log('export base unreadable, trying an older one', { snapshotId: s.snapshotId, error: message(err) });
      }
    }
    return undefined;
  }

  return {
    /** Exports one disk of one VM at one snapshot; safe to retry (resumes from its checkpoint). */
    async exportVmDisk(req: ExportDiskRequest): Promise<ExportDiskReport> {
      const ctx = activityContext();
      // Heartbeats from the first step on, and every second until the end (the lock, the repository's listings and
      // the chain's reading can take longer than the heartbeat timeout); the hold is kept fresh with them.
      let details: unknown = { phase: 'starting' };
      let hold: ExportHold | undefined;
      const beat = (d?: unknown) => {
        if (d !== undefined) details = d;
        ctx?.heartbeat(details);
        hold?.refresh();
      };
      beat();
      const keepAlive = setInterval(() => beat(), 1000);
      const { snap, meta } = await snapshotRecord(req.domain, req.snapshotId).catch((err: unknown) => {
        clearInterval(keepAlive);
        throw err;
      });
      const disk = snap.disks.find((d) => d.target === req.target);
      if (!disk) {
        clearInterval(keepAlive);
        throw failure('badInput', `snapshot ${req.snapshotId} of ${req.domain} has no disk ${req.target}`);
      }
      const repo = await openRepo(req.repository).catch((err: unknown) => {
        clearInterval(keepAlive);
        throw err;
      });
      let lock: RepositoryLock | undefined;
      let signalTimer: NodeJS.Timeout | undefined;
      try {
        beat({ phase: 'reading the chain' });
        const chain = await imageChain(disk.image);
        const info = ctx?.info;
        hold = ExportHold.take(stateDir, {
          domain: req.domain,
          snapshotId: req.snapshotId,
          target: req.target,
          repository: req.repository,
          holder: info?.workflowExecution
            ? `${info.workflowExecution.workflowId}/${info.workflowExecution.runId}/${info.activityId}/${info.attempt}`
            : randomUUID(),
          files: chain.files,
        });
        // A deletion may have marked the snapshot before this hold existed: it merges once it sees no hold, so the
        // export gives up (releasing its hold, in finally) rather than read layers being merged.
        await snapshotRecord(req.domain, req.snapshotId);
        beat({ phase: 'locking the repository' });
        lock = await RepositoryLock.acquire(repo, 'export', hostId);
        // A lost lock (refresh failed, taken over as stale) stops the export before its next write.
        repo.useLock(lock);
        beat({ phase: 'finding the base' });
        const base = await findBase(repo, req, meta, snap.createdAt, chain.files, () => beat());
        const sourceFormat =
          (await hypervisor.describe(req.domain).catch(() => undefined))?.disks.find((d) => d.target === req.target)
            ?.format ?? chain.formats[0];
        mkdirSync(checkpointDir, { recursive: true });
        const checkpointFile = join(
          checkpointDir,
          createHash('sha256')
            .update(JSON.stringify([req.repository, repo.config.id, req.group, req.snapshotId, req.domain, req.target]))
            .digest('hex')
            .slice(0, 32) + '.json',
        );

        // Live progress: heartbeats (throttled by the SDK) and, every few seconds, a signal to the workflow.
        let latest: DiskProgressReport | undefined;
        let sent: string | undefined;
        const wf = ctx?.info.workflowExecution;
        const sendProgress = async () => {
          if (!latest || !wf || !ctx) return;
          const text = JSON.stringify(latest);
          if (text === sent) return;
          sent = text;
          // Best effort (no client: a test's mock context).
          await Promise.resolve()
            .then(() => ctx.client.workflow.getHandle(wf.workflowId, wf.runId).signal(EXPORT_PROGRESS_SIGNAL, latest))
            .catch(() => undefined);
        };
        signalTimer = setInterval(() => void sendProgress(), deps.progressSignalMs ?? 5000);
        const result = await exportDisk({
          repo,
          names: { group: req.group, snapshotId: req.snapshotId, domain: req.domain, target: req.target },
          image: disk.image,
          format: chain.formats[0],
          sourceFormat,
          ...(base ? { base } : {}),
          checkpointFile,
          ...(req.maxBytesPerSecond ? { maxBytesPerSecond: req.maxBytesPerSecond } : {}),
          signal: ctx ? AbortSignal.any([ctx.cancellationSignal, lock.signal]) : lock.signal,
          onListing: () => beat(),
          onProgress: (p) => {
            latest = {
              domain: req.domain,
              target: req.target,
              bytesDone: p.bytesDone,
              bytesTotal: p.bytesTotal,
              bytesUploaded: p.bytesUploaded,
            };
            beat(p);
          },
        });
        clearInterval(signalTimer);
        signalTimer = undefined;
        await sendProgress();
        log('disk exported', {
          hostId,
          domain: req.domain,
          target: req.target,
          snapshotId: req.snapshotId,
          mode: result.manifest.stats.mode,
          bytesRead: result.manifest.stats.bytesRead,
          bytesNew: result.manifest.stats.bytesNew,
          chunksResumed: result.chunksResumed,
        });
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
      } catch (err) {
        throw asFailure(err);
      } finally {
        clearInterval(keepAlive);
        if (signalTimer) clearInterval(signalTimer);
        hold?.release();
        await lock?.release().catch(() => undefined);
        repo.close();
      }
    },

    /** Writes a VM's manifest (its domain XML and disks) after all its disks are exported. Returns its key. */
    async writeVmManifest(req: WriteVmManifestRequest): Promise<string> {
      const repo = await openRepo(req.repository);
      try {
        const domainXml = await pointDomainXml(req.domain, req.snapshotId);
        return await repo.writeVmManifest({
          version: FORMAT_VERSION,
          group: req.group,
          snapshotId: req.snapshotId,
          domain: req.domain,
          host: hostId,
          domainXml,
          disks: req.disks,
        });
      } catch (err) {
        if (err instanceof DomainNotFoundError) {
          throw failure('badInput', `VM ${req.domain} not found on host ${hostId}`);
        }
        throw asFailure(err);
      } finally {
        repo.close();
      }
    },

    /** Writes the group manifest: the point exists from now on. Checks first that every manifest it names exists. */
    async writeGroupManifest(req: WriteGroupManifestRequest): Promise<string> {
      const repo = await openRepo(req.repository);
      try {
        for (const v of req.vms) {
          const vm = await repo.readManifestAt<import('../backup/manifest').VmManifest>(v.manifest);
          for (const d of vm.disks) await repo.readManifestAt<DiskManifest>(d.manifest);
        }
        return await repo.writeGroupManifest({
          version: FORMAT_VERSION,
          group: req.group,
          snapshotId: req.snapshotId,
          ...(req.label !== undefined ? { label: req.label } : {}),
          snapshotCreatedAt: req.snapshotCreatedAt,
          exportedAt: new Date().toISOString(),
          vms: req.vms,
          stats: req.stats,
        });
      } catch (err) {
        throw asFailure(err);
      } finally {
        repo.close();
      }
    },
  };
}

export type ExportActivities = ReturnType<typeof createExportActivities>;

import { normalizeRetention, planRetention, type RetentionPolicy } from '../common/retention';
import { DamagedObjectError } from './errors';
import { RepositoryBusyError, RepositoryLock } from './locks';
import type { DiskManifest } from './manifest';
import { KEYS, Repository } from './repository';

export interface PruneOptions {
  /** Off-host retention (keep-last and/or GFS, as `planRetention`); none: delete no point, only sweep. */
  policy?: RetentionPolicy;
  /** Apply the policy to one group only. */
  group?: string;
  /** Time zone of the GFS periods. @default 'UTC' */
  timezone?: string;
  /** Report what would be deleted without deleting anything. */
  dryRun?: boolean;
  /**
   * Objects of a point without a group manifest (an interrupted export) older than this are removed.
   * @default 24 h
   */
  incompleteAfterMs?: number;
  /** How long to wait for running exports before giving up the sweep (points are still deleted). @default 0 */
  waitMs?: number;
  /** Lock staleness (tests). */
  lockStaleMs?: number;
}

export interface PruneResult {
  dryRun: boolean;
  groups: { group: string; kept: { snapshotId: string; reasons: string[] }[]; deleted: string[] }[];
  incompleteRemoved: number;
  sweep:
    { done: true; chunksBefore: number; chunksDeleted: number; bytesFreed: number } | { done: false; reason: string };
}

/**
 * Off-host retention: deletes the points `policy` does not keep (group manifest first, so each point vanishes at
 * once), then sweeps the chunks no manifest names any more. The sweep holds the repository's exclusive lock, so
 * it never runs while an export does (an export's new chunks are not yet named by any manifest).
 */
export async function pruneRepository(repo: Repository, opts: PruneOptions = {}): Promise<PruneResult> {
  const policy = opts.policy ? normalizeRetention(opts.policy) : undefined;
  const result: PruneResult = {
    dryRun: Boolean(opts.dryRun),
    groups: [],
    incompleteRemoved: 0,
    sweep: { done: false, reason: 'dry run' },
  };

  const points = await repo.listPoints(opts.group ? { group: opts.group } : {});
  const byGroup = new Map<string, typeof points>();
  for (const p of points) byGroup.set(p.group, [...(byGroup.get(p.group) ?? []), p]);
  for (const [group, list] of byGroup) {
    if (!policy || Object.keys(policy).length === 0) {
      result.groups.push({
        group,
        kept: list.map((p) => ({ snapshotId: p.snapshotId, reasons: ['no policy'] })),
        deleted: [],
      });
      continue;
    }
    const plan = planRetention(
      list.map((p) => ({ snapshotId: p.snapshotId, createdAt: p.snapshotCreatedAt })),
      policy,
      opts.timezone ? { timezone: opts.timezone } : undefined,
    );
    if (!opts.dryRun) for (const id of plan.remove) await repo.deletePoint(group, id);
    result.groups.push({ group, kept: plan.keep, deleted: plan.remove });
  }
  if (opts.dryRun) return result;

  let lock: RepositoryLock | undefined;
  const deadline = Date.now() + (opts.waitMs ?? 0);
  for (;;) {
    try {
      lock = await RepositoryLock.acquire(
        repo,
        'prune',
        undefined,
        opts.lockStaleMs ? { staleMs: opts.lockStaleMs } : {},
      );
      break;
    } catch (err) {
      if (!(err instanceof RepositoryBusyError)) throw err;
      if (Date.now() >= deadline) {
        result.sweep = { done: false, reason: err.message };
        return result;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  try {
    // Every disk manifest in the store names live chunks: complete points', and those of exports in progress.
    const referenced = new Set<string>();
    const incompleteAfter = opts.incompleteAfterMs ?? 24 * 3600_000;
    const prefixes = new Map<string, { complete: boolean; newest: number; keys: string[] }>();
    for await (const o of repo.store.list(KEYS.pointsPrefix)) {
      const parts = o.key.split('/');
      const prefix = parts.slice(0, 3).join('/') + '/';
      const entry = prefixes.get(prefix) ?? { complete: false, newest: 0, keys: [] };
      entry.keys.push(o.key);
      entry.newest = Math.max(entry.newest, o.lastModified.getTime());
      if (o.key.endsWith('/group')) entry.complete = true;
      prefixes.set(prefix, entry);
    }
    for (const [, entry] of prefixes) {
      if (!entry.complete && Date.now() - entry.newest > incompleteAfter) {
        for (const k of entry.keys) await repo.store.delete(k);
        result.incompleteRemoved++;
        continue;
      }
      for (const key of entry.keys) {
        if (!key.includes('/disks/')) continue;
        try {
          const disk = await repo.readManifestAt<DiskManifest>(key);
          for (const id of disk.chunks) if (id !== null) referenced.add(id);
        } catch (err) {
          // A damaged manifest names nothing we can read; its chunks go (verify reports the point).
          if (!(err instanceof DamagedObjectError)) throw err;
        }
      }
    }
    let chunksBefore = 0;
    let chunksDeleted = 0;
    let bytesFreed = 0;
    const kept: string[] = [];
    const unreferenced: { key: string; id: string; size: number }[] = [];
    for await (const o of repo.store.list(KEYS.chunksPrefix)) {
      chunksBefore++;
      const id = o.key.slice(o.key.lastIndexOf('/') + 1);
      if (referenced.has(id)) kept.push(id);
      else unreferenced.push({ key: o.key, id, size: o.size });
    }
    // The chunk index (docs/repository-format.md) must never name a deleted chunk, or an export would dedup against
    // it: rewritten to the kept chunks before any is deleted (a crash in between only leaves chunks unindexed).
    await repo.rewriteChunkIndex(kept);
    for (const c of unreferenced) {
      await repo.store.delete(c.key);
      repo.forgetChunk(c.id);
      chunksDeleted++;
      bytesFreed += c.size;
    }
    result.sweep = { done: true, chunksBefore, chunksDeleted, bytesFreed };
  } finally {
    await lock.release();
  }
  return result;
}

export { Repository };

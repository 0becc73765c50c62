import { normalizeRetention, planRetention, type RetentionPolicy } from '../common/retention';
import { DamagedObjectError, ObjectLockedError } from './errors';
import { RepositoryBusyError, RepositoryLock } from './locks';
import type { DiskManifest, VmManifest } from './manifest';
import { KEYS, Repository, sealedKindOf } from './repository';

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

/** A point (or objects) the policy removes that cannot be removed yet: their Object Lock holds until `until`. */
export interface HeldPoint {
  group: string;
  snapshotId: string;
  /** ISO 8601; when prune can remove it. */
  until: string;
}

export interface PruneResult {
  dryRun: boolean;
  groups: { group: string; kept: { snapshotId: string; reasons: string[] }[]; deleted: string[] }[];
  /** Object Lock: points the policy removes whose lock has not lapsed (kept, with when they can go). */
  held: HeldPoint[];
  incompleteRemoved: number;
  /** Points whose group manifest cannot be read: neither kept nor deleted by the policy, and no sweep runs. */
  damaged: { snapshotId: string; manifest: string; detail: string }[];
  sweep:
    | {
        done: true;
        chunksBefore: number;
        chunksDeleted: number;
        bytesFreed: number;
        /** Object Lock: unreferenced chunks still locked (kept), and until when the last of them is. */
        chunksHeld?: number;
        heldUntil?: string;
      }
    /** `damage`: refused because a manifest cannot be read (the CLI exits 1). */
    | { done: false; reason: string; damage?: boolean };
}

/**
 * Off-host retention: deletes the points `policy` does not keep (group manifest first, so each point vanishes at
 * once), then sweeps the chunks no manifest names any more. Everything but a dry run happens under the
 * repository's exclusive lock, taken before anything is deleted: never while an export writes (its new chunks are
 * not yet named by any manifest) or a restore, drill or verify reads (its point must not vanish under it). When
 * any manifest cannot be read, nothing is swept (its chunks may be live) and the result says why.
 */
export async function pruneRepository(repo: Repository, opts: PruneOptions = {}): Promise<PruneResult> {
  const policy = opts.policy ? normalizeRetention(opts.policy) : undefined;
  const result: PruneResult = {
    dryRun: Boolean(opts.dryRun),
    groups: [],
    held: [],
    incompleteRemoved: 0,
    damaged: [],
    sweep: { done: false, reason: 'dry run' },
  };

  let lock: RepositoryLock | undefined;
  if (!opts.dryRun) {
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
          result.sweep = { done: false, reason: `nothing deleted: ${err.message}` };
          return result;
        }
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    repo.useLock(lock);
  }
  try {
    // Object Lock: what the chunk index knows of chunks' locks (the sweep skips those still locked, and the
    // rewritten index keeps their dates).
    if (repo.objectLock && !opts.dryRun) await repo.loadChunkIndex();
    await applyPolicy(repo, policy, opts, result);
    if (opts.dryRun || !lock) return result;
    await sweep(repo, lock, opts, result);
  } finally {
    repo.useLock(undefined);
    await lock?.release();
  }
  return result;
}

/** Deletes the points the policy does not keep (not in a dry run), group by group. */
async function applyPolicy(
  repo: Repository,
  policy: RetentionPolicy | undefined,
  opts: PruneOptions,
  result: PruneResult,
): Promise<void> {
  const { points, damaged } = await repo.listPointsReport(opts.group ? { group: opts.group } : {});
  result.damaged = damaged.map((d) => ({ snapshotId: d.snapshotId, manifest: d.manifest, detail: d.detail }));
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
    const deleted: string[] = [];
    for (const id of plan.remove) {
      const point = list.find((p) => p.snapshotId === id);
      const until = point?.retainUntil ? Date.parse(point.retainUntil) : 0;
      // Object Lock: a point is removed only once its lock has lapsed; until then it is kept and said so.
      if (until > repo.now()) {
        result.held.push({ group, snapshotId: id, until: new Date(until).toISOString() });
        continue;
      }
      if (!opts.dryRun) {
        try {
          await repo.deletePoint(group, id);
        } catch (err) {
          if (!(err instanceof ObjectLockedError)) throw err;
          const held = await repo.locking.retention(err.key).catch(() => undefined);
          result.held.push({ group, snapshotId: id, until: (held?.until ?? new Date(repo.now())).toISOString() });
          continue;
        }
      }
      deleted.push(id);
    }
    result.groups.push({ group, kept: plan.keep, deleted });
  }
}

/** Removes old incomplete points, then every chunk no manifest names (only when every manifest could be read). */
async function sweep(repo: Repository, lock: RepositoryLock, opts: PruneOptions, result: PruneResult): Promise<void> {
  // Every disk manifest in the store names live chunks: complete points', and those of exports in progress.
  const referenced = new Set<string>();
  const unreadable: string[] = result.damaged.map((d) => `${d.manifest} (${d.detail})`);
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
      try {
        for (const k of entry.keys) {
          lock.assertHeld();
          await repo.purge(k);
        }
        result.incompleteRemoved++;
        continue;
      } catch (err) {
        // Object Lock: an interrupted export's manifests stay until their lock lapses (and still name chunks).
        if (!(err instanceof ObjectLockedError)) throw err;
      }
    }
    for (const key of entry.keys) {
      const kind = sealedKindOf(key);
      if (kind !== 'disk' && kind !== 'vm') continue;
      try {
        const m = await repo.readManifestAt<DiskManifest | VmManifest>(key);
        if (kind === 'disk') for (const id of (m as DiskManifest).chunks) if (id !== null) referenced.add(id);
      } catch (err) {
        // A manifest that cannot be read may name live chunks: no sweep at all (repo verify locates it).
        if (!(err instanceof DamagedObjectError)) throw err;
        unreadable.push(`${key} (${err.message})`);
      }
    }
  }
  if (unreadable.length > 0) {
    result.sweep = {
      done: false,
      damage: true,
      reason:
        `${unreadable.length} manifest(s) cannot be read, so chunks they may name could be live: no chunk swept ` +
        `(run 'groupsnap repo verify' to locate the damage, then delete or repair those points): ` +
        unreadable.slice(0, 5).join('; ') +
        (unreadable.length > 5 ? '; ...' : ''),
    };
    return;
  }
  if (repo.objectLock) {
    await sweepLockedChunks(repo, lock, referenced, result);
    return;
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
  lock.assertHeld();
  await repo.rewriteChunkIndex(kept);
  for (const c of unreferenced) {
    lock.assertHeld();
    await repo.store.delete(c.key);
    repo.forgetChunk(c.id);
    chunksDeleted++;
    bytesFreed += c.size;
  }
  result.sweep = { done: true, chunksBefore, chunksDeleted, bytesFreed };
}

/**
 * The chunk sweep of a repository with Object Lock: every version of each unreferenced chunk is deleted (a plain
 * delete would only hide it behind a delete marker), except while its lock holds: those chunks are kept and counted,
 * with the date the last of them can go. The index is rewritten first, as without Object Lock.
 */
async function sweepLockedChunks(
  repo: Repository,
  lock: RepositoryLock,
  referenced: Set<string>,
  result: PruneResult,
): Promise<void> {
  const versions = new Map<string, { versionId: string; size: number; current: boolean }[]>();
  for await (const v of repo.locking.listVersions(KEYS.chunksPrefix)) {
    versions.set(v.key, [
      ...(versions.get(v.key) ?? []),
      { versionId: v.versionId, size: v.size, current: v.latest && !v.deleteMarker },
    ]);
  }
  const idOf = (key: string) => key.slice(key.lastIndexOf('/') + 1);
  const kept = [...versions.keys()].map(idOf).filter((id) => referenced.has(id));
  lock.assertHeld();
  await repo.rewriteChunkIndex(kept);
  let chunksDeleted = 0;
  let bytesFreed = 0;
  let chunksHeld = 0;
  let heldUntil = 0;
  const now = repo.now();
  for (const [key, list] of versions) {
    const id = idOf(key);
    if (referenced.has(id)) continue;
    const known = repo.chunkRetainedUntil(id);
    let until = known > now ? known : 0;
    let freed = 0;
    for (const v of until ? [] : list) {
      lock.assertHeld();
      try {
        await repo.locking.deleteVersion(key, v.versionId);
        freed += v.size;
      } catch (err) {
        if (!(err instanceof ObjectLockedError)) throw err;
        const held = await repo.locking.retention(key, v.versionId).catch(() => undefined);
        until = Math.max(until, held?.until.getTime() ?? now);
      }
    }
    bytesFreed += freed;
    if (until) {
      chunksHeld++;
      heldUntil = Math.max(heldUntil, until);
    } else {
      repo.forgetChunk(id);
      chunksDeleted++;
    }
  }
  result.sweep = {
    done: true,
    chunksBefore: [...versions.values()].filter((l) => l.some((v) => v.current)).length,
    chunksDeleted,
    bytesFreed,
    chunksHeld,
    ...(heldUntil ? { heldUntil: new Date(heldUntil).toISOString() } : {}),
  };
}

export { Repository };

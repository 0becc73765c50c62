import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { RepositoryError } from './errors';
import { KEYS, type Repository } from './repository';

/**
 * Exports and the chunk sweep exclude each other: an export holds a shared `export` lock, the sweep an exclusive
 * `prune` lock. Each writes its lock object first and then lists the others, so with S3's read-after-write
 * consistency at least one of two racing sides sees the other and backs off. Locks are refreshed while held; one
 * not refreshed for {@link LOCK_STALE_MS} (by the store's clock) belongs to a dead process and is ignored.
 */
export const LOCK_STALE_MS = 10 * 60_000;
/** How often a held lock is rewritten. */
export const LOCK_REFRESH_MS = 60_000;

export type LockKind = 'export' | 'prune';

/** Another side holds the repository: an export while a sweep runs, or a sweep while exports run. Retryable. */
export class RepositoryBusyError extends RepositoryError {
  override readonly name: string = 'RepositoryBusyError';
}

export class RepositoryLock {
  private timer: NodeJS.Timeout | undefined;
  private released = false;

  private constructor(
    private readonly repo: Repository,
    readonly key: string,
    private readonly body: Buffer,
  ) {}

  /**
   * Takes a lock of `kind`: `export` locks coexist, a `prune` lock excludes every other fresh lock.
   * @throws RepositoryBusyError when the other side holds the repository (nothing is left behind)
   */
  static async acquire(
    repo: Repository,
    kind: LockKind,
    owner: string = hostname(),
    opts: { staleMs?: number; refreshMs?: number } = {},
  ): Promise<RepositoryLock> {
    const staleMs = opts.staleMs ?? LOCK_STALE_MS;
    const key = `${KEYS.locksPrefix}${kind}-${randomBytes(8).toString('hex')}`;
    const body = Buffer.from(JSON.stringify({ kind, owner, pid: process.pid, createdAt: new Date().toISOString() }));
    await repo.store.put(key, body);
    const lock = new RepositoryLock(repo, key, body);
    try {
      const mine = await lock.lastModified();
      const others = await RepositoryLock.list(repo, staleMs, mine);
      const blocking = others.filter((o) => o.key !== key && (kind === 'prune' || o.kind === 'prune'));
      if (blocking.length > 0) {
        const what = [...new Set(blocking.map((b) => `${b.kind} (${b.owner})`))].join(', ');
        throw new RepositoryBusyError(
          kind === 'prune'
            ? `the repository is in use by ${what}: the chunk sweep waits until they end`
            : `the repository is being pruned by ${what}: the export waits until it ends`,
        );
      }
    } catch (err) {
      await repo.store.delete(key).catch(() => undefined);
      throw err;
    }
    const every = opts.refreshMs ?? LOCK_REFRESH_MS;
    lock.timer = setInterval(() => void lock.refresh().catch(() => undefined), every);
    lock.timer.unref();
    return lock;
  }

  /** Fresh locks of the repository (not refreshed for less than `staleMs` before `now`). */
  static async list(
    repo: Repository,
    staleMs = LOCK_STALE_MS,
    now?: Date,
  ): Promise<{ key: string; kind: LockKind; owner: string; lastModified: Date }[]> {
    const out: { key: string; kind: LockKind; owner: string; lastModified: Date }[] = [];
    const objects = [];
    for await (const o of repo.store.list(KEYS.locksPrefix)) objects.push(o);
    const ref = now ?? new Date(Math.max(Date.now(), ...objects.map((o) => o.lastModified.getTime())));
    for (const o of objects) {
      if (ref.getTime() - o.lastModified.getTime() > staleMs) continue;
      const name = o.key.slice(KEYS.locksPrefix.length);
      const kind = name.startsWith('prune-') ? 'prune' : 'export';
      let owner = '?';
      try {
        owner = String(
          (JSON.parse(((await repo.store.get(o.key)) ?? Buffer.from('{}')).toString()) as { owner?: string }).owner ??
            '?',
        );
      } catch {
        // unreadable lock body: still a lock
      }
      out.push({ key: o.key, kind, owner, lastModified: o.lastModified });
    }
    return out;
  }

  private async lastModified(): Promise<Date> {
    for await (const o of this.repo.store.list(this.key)) if (o.key === this.key) return o.lastModified;
    return new Date();
  }

  /** Rewrites the lock so it stays fresh (done every {@link LOCK_REFRESH_MS} by itself). */
  async refresh(): Promise<void> {
    if (!this.released) await this.repo.store.put(this.key, this.body);
  }

  async release(): Promise<void> {
    this.released = true;
    if (this.timer) clearInterval(this.timer);
    await this.repo.store.delete(this.key);
  }
}

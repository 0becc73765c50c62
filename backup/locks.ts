import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { LockLostError, RepositoryError, StoreAccessDeniedError } from './errors';
import { LockBodySchema, MAX_OBJECT_BYTES } from './manifest';
import { KEYS, type HeldLock, type Repository } from './repository';

/**
 * Who may use the repository at once. Exports (`export`) and readers (`read`: restore, drill, verify) hold
 * **shared** locks, `locks/<kind>-<random>`, which coexist; prune holds the **exclusive** lock, the one object
 * `locks/prune`, created with a conditional write (S3 `If-None-Match: *`, O_EXCL on a file system) so two prunes
 * never both hold it. Each side writes its own lock first and then looks for the other's, so with S3's
 * read-after-write consistency at least one of two racing sides sees the other and backs off. Locks are refreshed
 * while held; one not refreshed for {@link LOCK_STALE_MS} (by the store's clock) belongs to a dead process and is
 * ignored (a stale exclusive lock is deleted and taken over). A holder whose refresh fails, or whose lock was taken
 * over, has lost it: its `signal` aborts and `assertHeld()` throws {@link LockLostError}, so a writer stops before
 * its next write.
 */
export const LOCK_STALE_MS = 10 * 60_000;
/** How often a held lock is rewritten. */
export const LOCK_REFRESH_MS = 60_000;

export type LockKind = 'export' | 'read' | 'prune';

/** How long an exclusive lock's creator waits before reading it back (see `stillOurs`). */
const EXCLUSIVE_SETTLE_MS = 250;

/** Object key of the exclusive (prune) lock. */
export const EXCLUSIVE_LOCK_KEY = `${KEYS.locksPrefix}prune`;

/** Another side holds the repository: an export or reader while a prune runs, or a prune while they run. Retryable. */
export class RepositoryBusyError extends RepositoryError {
  override readonly name: string = 'RepositoryBusyError';
}

/** One lock found in the repository. */
export interface LockInfo {
  key: string;
  kind: LockKind;
  owner: string;
  lastModified: Date;
}

export interface LockOptions {
  /** @default LOCK_STALE_MS */
  staleMs?: number;
  /** @default LOCK_REFRESH_MS */
  refreshMs?: number;
}

export class RepositoryLock implements HeldLock {
  private timer: NodeJS.Timeout | undefined;
  private released = false;
  private readonly aborter = new AbortController();
  private lastRefresh = Date.now();

  private constructor(
    private readonly repo: Repository,
    readonly key: string,
    readonly kind: LockKind,
    private readonly body: Buffer,
    private readonly token: string,
    private readonly staleMs: number,
  ) {}

  /** Aborts when the lock is lost (a refresh failed, or another process took it over). */
  get signal(): AbortSignal {
    return this.aborter.signal;
  }

  /**
   * Takes a lock of `kind`: `export` and `read` locks coexist, a `prune` lock excludes every other fresh lock.
   * @throws RepositoryBusyError when the other side holds the repository (nothing is left behind)
   */
  static async acquire(
    repo: Repository,
    kind: LockKind,
    owner: string = hostname(),
    opts: LockOptions = {},
  ): Promise<RepositoryLock> {
    const staleMs = opts.staleMs ?? LOCK_STALE_MS;
    const exclusive = kind === 'prune';
    const token = randomBytes(12).toString('hex');
    const key = exclusive ? EXCLUSIVE_LOCK_KEY : `${KEYS.locksPrefix}${kind}-${token.slice(0, 16)}`;
    const body = Buffer.from(
      JSON.stringify({ kind, owner, pid: process.pid, token, createdAt: new Date().toISOString() }),
    );
    const lock = new RepositoryLock(repo, key, kind, body, token, staleMs);
    if (exclusive) await lock.createExclusive(owner);
    else await repo.store.put(key, body);
    try {
      const others = await RepositoryLock.list(repo, staleMs, await lock.lastModified());
      const blocking = others.filter((o) => o.key !== key && (exclusive || o.kind === 'prune'));
      if (blocking.length > 0) {
        const what = [...new Set(blocking.map((b) => `${b.kind} (${b.owner})`))].join(', ');
        throw new RepositoryBusyError(
          exclusive
            ? `the repository is in use by ${what}: prune waits until they end`
            : `the repository is being pruned by ${what}: the ${kind === 'export' ? 'export' : 'reader'} waits until it ends`,
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

  /**
   * Runs `fn` holding a lock of `kind`, released afterwards whatever happens.
   * @throws RepositoryBusyError when the lock cannot be taken
   */
  static async hold<T>(
    repo: Repository,
    kind: LockKind,
    fn: (lock: RepositoryLock) => Promise<T>,
    opts: LockOptions & { owner?: string } = {},
  ): Promise<T> {
    const lock = await RepositoryLock.acquire(repo, kind, opts.owner, opts);
    try {
      return await fn(lock);
    } finally {
      await lock.release().catch(() => undefined);
    }
  }

  /**
   * Runs a reader's `fn` under a shared `read` lock. A reader whose store credentials are read-only (a restore
   * host given read access only, as it should be) cannot write a lock: it then reads without one (`onUnlocked` is
   * told why), as before locks existed for readers; prune cannot see it.
   * @throws RepositoryBusyError when a prune holds the repository
   */
  static async holdForReading<T>(
    repo: Repository,
    fn: () => Promise<T>,
    opts: LockOptions & { owner?: string; onUnlocked?: (why: string) => void } = {},
  ): Promise<T> {
    let lock: RepositoryLock | undefined;
    try {
      lock = await RepositoryLock.acquire(repo, 'read', opts.owner, opts);
    } catch (err) {
      if (!(err instanceof StoreAccessDeniedError)) throw err;
      opts.onUnlocked?.(err.message);
      if ((await RepositoryLock.list(repo, opts.staleMs)).some((l) => l.kind === 'prune')) {
        throw new RepositoryBusyError(`the repository is being pruned: the reader waits until it ends`);
      }
      return fn();
    }
    try {
      return await fn();
    } finally {
      await lock.release().catch(() => undefined);
    }
  }

  /** Creates `locks/prune` only if absent; takes over a stale one. */
  private async createExclusive(owner: string): Promise<void> {
    const store = this.repo.store;
    for (let attempt = 1; ; attempt++) {
      let created: boolean;
      if (store.putIfAbsent) created = await store.putIfAbsent(this.key, this.body);
      else if (await store.exists(this.key)) created = false;
      else {
        await store.put(this.key, this.body); // a store without conditional writes: best effort
        created = true;
      }
      if (created && (await this.stillOurs())) return;
      if (created) {
        throw new RepositoryBusyError(`${this.key} was written by another prune at the same time: ${owner} gives way`);
      }
      const held = (await RepositoryLock.list(this.repo, Number.POSITIVE_INFINITY)).find((l) => l.key === this.key);
      if (!held) {
        // Released meanwhile; or, on a versioned bucket (Object Lock), a delete marker that a store counts as an
        // existing object for If-None-Match (versitygw does): removed, then tried again.
        if (attempt >= 5) throw new RepositoryBusyError(`cannot create ${this.key}: the store says it exists`);
        if (this.repo.objectLock) await this.removeDeleteMarkers();
        continue;
      }
      const fresh = (await RepositoryLock.list(this.repo, this.staleMs)).some((l) => l.key === this.key);
      if (fresh || attempt >= 3) {
        throw new RepositoryBusyError(
          `the repository is being pruned by ${held.owner}: ${owner} cannot prune it at the same time`,
        );
      }
      // Stale: its holder died. Remove it and try again (a racing prune's conditional write still decides).
      await (this.repo.objectLock ? this.repo.purge(this.key) : store.delete(this.key));
    }
  }

  /**
   * Reads the exclusive lock back a moment after creating it. A store whose conditional create checks and then
   * writes (versitygw's posix backend) lets two racing creates both succeed, the later overwriting the earlier:
   * only the one whose body is there after the settle holds the lock. On a store with an atomic If-None-Match
   * (AWS S3) this always finds our own body.
   */
  private async stillOurs(): Promise<boolean> {
    await new Promise((r) => setTimeout(r, EXCLUSIVE_SETTLE_MS));
    const now = await this.repo.store.get(this.key);
    return now !== undefined && now.equals(this.body);
  }

  /** Object Lock (versioned bucket): deletes the delete markers of this lock's key (they are not locked). */
  private async removeDeleteMarkers(): Promise<void> {
    for await (const v of this.repo.locking.listVersions(this.key)) {
      if (v.key === this.key && v.deleteMarker) await this.repo.locking.deleteVersion(v.key, v.versionId);
    }
  }

  /** Fresh locks of the repository (not refreshed for less than `staleMs` before `now`). */
  static async list(repo: Repository, staleMs = LOCK_STALE_MS, now?: Date): Promise<LockInfo[]> {
    const out: LockInfo[] = [];
    const objects = [];
    for await (const o of repo.store.list(KEYS.locksPrefix)) objects.push(o);
    const ref = now ?? new Date(Math.max(Date.now(), ...objects.map((o) => o.lastModified.getTime())));
    for (const o of objects) {
      if (ref.getTime() - o.lastModified.getTime() > staleMs) continue;
      const name = o.key.slice(KEYS.locksPrefix.length);
      const kind: LockKind = name.startsWith('prune') ? 'prune' : name.startsWith('read-') ? 'read' : 'export';
      out.push({ key: o.key, kind, owner: await readOwner(repo, o.key), lastModified: o.lastModified });
    }
    return out;
  }

  private async lastModified(): Promise<Date> {
    for await (const o of this.repo.store.list(this.key)) if (o.key === this.key) return o.lastModified;
    return new Date();
  }

  /** @throws LockLostError when the lock was lost or released: nothing more may be written under it */
  assertHeld(): void {
    if (!this.aborter.signal.aborted && !this.released && Date.now() - this.lastRefresh > this.staleMs) {
      // Not refreshed for the stale period (a stalled process): others may already treat it as gone.
      this.lose(`not refreshed for ${Math.round((Date.now() - this.lastRefresh) / 1000)} s`);
    }
    if (this.aborter.signal.aborted) throw this.aborter.signal.reason as Error;
    if (this.released) throw new LockLostError(`repository lock ${this.key} was released`);
  }

  private lose(why: string): void {
    if (this.aborter.signal.aborted) return;
    if (this.timer) clearInterval(this.timer);
    this.aborter.abort(new LockLostError(`lost the repository's ${this.kind} lock ${this.key}: ${why}`));
  }

  /**
   * Rewrites the lock so it stays fresh (done every {@link LOCK_REFRESH_MS} by itself). The exclusive lock is
   * first checked to still be this holder's. A failure loses the lock (see {@link signal}).
   */
  async refresh(): Promise<void> {
    if (this.released || this.aborter.signal.aborted) return;
    try {
      if (this.key === EXCLUSIVE_LOCK_KEY) {
        const now = await this.repo.store.get(this.key, { maxBytes: MAX_OBJECT_BYTES.lock });
        if (!now || !now.equals(this.body)) {
          this.lose('another process took it over');
          return;
        }
      }
      await this.repo.store.put(this.key, this.body);
      this.lastRefresh = Date.now();
    } catch (err) {
      this.lose(`its refresh failed: ${(err as Error).message}`);
      throw err;
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    if (this.timer) clearInterval(this.timer);
    if (this.aborter.signal.aborted) return; // lost: it may be someone else's now
    if (this.key === EXCLUSIVE_LOCK_KEY) {
      const now = await this.repo.store.get(this.key, { maxBytes: MAX_OBJECT_BYTES.lock }).catch(() => undefined);
      if (now && !now.equals(this.body)) return;
      // Object Lock (versioned bucket): every version of it, so no delete marker is left for the next prune.
      if (this.repo.objectLock) {
        await this.repo.purge(this.key);
        return;
      }
    }
    await this.repo.store.delete(this.key);
  }

  /** The holder's token (tests). */
  get id(): string {
    return this.token;
  }
}

/** The owner named in a lock object's body; `?` when it cannot be read (it is a lock all the same). */
async function readOwner(repo: Repository, key: string): Promise<string> {
  try {
    const raw = await repo.store.get(key, { maxBytes: MAX_OBJECT_BYTES.lock });
    if (!raw) return '?';
    const parsed = LockBodySchema.safeParse(JSON.parse(raw.toString('utf8')));
    return parsed.success ? parsed.data.owner : '?';
  } catch (err) {
    if (err instanceof SyntaxError || err instanceof RepositoryError) return '?';
    throw err;
  }
}

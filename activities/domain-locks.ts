import { mkdirSync, readFileSync, renameSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Another run holds a VM's lease; retried by the workflow until its lock timeout. */
export class LockBusyError extends Error {
  override readonly name = 'LockBusyError';
}

/** The caller does not (or no longer) hold the lease it works under: its lease expired and another run took it. */
export class LeaseLostError extends Error {
  override readonly name = 'LeaseLostError';
}

interface Lease {
  owner: string;
  expiresAtMs: number;
}

/** How long the host-wide mutex may be held before another process treats it as left by a dead one. */
const MUTEX_STALE_MS = 5_000;

/**
 * Per-VM leases on a host, so two runs that share a VM (snapshots, deletions, restores) never work on its chain at the
 * same time. A lease belongs to one workflow run (its run id), never to a name a user chose. The workflow takes them
 * host by host in a fixed order, so two runs cannot deadlock; a lease expires by itself if its run dies, and is
 * renewed by the host activities that work under it ({@link DomainLocks.keepAlive}) while they run.
 *
 * Check-and-take is atomic across processes on the host (a mutex directory, created with `mkdir`), so two workers
 * of the same host, or a restarted worker beside its predecessor, cannot both think they hold a VM.
 */
export class DomainLocks {
  private readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'locks');
    mkdirSync(this.dir, { recursive: true });
  }

  private file(domain: string): string {
    return join(this.dir, `${encodeURIComponent(domain)}.json`);
  }

  private read(domain: string): Lease | undefined {
    try {
      return JSON.parse(readFileSync(this.file(domain), 'utf8')) as Lease;
    } catch {
      return undefined;
    }
  }

  /** Runs `fn` holding the host's lease mutex (synchronously: no other process changes leases meanwhile). */
  private exclusive<T>(fn: () => T): T {
    const mutex = join(this.dir, '.mutex');
    for (let spins = 0; ; spins++) {
      try {
        mkdirSync(mutex);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        try {
          if (Date.now() - statSync(mutex).mtimeMs > MUTEX_STALE_MS) rmdirSync(mutex);
        } catch {
          // released meanwhile
        }
        if (spins > 200_000) throw new Error(`lease mutex ${mutex} stays taken`);
      }
    }
    try {
      return fn();
    } finally {
      rmdirSync(mutex);
    }
  }

  private writeLease(domain: string, lease: Lease): void {
    const file = this.file(domain);
    writeFileSync(`${file}.tmp`, JSON.stringify(lease));
    renameSync(`${file}.tmp`, file);
  }

  /**
   * Takes (or renews) the leases of all `domains` for `owner`, or none of them.
   * @throws LockBusyError naming the VM and its holder.
   */
  acquire(owner: string, domains: string[], ttlMs: number, now = Date.now()): void {
    if (!owner) throw new TypeError('a lease needs an owner');
    this.exclusive(() => {
      for (const domain of domains) {
        const lease = this.read(domain);
        if (lease && lease.owner !== owner && lease.expiresAtMs > now) {
          throw new LockBusyError(`VM ${JSON.stringify(domain)} is in use by ${lease.owner}`);
        }
      }
      for (const domain of domains) this.writeLease(domain, { owner, expiresAtMs: now + ttlMs });
    });
  }

  /**
   * Renews leases `owner` still holds, to `ttlMs` from now; never takes one it does not hold.
   * @throws LeaseLostError when any of them expired and was taken by another run, or is gone.
   */
  renew(owner: string, domains: string[], ttlMs: number, now = Date.now()): void {
    this.exclusive(() => {
      this.check(owner, domains, now);
      for (const domain of domains) this.writeLease(domain, { owner, expiresAtMs: now + ttlMs });
    });
  }

  /** @throws LeaseLostError unless `owner` holds a live lease on every one of `domains`. */
  assertHeld(owner: string, domains: string[], now = Date.now()): void {
    this.check(owner, domains, now);
  }

  private check(owner: string, domains: string[], now: number): void {
    for (const domain of domains) {
      const lease = this.read(domain);
      if (!lease || lease.owner !== owner || lease.expiresAtMs <= now) {
        const by = lease && lease.expiresAtMs > now ? `held by ${lease.owner}` : 'expired';
        throw new LeaseLostError(`the lease of VM ${JSON.stringify(domain)} is not held by ${owner} (${by})`);
      }
    }
  }

  /**
   * Renews `owner`'s leases on `domains` every quarter of `ttlMs` until the returned function is called, so a long
   * merge or restore never outlives its lease. A failed renewal is reported to `onLost` (once).
   */
  keepAlive(owner: string, domains: string[], ttlMs: number, onLost: (err: unknown) => void = () => {}): () => void {
    let lost = false;
    const timer = setInterval(
      () => {
        try {
          this.renew(owner, domains, ttlMs);
        } catch (err) {
          if (!lost) onLost(err);
          lost = true;
        }
      },
      Math.max(250, ttlMs / 4),
    );
    timer.unref();
    return () => clearInterval(timer);
  }

  /** Releases the leases `owner` holds on `domains`; leases of other owners are left alone. */
  release(owner: string, domains: string[]): void {
    this.exclusive(() => {
      for (const domain of domains) {
        if (this.read(domain)?.owner === owner) rmSync(this.file(domain), { force: true });
      }
    });
  }

  holder(domain: string, now = Date.now()): string | undefined {
    const lease = this.read(domain);
    return lease && lease.expiresAtMs > now ? lease.owner : undefined;
  }
}

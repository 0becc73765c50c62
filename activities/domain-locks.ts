import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Another group snapshot holds a VM's lock; retried by the workflow until its lock timeout. */
export class LockBusyError extends Error {
  override readonly name = 'LockBusyError';
}

interface Lease {
  owner: string;
  expiresAtMs: number;
}

/**
 * Per-VM leases on a host, so two group snapshots that share a VM never freeze it at the same time. The
 * workflow takes them host by host in a fixed order, so two runs cannot deadlock; a lease expires by itself
 * if its run dies. Calls on one host are serialised by the worker's single JS thread.
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

  /**
   * Takes (or renews) the leases of all `domains` for `owner`, or none of them.
   * @throws LockBusyError naming the VM and its holder.
   */
  acquire(owner: string, domains: string[], ttlMs: number, now = Date.now()): void {
    for (const domain of domains) {
      const lease = this.read(domain);
      if (lease && lease.owner !== owner && lease.expiresAtMs > now) {
        throw new LockBusyError(`VM ${JSON.stringify(domain)} is being snapshotted by ${lease.owner}`);
      }
    }
    for (const domain of domains) {
      const file = this.file(domain);
      writeFileSync(`${file}.tmp`, JSON.stringify({ owner, expiresAtMs: now + ttlMs } satisfies Lease));
      renameSync(`${file}.tmp`, file);
    }
  }

  /** Releases the leases `owner` holds on `domains`; leases of other owners are left alone. */
  release(owner: string, domains: string[]): void {
    for (const domain of domains) {
      if (this.read(domain)?.owner === owner) rmSync(this.file(domain), { force: true });
    }
  }

  holder(domain: string, now = Date.now()): string | undefined {
    const lease = this.read(domain);
    return lease && lease.expiresAtMs > now ? lease.owner : undefined;
  }
}

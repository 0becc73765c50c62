/**
 * The VM leases of runs on this host (docs/adr/0005-vm-leases.md): the activities that take and give them back, and
 * the checks the other rooms make under them.
 */
import { LeaseLostError, LockBusyError } from '../domain-locks';
import { checkDomains, checkOwner, failIf } from '../input-checks';
import { message, type HostContext } from './context';
import { failure } from '../../common/failures';

/** How long leases last between the steps of a run; the activities that work under them renew them meanwhile. */
export const LEASE_TTL_MS = 15 * 60_000;

/** Takes (or renews) the leases of `domains` for `owner`, or fails retryably while another run holds one. */
function acquire(ctx: HostContext, owner: string, domains: string[], ttlMs: number): void {
  try {
    ctx.locks.acquire(owner, domains, ttlMs);
  } catch (err) {
    if (err instanceof LockBusyError) throw failure('leaseBusy', err.message);
    throw err;
  }
}

/**
 * Takes the leases again for `owner` (renewing them when it still holds them; compensation may come after they
 * expired), or fails retryably while another run holds one.
 */
export function retake(ctx: HostContext, owner: string, domains: string[]): void {
  acquire(ctx, owner, domains, LEASE_TTL_MS);
}

/** Fails for good (`LeaseLost`) unless `owner` holds the lease of every one of `domains`. */
export function assertLeasesHeld(ctx: HostContext, owner: string, domains: string[]): void {
  try {
    ctx.locks.assertHeld(owner, domains);
  } catch (err) {
    throw failure('leaseLost', message(err));
  }
}

/** Fails for good (`LeaseLost`) when `owner` lost the lease of `domain`; any other error is thrown as it is. */
export function assertLeaseStillHeld(ctx: HostContext, owner: string, domain: string): void {
  try {
    ctx.locks.assertHeld(owner, [domain]);
  } catch (err) {
    if (err instanceof LeaseLostError) throw failure('leaseLost', err.message);
    throw err;
  }
}

/** The lease activities: a run takes its VMs' leases host by host, and gives them back when it is done. */
export function createLeaseActivities(ctx: HostContext) {
  return {
    async acquireLocks(req: { owner: string; domains: string[]; ttlMs: number }): Promise<void> {
      const problems: string[] = [];
      checkOwner(req.owner, problems);
      checkDomains(req.domains, problems);
      if (!Number.isInteger(req.ttlMs) || req.ttlMs < 1000 || req.ttlMs > 24 * 3600_000)
        problems.push(`lease time ${JSON.stringify(req.ttlMs)} ms is not between 1 s and 24 h`);
      failIf(problems);
      acquire(ctx, req.owner, req.domains, req.ttlMs);
    },

    async releaseLocks(req: { owner: string; domains: string[] }): Promise<void> {
      const problems: string[] = [];
      checkOwner(req.owner, problems);
      checkDomains(req.domains, problems);
      failIf(problems);
      ctx.locks.release(req.owner, req.domains);
    },
  };
}

/**
 * What the host's deletion, restore, tag and inventory activities share: their dependencies and the lookups that
 * turn a missing VM or image into an answer (false, undefined, bad input) instead of an error.
 */
import type { VmMetadata } from '../common/catalog';
import { imageChain } from '../hypervisor/chain';
import { DomainNotFoundError } from '../hypervisor/errors';
import type { DomainDescription, Hypervisor } from '../hypervisor/hypervisor';
import { ImageNotFoundError } from '../hypervisor/images';
import type { DomainLocks } from './domain-locks';
import { badInput } from './input-checks';
import type { VmMetadataStore } from './vm-metadata';

export interface DrActivityDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** The host's VM leases, shared with the snapshot activities. */
  locks: DomainLocks;
  /** The host's one queue of metadata changes per VM, shared with the snapshot activities. */
  metadata: VmMetadataStore;
  /** Ends a block job a dead worker left on a disk, before a new commit there. */
  settleBlockJob: (domain: string, target: string) => Promise<void>;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** Lease of a deletion, renewed while it runs. @default 600000 */
  deleteLeaseMs?: number;
}

export const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export const isLive = (state: string): boolean => state === 'running' || state === 'paused';

/** `probe`'s answer, or `fallback` when it throws a `missing` error (any other error is thrown). */
async function orIfMissing<T, F>(
  missing: abstract new (...args: never[]) => Error,
  fallback: F,
  probe: () => Promise<T>,
): Promise<T | F> {
  try {
    return await probe();
  } catch (err) {
    if (err instanceof missing) return fallback;
    throw err;
  }
}

/** The dependencies with their defaults, and the lookups every one of these activities uses. */
export function drContext(deps: DrActivityDeps) {
  const { hypervisor, hostId, metadata } = deps;

  async function describeOrBad(domain: string): Promise<DomainDescription> {
    try {
      return await hypervisor.describe(domain);
    } catch (err) {
      if (err instanceof DomainNotFoundError)
        throw badInput(`VM ${JSON.stringify(domain)} not found on host ${hostId}`);
      throw err;
    }
  }

  const domainExists = (domain: string): Promise<boolean> =>
    orIfMissing(DomainNotFoundError, false, () => hypervisor.state(domain).then(() => true));
  const imageExists = (file: string): Promise<boolean> =>
    orIfMissing(ImageNotFoundError, false, () => hypervisor.imageInfo(file).then(() => true));
  const backingOf = (file: string): Promise<string | undefined> =>
    orIfMissing(ImageNotFoundError, undefined, async () => (await hypervisor.imageInfo(file)).backing);
  /** A VM's metadata, or undefined when the VM is gone (a compensation of something already removed). */
  const readMetaIfAny = (domain: string): Promise<VmMetadata | undefined> =>
    orIfMissing(DomainNotFoundError, undefined, () => metadata.read(domain));

  return {
    ...deps,
    log: deps.log ?? (() => {}),
    readMeta: (domain: string): Promise<VmMetadata> => metadata.read(domain),
    updateMeta: (domain: string, fn: (meta: VmMetadata) => void): Promise<VmMetadata> => metadata.update(domain, fn),
    readMetaIfAny,
    describeOrBad,
    domainExists,
    imageExists,
    backingOf,
    chainOf: (file: string | undefined): Promise<string[]> => imageChain(hypervisor, file),
  };
}

export type DrContext = ReturnType<typeof drContext>;

/**
 * Node.js binding over the libvirt C API for groupsnap: domains, disk-only snapshots, block commit, metadata,
 * guest agent and lifecycle events. Every blocking call runs on the addon's own thread pool and returns a Promise.
 */
import { native, type NativePoolStats } from './native';

export { open, Connection } from './connection';
export type { OpenOptions, DomainSummary, LifecycleEvent, LifecycleListener } from './connection';
export { Domain } from './domain';
export type { DomainState, DomainInfo, BlockJobInfo, CommitOptions, CommitProgress } from './domain';
export * from './constants';
export {
  LibvirtError,
  DomainNotFoundError,
  OperationInvalidError,
  HypervisorConnectionError,
  GuestAgentUnavailableError,
  SnapshotNotFoundError,
  MetadataNotFoundError,
  UnsupportedError,
  BlockJobError,
  translateError,
} from './errors';
export type { LibvirtErrorDetails } from './errors';

export type PoolStats = NativePoolStats;

/** Counters of the addon's thread pool, for diagnostics and tests. */
export function poolStats(): PoolStats {
  return native.poolStats();
}

/** Restarts the `peakBusy` count from the current number of busy threads. */
export function resetPoolPeak(): void {
  native.resetPoolPeak();
}

/**
 * Tunes the pool: at most `maxThreads` calls run at once (@default 64); a thread idle for `idleTimeoutMs`
 * exits (@default 30000).
 */
export function configurePool(options: { maxThreads?: number; idleTimeoutMs?: number }): void {
  const current = native.poolStats();
  native.configurePool(options.maxThreads ?? current.maxThreads, options.idleTimeoutMs ?? current.idleTimeoutMs);
}

/** The libvirt library version, as major * 1,000,000 + minor * 1,000 + release. */
export function libvirtVersion(): number {
  return native.libVersion();
}

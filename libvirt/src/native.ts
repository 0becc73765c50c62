// Types of the compiled addon (build/Release/groupsnap_libvirt.node). Internal: the public API wraps these.

export interface NativeDomainSummary {
  name: string;
  uuid: string;
  id: number;
  state: number;
  reason: number;
}

export interface NativeLifecycleEvent {
  name: string;
  uuid: string;
  event: number;
  detail: number;
  timestampMs: number;
  monotonicNs: bigint;
}

export interface NativeConnection {
  readonly uri: string;
  readonly closed: boolean;
  close(): Promise<void>;
  isAlive(): Promise<boolean>;
  hostname(): Promise<string>;
  listAllDomains(flags?: number): Promise<NativeDomainSummary[]>;
  lookupByName(name: string): Promise<NativeDomain>;
  lookupByUUID(uuid: string): Promise<NativeDomain>;
  defineXML(xml: string, flags?: number): Promise<NativeDomain>;
  registerLifecycle(callback: (event: NativeLifecycleEvent) => void): Promise<number>;
  deregisterEvent(callbackId: number): Promise<void>;
}

export interface NativeBlockJobInfo {
  type: number;
  bandwidth: number;
  cur: number;
  end: number;
}

export interface NativeDomain {
  readonly name: string;
  readonly uuid: string;
  free(): void;
  xml(flags?: number): Promise<string>;
  state(): Promise<{ state: number; reason: number }>;
  info(): Promise<{ state: number; maxMemKiB: number; memoryKiB: number; nrVirtCpu: number; cpuTimeNs: bigint }>;
  isActive(): Promise<boolean>;
  isPersistent(): Promise<boolean>;
  suspend(): Promise<void>;
  resume(): Promise<void>;
  create(flags?: number): Promise<void>;
  destroy(flags?: number): Promise<void>;
  undefine(flags?: number): Promise<void>;
  snapshotCreateXML(xml: string, flags?: number): Promise<string>;
  snapshotList(flags?: number): Promise<string[]>;
  snapshotXML(name: string, flags?: number): Promise<string>;
  snapshotDelete(name: string, flags?: number): Promise<void>;
  blockCommit(disk: string, base: string | null, top: string | null, bandwidth: number, flags: number): Promise<void>;
  blockJobInfo(disk: string, flags?: number): Promise<NativeBlockJobInfo | null>;
  blockJobAbort(disk: string, flags?: number): Promise<void>;
  blockPull(disk: string, bandwidth: number, flags: number): Promise<void>;
  managedSave(flags: number): Promise<void>;
  hasManagedSaveImage(): Promise<boolean>;
  managedSaveRemove(): Promise<void>;
  setMetadata(namespaceUri: string, key: string | null, xml: string | null): Promise<void>;
  getMetadata(namespaceUri: string, flags?: number): Promise<string>;
  fsFreeze(mountpoints?: string[]): Promise<number>;
  fsThaw(mountpoints?: string[]): Promise<number>;
}

/** Counters of the addon's thread pool (exported as `PoolStats`). */
export interface NativePoolStats {
  /** Live pool threads. */
  threads: number;
  idle: number;
  busy: number;
  /** Most calls that ran at the same time since the last `resetPoolPeak()`. */
  peakBusy: number;
  /** Threads started since the process began. */
  spawned: number;
  queued: number;
  maxThreads: number;
  idleTimeoutMs: number;
}

export interface NativeAddon {
  open(
    uri: string | null,
    readOnly: boolean,
    keepAliveIntervalSec: number,
    keepAliveCount: number,
  ): Promise<NativeConnection>;
  poolStats(): NativePoolStats;
  resetPoolPeak(): void;
  configurePool(maxThreads: number, idleTimeoutMs: number): void;
  libVersion(): number;
  constants: Record<string, number>;
}

// The same relative path works from src/ (ts-jest) and dist/ (compiled).
// eslint-disable-next-line @typescript-eslint/no-require-imports
export const native: NativeAddon = require('../build/Release/groupsnap_libvirt.node');

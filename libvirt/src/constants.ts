// libvirt's flag values (checked against the C headers by test/constants.test.ts) and state/event names.

/** Flags of `Domain.snapshotCreateXML` (virDomainSnapshotCreateFlags). */
export const SnapshotCreateFlags = {
  REDEFINE: 1 << 0,
  CURRENT: 1 << 1,
  /** Do not keep snapshot metadata in libvirt: the caller manages the chain. */
  NO_METADATA: 1 << 2,
  HALT: 1 << 3,
  /** External disk snapshot only (qcow2 overlays), no memory state. */
  DISK_ONLY: 1 << 4,
  /** Use overlay files that already exist. */
  REUSE_EXT: 1 << 5,
  /** Ask the guest agent to freeze filesystems around the snapshot. */
  QUIESCE: 1 << 6,
  /** All disks of the domain switch to their overlays together, or none do. */
  ATOMIC: 1 << 7,
  LIVE: 1 << 8,
  VALIDATE: 1 << 9,
} as const;

/** The most common combination: an external, crash-consistent snapshot of all disks, without libvirt metadata. */
export const DISK_ONLY = SnapshotCreateFlags.DISK_ONLY;
export const ATOMIC = SnapshotCreateFlags.ATOMIC;
export const NO_METADATA = SnapshotCreateFlags.NO_METADATA;
export const REUSE_EXT = SnapshotCreateFlags.REUSE_EXT;
export const QUIESCE = SnapshotCreateFlags.QUIESCE;

/** Flags of `Domain.snapshotDelete` (virDomainSnapshotDeleteFlags). */
export const SnapshotDeleteFlags = {
  CHILDREN: 1 << 0,
  METADATA_ONLY: 1 << 1,
  CHILDREN_ONLY: 1 << 2,
} as const;

/** Flags of `Domain.blockCommit` (virDomainBlockCommitFlags). */
export const BlockCommitFlags = {
  SHALLOW: 1 << 0,
  DELETE: 1 << 1,
  /** Commit the active layer: a two-phase job that must be pivoted (or aborted) when ready. */
  ACTIVE: 1 << 2,
  RELATIVE: 1 << 3,
  BANDWIDTH_BYTES: 1 << 4,
} as const;

/** Flags of `Domain.blockJobAbort` (virDomainBlockJobAbortFlags). */
export const BlockJobAbortFlags = {
  ASYNC: 1 << 0,
  /** Finish a ready active commit or copy by switching the disk to the new image. */
  PIVOT: 1 << 1,
} as const;

/** Flags of `Domain.managedSave` (virDomainSaveRestoreFlags). */
export const ManagedSaveFlags = {
  BYPASS_CACHE: 1 << 0,
  /** The domain restores with its vCPUs running. */
  RUNNING: 1 << 1,
  /** The domain restores with its vCPUs paused. */
  PAUSED: 1 << 2,
} as const;

/** virDomainBlockJobType values `Domain.blockJobInfo` reports in `type`. */
export const BlockJobType = {
  PULL: 1,
  COPY: 2,
  COMMIT: 3,
  ACTIVE_COMMIT: 4,
  BACKUP: 5,
} as const;

/** virDomainPausedReason values (`DomainState.reason` of a paused domain). */
export const PausedReason = {
  UNKNOWN: 0,
  USER: 1,
  MIGRATION: 2,
  SAVE: 3,
  DUMP: 4,
  IOERROR: 5,
  WATCHDOG: 6,
  FROM_SNAPSHOT: 7,
  SHUTTING_DOWN: 8,
  SNAPSHOT: 9,
  CRASHED: 10,
  STARTING_UP: 11,
  POSTCOPY: 12,
  POSTCOPY_FAILED: 13,
  API_ERROR: 14,
} as const;

/** Flags of `Domain.undefine` (virDomainUndefineFlagsValues). */
export const UndefineFlags = {
  MANAGED_SAVE: 1 << 0,
  SNAPSHOTS_METADATA: 1 << 1,
  NVRAM: 1 << 2,
  KEEP_NVRAM: 1 << 3,
  CHECKPOINTS_METADATA: 1 << 4,
  TPM: 1 << 5,
  KEEP_TPM: 1 << 6,
} as const;

/** Flags of `Domain.xml` (virDomainXMLFlags). */
export const DomainXMLFlags = {
  SECURE: 1 << 0,
  INACTIVE: 1 << 1,
  UPDATE_CPU: 1 << 2,
  MIGRATABLE: 1 << 3,
} as const;

/** Flags of `Domain.destroy` (virDomainDestroyFlagsValues). */
export const DestroyFlags = {
  GRACEFUL: 1 << 0,
} as const;

/** virDomainState, indexed by its numeric value. */
export const DOMAIN_STATES = [
  'nostate',
  'running',
  'blocked',
  'paused',
  'shutdown',
  'shutoff',
  'crashed',
  'pmsuspended',
] as const;

/** A domain's state; 'unknown' when the domain vanished while it was being listed. */
export type DomainStateName = (typeof DOMAIN_STATES)[number] | 'unknown';

export function domainStateName(state: number): DomainStateName {
  return DOMAIN_STATES[state] ?? 'unknown';
}

/** virDomainEventType, indexed by its numeric value. */
export const LIFECYCLE_EVENTS = [
  'defined',
  'undefined',
  'started',
  'suspended',
  'resumed',
  'stopped',
  'shutdown',
  'pmsuspended',
  'crashed',
] as const;

export type LifecycleEventName = (typeof LIFECYCLE_EVENTS)[number] | 'unknown';

/** The detail of each lifecycle event type (virDomainEvent*DetailType), indexed by value. */
export const LIFECYCLE_DETAILS: Readonly<Record<(typeof LIFECYCLE_EVENTS)[number], readonly string[]>> = {
  defined: ['added', 'updated', 'renamed', 'from_snapshot'],
  undefined: ['removed', 'renamed'],
  started: ['booted', 'migrated', 'restored', 'from_snapshot', 'wakeup'],
  suspended: [
    'paused',
    'migrated',
    'ioerror',
    'watchdog',
    'restored',
    'from_snapshot',
    'api_error',
    'postcopy',
    'postcopy_failed',
  ],
  resumed: ['unpaused', 'migrated', 'from_snapshot', 'postcopy', 'postcopy_failed'],
  stopped: ['shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed', 'from_snapshot'],
  shutdown: ['finished', 'guest', 'host'],
  pmsuspended: ['memory', 'disk'],
  crashed: ['panicked', 'crashloaded'],
};

/** virErrorNumber values this package maps to typed errors. */
export const ErrorCodes = {
  NO_SUPPORT: 3,
  NO_CONNECT: 5,
  INVALID_CONN: 6,
  INVALID_DOMAIN: 7,
  SYSTEM_ERROR: 38,
  RPC: 39,
  NO_DOMAIN: 42,
  AUTH_FAILED: 45,
  OPERATION_INVALID: 55,
  CONFIG_UNSUPPORTED: 67,
  NO_DOMAIN_SNAPSHOT: 72,
  ARGUMENT_UNSUPPORTED: 74,
  AUTH_CANCELLED: 79,
  NO_DOMAIN_METADATA: 80,
  BLOCK_COPY_ACTIVE: 83,
  OPERATION_UNSUPPORTED: 84,
  AGENT_UNRESPONSIVE: 86,
  AUTH_UNAVAILABLE: 94,
  AGENT_UNSYNCED: 97,
} as const;

/** virErrorDomain values (where an error came from) that this package looks at. */
export const ErrorDomains = {
  NONE: 0,
  RPC: 7,
  QEMU: 10,
  TEST: 12,
  REMOTE: 13,
} as const;

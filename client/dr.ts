/**
 * The typed client library for groups, hosts and tags, snapshots of named groups, restore and schedules: what the
 * CLI uses, for other services to use the same way. One module a noun; this one gathers them.
 */
export type {
  DeleteSnapshotResult,
  GroupDefinition,
  GroupRunResult,
  GroupSnapshotListing,
  Inventory,
  RegisteredHost,
  RestoreInput,
  RestoreResult,
  SnapshotNowOptions,
} from '../common/groups';
export type { RetentionPolicy } from '../common/retention';
export type { OverlapName } from '../common/schedule-spec';
export * from './groups';
export * from './hosts';
export * from './restore';
export * from './schedules';
export { settle } from './settle';
export * from './snapshots';

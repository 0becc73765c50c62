export { groupSnapshot, progressQuery, SNAPSHOT_FAILED } from './group-snapshot';
export { groupSnapshotShard } from './snapshot-shards';
export { groupEntity, definitionQuery, snapshotNowUpdate, deleteGroupUpdate } from './group-entity';
export { groupSnapshotRun } from './group-run';
export { restoreFromRepo } from './repo-restore';
export { drillGroup } from './drill';
export { hostRegistry, registerHostSignal, forgetHostUpdate, hostsQuery } from './registry';
export {
  deleteGroupSnapshot,
  restoreGroup,
  groupsnapInventory,
  setVmTags,
  DELETE_FAILED,
  RESTORE_FAILED,
} from './snapshot-admin';
export { pinGroupSnapshot, releaseRestoreRecords } from './snapshot-pins';
export { exportGroupSnapshot, exportProgressQuery, exportProgressSignal } from './group-export';

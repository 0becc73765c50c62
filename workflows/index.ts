export { groupSnapshot, progressQuery, SNAPSHOT_FAILED } from './group-snapshot';
export { groupSnapshotShard } from './snapshot-shards';
export {
  groupEntity,
  definitionQuery,
  snapshotNowUpdate,
  deleteGroupUpdate,
  plansQuery,
  applyPlanUpdate,
  deletePlanUpdate,
  redefineGroupUpdate,
} from './group-entity';
export { recoverGroup, recoverProgressQuery, commitRecoveryUpdate, rollbackRecoveryUpdate } from './recover';
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
export { copyGroupPoint, copyProgressQuery, copyProgressSignal } from './group-copy';

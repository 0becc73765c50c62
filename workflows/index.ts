export { groupSnapshot, progressQuery, SNAPSHOT_FAILED } from './group-snapshot';

import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/**
 * Search attributes groupsnap sets on its workflows, so operators can filter in the Temporal UI
 * (e.g. `GroupsnapGroup = "db"`). SQLite visibility has 10 Keyword and 3 Int slots: stay well inside them.
 */
export const GroupsnapGroup = defineSearchAttributeKey('GroupsnapGroup', SearchAttributeType.KEYWORD);
export const GroupsnapSnapshotId = defineSearchAttributeKey('GroupsnapSnapshotId', SearchAttributeType.KEYWORD);
export const GroupsnapVmCount = defineSearchAttributeKey('GroupsnapVmCount', SearchAttributeType.INT);
export const GroupsnapMaxFreezeMs = defineSearchAttributeKey('GroupsnapMaxFreezeMs', SearchAttributeType.INT);

/** Name and server-side type of every search attribute above, as the Temporal CLI and operator API spell them. */
export const SEARCH_ATTRIBUTES = {
  GroupsnapGroup: 'Keyword',
  GroupsnapSnapshotId: 'Keyword',
  GroupsnapVmCount: 'Int',
  GroupsnapMaxFreezeMs: 'Int',
} as const;

import { uuid4 } from '@temporalio/workflow';
import { formatSnapshotId } from '../common/names';

/**
 * A new snapshot id in a workflow: `gs-<UTC time>-<6 hex>`, at `at` (the workflow's current time unless given),
 * with a deterministic random suffix. The client's own ids come from `newSnapshotId` (client/index.ts).
 */
export function snapshotIdNow(at: Date = new Date()): string {
  return formatSnapshotId(at, uuid4().slice(0, 6));
}

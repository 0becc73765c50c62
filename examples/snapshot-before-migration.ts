/**
 * Another service's use of groupsnap: take a crash-consistent snapshot of the database group right before a schema
 * migration, and only migrate once the snapshot is there. Outside this repository, import from 'groupsnap'.
 *
 *   npx ts-node examples/snapshot-before-migration.ts shop   # or: node dist/examples/snapshot-before-migration.js shop
 */
import { Client, Connection } from '@temporalio/client';
import { BadInputError, snapshotGroup, type GroupSnapshotResult } from '../client';

export interface MigrationOutcome {
  snapshot: GroupSnapshotResult;
  migrated: boolean;
  error?: string;
}

/**
 * Snapshots `group` ("snapshot now": joins a snapshot of the group already running), then runs `migrate`. Refuses to
 * migrate when the snapshot did not complete; the snapshot id is returned so a failed migration can be rolled back
 * with `groupsnap restore <group> <snapshotId> --in-place --yes` (or `restoreGroup`).
 */
export async function migrateWithSnapshot(
  client: Client,
  group: string,
  migrate: () => Promise<void>,
): Promise<MigrationOutcome> {
  const snapshot = await snapshotGroup(client, group, { label: 'pre-migration' });
  if (snapshot.status !== 'completed')
    return { snapshot, migrated: false, error: `snapshot failed: ${snapshot.error}` };
  try {
    await migrate();
    return { snapshot, migrated: true };
  } catch (err) {
    return { snapshot, migrated: false, error: (err as Error).message };
  }
}

async function main(): Promise<void> {
  const group = process.argv[2] ?? 'shop';
  const connection = await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? 'localhost:7233' });
  try {
    const client = new Client({ connection, namespace: process.env.TEMPORAL_NAMESPACE ?? 'default' });
    const outcome = await migrateWithSnapshot(client, group, async () => {
      console.log('running the schema migration (placeholder)');
    });
    console.log(JSON.stringify({ snapshotId: outcome.snapshot.snapshotId, ...outcome, snapshot: undefined }, null, 2));
    process.exitCode = outcome.migrated ? 0 : 1;
  } catch (err) {
    console.error(err instanceof BadInputError ? `bad input: ${err.message}` : err);
    process.exitCode = 2;
  } finally {
    await connection.close();
  }
}

if (require.main === module) void main();

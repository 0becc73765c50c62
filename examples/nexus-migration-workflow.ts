/**
 * Another team's workflow, in its own namespace, using groupsnap through Nexus: snapshot the database group right
 * before a schema migration, run the migration (an activity of that team's), and when the migration fails, restore
 * the group in place to the snapshot. Nothing of groupsnap runs in this namespace: its Nexus endpoint (created once
 * by an operator) routes the calls to groupsnap's namespace and workers.
 *
 *   temporal operator nexus endpoint create --name groupsnap \
 *     --target-namespace <groupsnap's namespace> --target-task-queue groupsnap
 *
 * This file is workflow code (bundled into the caller team's worker); the migration itself is their activity,
 * implementing {@link MigrationActivities}. Outside this repository, import the contract from
 * 'groupsnap/nexus' (pure: no Node APIs, so workflow code can import it).
 */
import { createNexusServiceClient, log, proxyActivities } from '@temporalio/workflow';
import { groupsnapNexusService, type GroupRunResult, type RestoreResult } from '../client/nexus';

/** The caller team's activities. */
export interface MigrationActivities {
  /** Applies schema migration `migration` to the database whose VMs form `group`. */
  runSchemaMigration(input: { group: string; migration: string; snapshotId: string }): Promise<void>;
}

export interface NexusMigrationInput {
  /** The groupsnap group of the database's VMs. */
  group: string;
  migration: string;
  /** Nexus endpoint that reaches groupsnap. @default 'groupsnap' */
  endpoint?: string;
}

export interface NexusMigrationOutcome {
  migrated: boolean;
  /** The snapshot taken before the migration. */
  snapshot: GroupRunResult;
  /** The in-place restore after a failed migration. */
  restore?: RestoreResult;
  error?: string;
}

const { runSchemaMigration } = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '30m',
  // A migration that failed half-way is rolled back by the restore, not retried over a half-migrated schema.
  retry: { maximumAttempts: 1 },
});

/**
 * Snapshot, migrate, and restore on failure. A snapshot that fails (and was compensated by groupsnap: every VM
 * running, nothing left behind) fails this workflow before the migration runs, with groupsnap's per-VM outcome in
 * the failure's details; an unknown group fails it at once.
 */
export async function migrateWithGroupsnap(input: NexusMigrationInput): Promise<NexusMigrationOutcome> {
  const groupsnap = createNexusServiceClient({
    endpoint: input.endpoint ?? 'groupsnap',
    service: groupsnapNexusService,
  });
  const snapshot = await groupsnap.executeOperation(
    'snapshotGroup',
    { group: input.group, label: 'pre-migration' },
    { scheduleToCloseTimeout: '30m', summary: `snapshot ${input.group} before ${input.migration}` },
  );
  const snapshotId = snapshot.snapshot.snapshotId;
  try {
    await runSchemaMigration({ group: input.group, migration: input.migration, snapshotId });
    return { migrated: true, snapshot };
  } catch (err) {
    const error = (err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : String(err);
    // A restore that fails is rolled back by groupsnap (all VMs or none) and fails this workflow, the
    // RestoreResult in its details.
    log.warn('migration failed: restoring the group in place', { group: input.group, snapshotId, error });
    const restore = await groupsnap.executeOperation(
      'restoreGroup',
      { group: input.group, snapshotId, mode: 'in-place', confirmInPlace: true },
      { scheduleToCloseTimeout: '1h', summary: `restore ${input.group} to ${snapshotId}` },
    );
    return { migrated: false, snapshot, restore, error };
  }
}

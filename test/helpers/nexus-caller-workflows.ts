/** Workflows of a caller in another namespace, reaching groupsnap only through its Nexus endpoint (nexus.test.ts). */
import { ApplicationFailure, createNexusServiceClient } from '@temporalio/workflow';
import {
  groupsnapNexusService,
  type NexusExportInput,
  type NexusListRepositoryInput,
  type NexusRepositoryPoints,
  type NexusVerifyRepositoryInput,
  type NexusGroupSnapshots,
  type NexusRestoreFromRepoInput,
  type NexusRestoreGroupInput,
  type NexusSnapshotGroupInput,
} from '../../client/nexus';
import type { GroupRunResult, RestoreResult } from '../../common/groups';
import type { RepoRestoreResult } from '../../common/repo-restore';
import type { ExportResult } from '../../common/backup-types';
import type { VerifyResult } from '../../backup/verify';

export { migrateWithGroupsnap } from '../../examples/nexus-migration-workflow';

/** One link of a failure's cause chain, as the caller's workflow saw it. */
export interface FailureLink {
  name: string;
  message: string;
  type?: string;
  nonRetryable?: boolean;
  details?: unknown[];
}

export type Outcome<T> = { ok: true; result: T } | { ok: false; failures: FailureLink[] };

function chain(err: unknown): FailureLink[] {
  const links: FailureLink[] = [];
  let e = err as (Error & { cause?: unknown }) | undefined;
  for (let i = 0; e && i < 10; i++, e = e.cause as typeof e) {
    links.push({
      name: e.name,
      message: e.message,
      ...(e instanceof ApplicationFailure
        ? { type: e.type ?? undefined, nonRetryable: e.nonRetryable ?? undefined, details: e.details ?? undefined }
        : {}),
      ...('type' in e && typeof e.type === 'string' && !(e instanceof ApplicationFailure) ? { type: e.type } : {}),
      ...('retryable' in e && typeof e.retryable === 'boolean' ? { nonRetryable: !e.retryable } : {}),
    });
  }
  return links;
}

async function outcome<T>(run: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, result: await run() };
  } catch (err) {
    return { ok: false, failures: chain(err) };
  }
}

const client = (endpoint: string) => createNexusServiceClient({ endpoint, service: groupsnapNexusService });

export async function snapshotThroughNexus(endpoint: string, input: NexusSnapshotGroupInput): Promise<GroupRunResult> {
  return client(endpoint).executeOperation('snapshotGroup', input, { scheduleToCloseTimeout: '10m' });
}

export function trySnapshotThroughNexus(endpoint: string, input: unknown): Promise<Outcome<GroupRunResult>> {
  return outcome(() =>
    client(endpoint).executeOperation('snapshotGroup', input as NexusSnapshotGroupInput, {
      scheduleToCloseTimeout: '10m',
    }),
  );
}

export function tryListThroughNexus(endpoint: string, group: string): Promise<Outcome<NexusGroupSnapshots>> {
  return outcome(() => client(endpoint).executeOperation('listGroupSnapshots', { group }));
}

export function tryRestoreFromRepoThroughNexus(
  endpoint: string,
  input: NexusRestoreFromRepoInput,
): Promise<Outcome<RepoRestoreResult>> {
  return outcome(() => client(endpoint).executeOperation('restoreFromRepo', input, { scheduleToCloseTimeout: '10m' }));
}

export function tryRestoreThroughNexus(
  endpoint: string,
  input: NexusRestoreGroupInput,
): Promise<Outcome<RestoreResult>> {
  return outcome(() => client(endpoint).executeOperation('restoreGroup', input, { scheduleToCloseTimeout: '10m' }));
}

export function tryExportThroughNexus(endpoint: string, input: NexusExportInput): Promise<Outcome<ExportResult>> {
  return outcome(() =>
    client(endpoint).executeOperation('exportGroupSnapshot', input, { scheduleToCloseTimeout: '10m' }),
  );
}

export function tryListRepositoryThroughNexus(
  endpoint: string,
  input: NexusListRepositoryInput,
): Promise<Outcome<NexusRepositoryPoints>> {
  return outcome(() => client(endpoint).executeOperation('listRepository', input, { scheduleToCloseTimeout: '1m' }));
}

export function tryVerifyRepositoryThroughNexus(
  endpoint: string,
  input: NexusVerifyRepositoryInput,
): Promise<Outcome<VerifyResult>> {
  return outcome(() => client(endpoint).executeOperation('verifyRepository', input, { scheduleToCloseTimeout: '2m' }));
}

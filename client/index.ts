import { randomBytes } from 'node:crypto';
import { Client, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { formatSnapshotId, groupSnapshotWorkflowId, hostTaskQueue, WORKFLOW_TASK_QUEUE } from '../common/names';
import {
  GroupsnapGroup,
  GroupsnapMaxFreezeMs,
  GroupsnapSnapshotId,
  GroupsnapVmCount,
} from '../common/search-attributes';
import type { GroupSnapshotInput, GroupSnapshotResult, SnapshotProgress } from '../common/types';
import { BAD_INPUT, BadInputError, resultOf, rootFailure } from '../common/failures';
import { normalizeSnapshotInput } from '../common/validation';
import type { groupSnapshot } from '../workflows';
import { snapshotDetails, snapshotSummary } from '../workflows/ui';
import type { SnapshotNowOptions } from '../common/groups';
import { snapshotNamedGroup } from './snapshots';

export * from '../common/types';
export { BadInputError } from '../common/failures';
export { groupSnapshotWorkflowId, hostTaskQueue, WORKFLOW_TASK_QUEUE } from '../common/names';
export { markdownTable, snapshotDetails, snapshotSummary } from '../workflows/ui';

export type GroupSnapshotHandle = WorkflowHandle<typeof groupSnapshot>;

/** A new snapshot id: `gs-<UTC time>-<random>`, safe in file names and sortable by time. */
export function newSnapshotId(now = new Date()): string {
  return formatSnapshotId(now, randomBytes(3).toString('hex'));
}

/**
 * Hosts among `hosts` whose task queue no worker polls right now. A host whose worker stopped within the last
 * minutes may still be listed by the server as a poller; the workflow's own fail-fast timeout covers that case.
 */
export async function hostsWithoutWorker(client: Client, hosts: string[]): Promise<string[]> {
  const missing: string[] = [];
  await Promise.all(
    hosts.map(async (h) => {
      const res = await client.workflowService.describeTaskQueue({
        namespace: client.options.namespace,
        taskQueue: { name: hostTaskQueue(h), kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
        taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
      });
      if ((res.pollers ?? []).length === 0) missing.push(h);
    }),
  );
  return missing.sort();
}

/**
 * Waits until a worker polls every host's task queue (e.g. right after starting workers).
 * @throws Error naming the hosts still without a worker after `timeoutMs`.
 */
export async function waitForHostWorkers(client: Client, hosts: string[], timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const missing = await hostsWithoutWorker(client, hosts);
    if (missing.length === 0) return;
    if (Date.now() > deadline) throw new Error(`no worker polls host ${missing.join(', ')} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Validates the request, checks that every host has a worker, and starts a group snapshot workflow.
 * @throws BadInputError when the request is invalid or a host has no worker; nothing was started then.
 */
export async function startGroupSnapshot(client: Client, input: GroupSnapshotInput): Promise<GroupSnapshotHandle> {
  const normalized = normalizeSnapshotInput(input);
  const hosts = [...new Set(normalized.vms.map((v) => v.host))];
  const missing = await hostsWithoutWorker(client, hosts);
  if (missing.length > 0) {
    throw new BadInputError(
      `no worker polls host ${missing.join(', ')}: start 'groupsnap worker --host <id>' on each VM's hypervisor host`,
    );
  }
  const snapshotId = normalized.snapshotId ?? newSnapshotId();
  return client.workflow.start('groupSnapshot', {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: groupSnapshotWorkflowId(normalized.group, snapshotId),
    args: [{ ...normalized, snapshotId }],
    typedSearchAttributes: [
      { key: GroupsnapGroup, value: normalized.group },
      { key: GroupsnapSnapshotId, value: snapshotId },
      { key: GroupsnapVmCount, value: normalized.vms.length },
      { key: GroupsnapMaxFreezeMs, value: normalized.maxFreezeMs },
    ],
    // Shown by the Temporal UI: one line in the workflow list, Markdown (options, members) on the workflow page.
    staticSummary: snapshotSummary({ ...normalized, snapshotId }),
    staticDetails: snapshotDetails({ ...normalized, snapshotId }),
  }) as Promise<GroupSnapshotHandle>;
}

/**
 * Waits for a group snapshot and returns its result, `status: 'failed'` included (failed and compensated).
 * @throws BadInputError when the workflow rejected its input; the original error for anything else
 *   (e.g. the workflow was cancelled or terminated).
 */
export async function groupSnapshotResult(handle: GroupSnapshotHandle): Promise<GroupSnapshotResult> {
  try {
    return await handle.result();
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      // Bad input, also when a host found it (wrapped in an activity failure); else a compensated run's result.
      const failure = rootFailure(err);
      if (failure?.type === BAD_INPUT) throw new BadInputError(failure.message);
      const result = resultOf<GroupSnapshotResult>(err);
      if (result !== undefined) return result;
    }
    throw err;
  }
}

/**
 * Takes a group snapshot and waits for it. With a group name: "snapshot now" on the named group (members resolved by
 * its definition, concurrent requests coalesced; see {@link snapshotNamedGroup}). With an input object: an ad hoc
 * group of the listed VMs ({@link startGroupSnapshot} then {@link groupSnapshotResult}).
 */
export async function snapshotGroup(
  client: Client,
  group: string,
  options?: SnapshotNowOptions,
): Promise<GroupSnapshotResult>;
export async function snapshotGroup(client: Client, input: GroupSnapshotInput): Promise<GroupSnapshotResult>;
export async function snapshotGroup(
  client: Client,
  groupOrInput: string | GroupSnapshotInput,
  options: SnapshotNowOptions = {},
): Promise<GroupSnapshotResult> {
  if (typeof groupOrInput === 'string') return (await snapshotNamedGroup(client, groupOrInput, options)).snapshot;
  return groupSnapshotResult(await startGroupSnapshot(client, groupOrInput));
}

/** Live progress of a running group snapshot (phase and per-VM state). */
export function groupSnapshotProgress(handle: GroupSnapshotHandle): Promise<SnapshotProgress> {
  return handle.query<SnapshotProgress>('progress');
}

export * from './dr';
export * from './nexus';
export * from './pins';

import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { createGroup, listGroupSnapshots, snapshotNamedGroup } from '../client/dr';
import { parseVmMetadata, renderVmMetadata } from '../common/catalog';
import type { GroupRunResult } from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { FakeHost } from './helpers/fake-hosts';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * Retention in workflows does not depend on the worker's time-zone (ICU) data or locale, and a catalog entry it
 * cannot place in time fails the run at once (item 11 of issue 13). Planning alone is in
 * test/unit/retention-determinism.test.ts.
 */
describe('deterministic retention', () => {
  describe('in a group run (fake hypervisor, real Temporal)', () => {
    let connection: Connection;
    let client: Client;
    let host: FakeHost;
    let hosts: RunningHosts;

    beforeAll(async () => {
      const namespace = await freshNamespace('gsdet');
      connection = await Connection.connect({ address: testServerAddress() });
      client = new Client({ connection, namespace });
      host = new FakeHost(uniqueId('dh'));
      hosts = await startHosts([host], { namespace });
    });

    afterAll(async () => {
      await hosts?.stop();
      await connection?.close();
      host?.cleanup();
    });

    const run = (group: string, timezone = 'Europe/Paris') =>
      client.workflow.execute('groupSnapshotRun', {
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowId: uniqueId(`group-run/${group}/test`),
        args: [{ group, trigger: 'schedule', retention: { keepLast: 1 }, timezone }],
        // Before the fix a bad catalog entry made the workflow task fail and retry for ever: bound the wait.
        workflowExecutionTimeout: '2m',
      }) as Promise<GroupRunResult>;

    it('takes the time-zone buckets from an activity, not from the workflow worker', async () => {
      const vm = uniqueId('d');
      host.addVm(vm);
      const group = uniqueId('det');
      await createGroup(client, { name: group, selector: { vms: [{ domain: vm, host: host.hostId }] } });
      await snapshotNamedGroup(client, group);
      const workflowId = uniqueId(`group-run/${group}/test`);
      const result = (await client.workflow.execute('groupSnapshotRun', {
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowId,
        args: [{ group, trigger: 'schedule', retention: { keepLast: 1 }, timezone: 'Asia/Tokyo' }],
      })) as GroupRunResult;
      expect(result.retention?.deleted).toHaveLength(1);
      const history = await client.workflow.getHandle(workflowId).fetchHistory();
      const scheduled = history.events!.filter((e) => e.activityTaskScheduledEventAttributes);
      expect(scheduled.map((e) => e.activityTaskScheduledEventAttributes!.activityType!.name)).toContain(
        'retentionBuckets',
      );
      const markers = history.events!.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_patch');
      expect(markers).toHaveLength(1);
    });

    it('fails the run with a clear, non-retryable error for an invalid createdAt in a catalog entry', async () => {
      const vm = uniqueId('c');
      host.addVm(vm);
      const group = uniqueId('badcat');
      await createGroup(client, { name: group, selector: { vms: [{ domain: vm, host: host.hostId }] } });
      const first = (await snapshotNamedGroup(client, group)).snapshot.snapshotId;
      // A catalog entry whose createdAt is not a date-time (hand-edited metadata, a bug, a restore of old XML...).
      const meta = parseVmMetadata(await host.hypervisor.getMetadata(vm));
      meta.snapshots.find((s) => s.snapshotId === first)!.createdAt = 'last Tuesday';
      await host.hypervisor.setMetadata(vm, renderVmMetadata(meta));

      const err = await run(group).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
      expect(cause).toBeInstanceOf(ApplicationFailure);
      expect(cause.type).toBe('GroupsnapRetentionFailed');
      expect(cause.nonRetryable).toBe(true);
      expect(cause.message).toMatch(/retention of group .* failed: snapshot .* has createdAt "last Tuesday"/);
      // The snapshot itself completed and is in the details; nothing was deleted.
      const details = cause.details?.[0] as GroupRunResult;
      expect(details.snapshot.status).toBe('completed');
      expect((await listGroupSnapshots(client, group)).map((s) => s.snapshotId).sort()).toEqual(
        [first, details.snapshot.snapshotId].sort(),
      );
    });
  });
});

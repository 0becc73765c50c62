import { readdirSync } from 'node:fs';
import { Client } from '@temporalio/client';
import { snapshotGroup } from '../client';
import { cutViolations } from '../common/cut';
import type { GroupSnapshotResult, ResumeWhen } from '../common/types';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { FakeHost } from './helpers/fake-hosts';
import { maybeRecordHistory } from './helpers/histories';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * The sharded freeze (issue 29, docs/adr/0014): a group over `shardAboveHosts` hosts is frozen through shard child
 * workflows of `shardHosts` hosts, each running the update barrier of its hosts, the group's workflow deciding the
 * cut once every shard is ready. 6 hosts in shards of 2 (`shardAboveHosts: 2`). Real Temporal, fake hypervisors.
 */
describe('the sharded freeze (groups over shardAboveHosts hosts)', () => {
  let client: Client;
  let close: () => Promise<void>;
  let fakes: FakeHost[];
  let hosts: RunningHosts;
  const sharding = { shardAboveHosts: 2, shardHosts: 2 };

  beforeAll(async () => {
    ({ client, close } = await connectTestClient());
    fakes = Array.from(
      { length: 6 },
      (_, i) =>
        // The last host pauses slowly: no VM of the group may run again before its VMs are paused.
        new FakeHost(uniqueId(`sh${i}`), { latencyMs: { suspend: i === 5 ? 300 : 2, snapshot: 20, resume: 2 } }),
    );
    hosts = await startHosts(fakes);
  });

  afterAll(async () => {
    await hosts?.stop();
    await close?.();
    for (const h of fakes ?? []) h.cleanup();
  });

  /** Two VMs on every host. */
  const groupVms = (prefix: string) =>
    fakes.flatMap((host, i) =>
      [1, 2].map((n) => {
        const domain = uniqueId(`${prefix}${i}-${n}`);
        host.addVm(domain);
        return { domain, host: host.hostId, fake: host };
      }),
    );
  const refs = (vms: ReturnType<typeof groupVms>) => vms.map(({ domain, host }) => ({ domain, host }));

  /** The run's events of one kind (the group's workflow or a shard). */
  async function events(workflowId: string) {
    return (await client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  }

  function expectAllRunningNothingLeft(result: GroupSnapshotResult, vms: ReturnType<typeof groupVms>): void {
    for (const { domain, fake } of vms) {
      expect(fake.state(domain)).toBe('running');
      expect(fake.chain(domain)).toHaveLength(1);
      expect(result.vms.find((v) => v.domain === domain)!.resumedByGuard).toBeFalsy();
    }
    for (const fake of fakes) expect(readdirSync(fake.dir).filter((f) => f.includes(result.snapshotId))).toEqual([]);
  }

  it.each<ResumeWhen>(['group-paused', 'group-snapshotted'])(
    'snapshots 12 VMs on 6 hosts through 3 shards with a valid cut (%s)',
    async (resumeWhen) => {
      const vms = groupVms(resumeWhen === 'group-paused' ? 'p' : 's');
      const result = await snapshotGroup(client, { group: 'shards', vms: refs(vms), resumeWhen, ...sharding });

      expect(result.status).toBe('completed');
      expect(cutViolations(result)).toEqual([]);
      for (const { domain, fake } of vms) {
        expect(fake.state(domain)).toBe('running');
        const r = result.vms.find((v) => v.domain === domain)!;
        expect(r).toMatchObject({ outcome: 'snapshotted', pausedByUs: true, state: 'running' });
        expect(r.resumedAtMs!).toBeGreaterThanOrEqual(result.allPausedAtMs!);
        expect(fake.chain(domain)).toEqual(
          r.disks.filter((d) => d.target === 'vda').flatMap((d) => [d.image, d.overlay]),
        );
      }
      // Three shards, each freezing its two hosts behind its own update barrier; the group's workflow ran no freeze.
      const group = await events(result.workflowId);
      const children = group.filter((e) => e.startChildWorkflowExecutionInitiatedEventAttributes);
      expect(children.map((e) => e.startChildWorkflowExecutionInitiatedEventAttributes!.workflowId)).toEqual(
        [0, 1, 2].map((i) => `${result.workflowId}/shard-${i}`),
      );
      const scheduledInGroup = group.map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name);
      expect(scheduledInGroup).not.toContain('freezeVms');
      for (const i of [0, 1, 2]) {
        const shard = await events(`${result.workflowId}/shard-${i}`);
        // Each host: ready (the armed barrier), then paused.
        expect(shard.filter((e) => e.workflowExecutionUpdateAcceptedEventAttributes)).toHaveLength(4);
        expect(shard.filter((e) => e.activityTaskScheduledEventAttributes)).toHaveLength(2);
      }
      if (resumeWhen === 'group-paused') {
        await maybeRecordHistory(client, result.workflowId, 'completed-sharded');
        await maybeRecordHistory(client, `${result.workflowId}/shard-0`, 'completed-sharded-shard');
      }
      // Nothing left locked: the same VMs snapshot again at once.
      const again = await snapshotGroup(client, { group: 'shards', vms: refs(vms), resumeWhen, ...sharding });
      expect(again.status).toBe('completed');
    },
    60_000,
  );

  it('aborts every shard when one host of one shard cannot pause: every VM running, nothing left', async () => {
    const vms = groupVms('f');
    const failing = vms.find((v) => v.fake === fakes[3])!;
    fakes[3].hypervisor.failOn('suspend', failing.domain);
    // Far longer than the run: a host left waiting for its release would show up as resumed by its deadline.
    const result = await snapshotGroup(client, { vms: refs(vms), maxFreezeMs: 20_000, ...sharding });

    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected suspend failure');
    expectAllRunningNothingLeft(result, vms);
    // Every shard was told to abort (shard 1 reported its failure; the others had been waiting for the group).
    for (const i of [0, 1, 2]) {
      const shard = await events(`${result.workflowId}/shard-${i}`);
      const completed = shard.find((e) => e.workflowExecutionCompletedEventAttributes);
      expect(completed).toBeDefined();
    }
    await maybeRecordHistory(client, result.workflowId, 'failed-sharded-compensated');
    // Nothing left locked.
    const again = await snapshotGroup(client, { vms: refs(vms), ...sharding });
    expect(again.status).toBe('completed');
  }, 60_000);

  it('compensates every shard when a snapshot fails after the release: all rolled back and running', async () => {
    const vms = groupVms('r');
    const failing = vms.find((v) => v.fake === fakes[4])!;
    fakes[4].hypervisor.failOn('snapshot', failing.domain);
    const result = await snapshotGroup(client, { vms: refs(vms), maxFreezeMs: 20_000, ...sharding });

    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected snapshot failure');
    expectAllRunningNothingLeft(result, vms);
    for (const v of result.vms) expect(['rolled-back', 'not-snapshotted']).toContain(v.outcome);
    // A shard's freezes may wait to start as long as the group may stay paused, and at least 30 s (the armed
    // barrier: nothing is paused before every host's freeze has started); not a fixed 5 s (issue 29).
    const scheduled = (await events(`${result.workflowId}/shard-0`)).flatMap(
      (e) => e.activityTaskScheduledEventAttributes ?? [],
    );
    expect(scheduled.map((a) => Number(a.scheduleToStartTimeout?.seconds))).toEqual([30, 30]);
    const again = await snapshotGroup(client, { vms: refs(vms), ...sharding });
    expect(again.status).toBe('completed');
  }, 60_000);

  it('fails past the freeze deadline when a shard never gets ready, and releases every host', async () => {
    const vms = groupVms('d');
    // Host 5 pauses for 3 s, past the 1 s freeze bound.
    const slow = new FakeHost(uniqueId('shslow'), { latencyMs: { suspend: 3000, snapshot: 20, resume: 2 } });
    const extra = await startHosts([slow], { workflows: false });
    try {
      const domain = uniqueId('dslow');
      slow.addVm(domain);
      const all = [...vms, { domain, host: slow.hostId, fake: slow }];
      const result = await snapshotGroup(client, { vms: refs(all), maxFreezeMs: 1000, ...sharding });

      expect(result.status).toBe('failed');
      for (const { domain: d, fake } of all) {
        expect(fake.state(d)).toBe('running');
        expect(fake.chain(d)).toHaveLength(1);
      }
    } finally {
      await extra.stop();
      slow.cleanup();
    }
  }, 60_000);
});

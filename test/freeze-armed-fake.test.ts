import { Context } from '@temporalio/activity';
import { Client } from '@temporalio/client';
import { snapshotGroup } from '../client';
import { cutViolations } from '../common/cut';
import type { GroupSnapshotInput } from '../common/types';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { FakeHost } from './helpers/fake-hosts';
import { startHosts, type RunningHosts } from './helpers/workers';

/** How long the slow host takes to describe a VM in its freeze (the re-plan under the leases) while `slow` is set. */
const SLOW_MS = 5000;

/** Whether the caller runs inside a `freezeVms` activity (the fake's latency is drawn in the activity's context). */
function inFreeze(): boolean {
  try {
    return Context.current().info.activityType === 'freezeVms';
  } catch {
    return false;
  }
}

/**
 * The armed barrier (issue 29, docs/adr/0014): no host pauses a VM before every host's freeze has started and reported
 * itself ready, so a host slow to begin its freeze costs the run time, not freeze time. Here one of three hosts takes
 * 5 s to plan each VM again under the leases (the first thing its freeze does): before the armed barrier every VM of
 * the other hosts stayed paused for those 5 s; now none is paused until that host is ready. Through the update
 * barrier of one workflow and through shards. Real Temporal, fake hypervisors.
 */
describe('the armed barrier: nothing is paused before every host is ready', () => {
  let client: Client;
  let close: () => Promise<void>;
  let fakes: FakeHost[];
  let hosts: RunningHosts;
  let slow = false;

  beforeAll(async () => {
    ({ client, close } = await connectTestClient());
    fakes = Array.from(
      { length: 3 },
      (_, i) =>
        new FakeHost(uniqueId(`arm${i}`), {
          latencyMs: {
            suspend: 2,
            snapshot: 20,
            resume: 2,
            describe: () => (i === 2 && slow && inFreeze() ? SLOW_MS : 0),
          },
        }),
    );
    hosts = await startHosts(fakes);
  });

  afterAll(async () => {
    await hosts?.stop();
    await close?.();
    for (const h of fakes ?? []) h.cleanup();
  });

  it.each<[string, Partial<GroupSnapshotInput>]>([
    ['the update barrier of one workflow', {}],
    ['shards of 2 hosts', { shardAboveHosts: 2, shardHosts: 2 }],
  ])(
    'through %s',
    async (_, options) => {
      const vms = fakes.flatMap((fake, i) =>
        [1, 2].map((n) => {
          const domain = uniqueId(`a${i}-${n}`);
          fake.addVm(domain);
          return { domain, host: fake.hostId, fake };
        }),
      );
      slow = true;
      const result = await snapshotGroup(client, {
        vms: vms.map(({ domain, host }) => ({ domain, host })),
        maxFreezeMs: 20_000,
        ...options,
      }).finally(() => (slow = false));

      expect({ status: result.status, error: result.error }).toEqual({ status: 'completed', error: undefined });
      expect(cutViolations(result)).toEqual([]);
      for (const { domain, fake } of vms) expect(fake.state(domain)).toBe('running');
      // Every VM, on the fast hosts too, was paused for less than the slow host's re-plan: none waited for it.
      for (const v of result.vms) {
        expect(v.pausedAtMs).toBeDefined();
        expect(v.resumedAtMs! - v.pausedAtMs!).toBeLessThan(SLOW_MS);
      }
      // Each host reported itself ready through the armed update before it reported its VMs paused.
      const workflows = options.shardAboveHosts
        ? [0, 1].map((i) => `${result.workflowId}/shard-${i}`)
        : [result.workflowId];
      const updates: string[] = [];
      for (const id of workflows) {
        const events = (await client.workflow.getHandle(id).fetchHistory()).events ?? [];
        for (const e of events) {
          const name = e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name;
          if (name) updates.push(name);
        }
      }
      expect(updates.filter((n) => n === 'hostArmed')).toHaveLength(3);
      expect(updates.filter((n) => n === 'hostFrozen')).toHaveLength(3);
    },
    90_000,
  );
});

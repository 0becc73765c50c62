import { readdirSync } from 'node:fs';
import { Client } from '@temporalio/client';
import { snapshotGroup } from '../client';
import { cutViolations } from '../common/cut';
import type { GroupSnapshotResult } from '../common/types';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { FakeHost } from './helpers/fake-hosts';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * The barrier above `updateBarrierMaxHosts` hosts (issue 15): in the `group-paused` order each host signals once its
 * VMs are paused and `releaseFreeze` activities release the group, so VMs resume as soon as the group is paused and
 * their own snapshot is taken, as below the limit. `updateBarrierMaxHosts: 1` puts a 3-host group above it.
 * Real Temporal, fake hypervisors.
 */
describe('the signal barrier (groups above updateBarrierMaxHosts)', () => {
  let client: Client;
  let close: () => Promise<void>;
  let hostA: FakeHost;
  let slowB: FakeHost;
  let hostC: FakeHost;
  let hosts: RunningHosts;

  beforeAll(async () => {
    ({ client, close } = await connectTestClient());
    // Host A's snapshots are slow: with 2 in flight, its first VM is released long before its last is snapshotted.
    hostA = new FakeHost(uniqueId('sa'), { latencyMs: { suspend: 2, snapshot: 300, resume: 2 } });
    // Host B pauses slowly: nobody may run again before B's VMs are paused.
    slowB = new FakeHost(uniqueId('sb'), { latencyMs: { suspend: 400, snapshot: 20, resume: 2 } });
    hostC = new FakeHost(uniqueId('sc'), { latencyMs: { suspend: 2, snapshot: 20, resume: 2 } });
    hosts = await startHosts([hostA, slowB, hostC]);
  });

  afterAll(async () => {
    await hosts?.stop();
    await close?.();
    for (const h of [hostA, slowB, hostC]) h?.cleanup();
  });

  const addVms = (host: FakeHost, n: number, prefix: string) =>
    Array.from({ length: n }, (_, i) => {
      const domain = uniqueId(`${prefix}${i + 1}`);
      host.addVm(domain);
      return { domain, host: host.hostId };
    });
  const vmOf = (result: GroupSnapshotResult, domain: string) => result.vms.find((v) => v.domain === domain)!;

  /** Activity types the run scheduled, with their inputs. */
  async function scheduled(workflowId: string): Promise<{ type: string; input: unknown }[]> {
    const history = await client.workflow.getHandle(workflowId).fetchHistory();
    const converter = client.options.loadedDataConverter.payloadConverter;
    return (history.events ?? [])
      .map((e) => e.activityTaskScheduledEventAttributes)
      .filter((a) => a != null)
      .map((a) => ({
        type: a.activityType!.name!,
        input: converter.fromPayload(a.input!.payloads![0]),
      }));
  }

  it("releases each VM once every host's VMs are paused and its own snapshot is taken", async () => {
    const a = addVms(hostA, 4, 'ga');
    const b = addVms(slowB, 1, 'gb');
    const c = addVms(hostC, 1, 'gc');
    const result = await snapshotGroup(client, { vms: [...a, ...b, ...c], updateBarrierMaxHosts: 1 });

    expect(result.status).toBe('completed');
    expect(result.resumeWhen).toBe('group-paused');
    expect(cutViolations(result)).toEqual([]);
    expect(result.allPausedAtMs).toBe(vmOf(result, b[0].domain).pausedAtMs);
    for (const vm of [...a, ...b, ...c]) {
      const r = vmOf(result, vm.domain);
      expect(r.resumedAtMs!).toBeGreaterThanOrEqual(result.allPausedAtMs!);
      expect(r.resumedByGuard).toBeFalsy();
    }
    // Host A's first VM runs again before its last one is snapshotted: the release came on pauses, not on the end of
    // every host's freeze (with thaw activities no VM resumes before every snapshot of the group is taken).
    expect(vmOf(result, a[0].domain).resumedAtMs!).toBeLessThan(vmOf(result, a[3].domain).snapshottedAtMs!);
    const steps = await scheduled(result.workflowId);
    // One release per host, each naming this run (the leases' owner) and its snapshot.
    const { runId } = await client.workflow.getHandle(result.workflowId).describe();
    expect(steps.filter((s) => s.type === 'releaseFreeze').map((s) => s.input)).toEqual(
      [hostA, slowB, hostC].map(() => ({ snapshotId: result.snapshotId, leaseOwner: runId, release: true })),
    );
    expect(steps.some((s) => s.type === 'thawVms')).toBe(false);
    for (const vm of a) expect(hostA.state(vm.domain)).toBe('running');
  });

  it('aborts every host at once when one cannot pause: all running, nothing left, no deadline reached', async () => {
    const a = addVms(hostA, 2, 'ha');
    const b = addVms(slowB, 1, 'hb');
    const c = addVms(hostC, 2, 'hc');
    slowB.hypervisor.failOn('suspend', b[0].domain);
    // Far longer than the run: a host left waiting for its release would show up as resumed by its deadline.
    const result = await snapshotGroup(client, {
      vms: [...a, ...b, ...c],
      updateBarrierMaxHosts: 1,
      maxFreezeMs: 20_000,
    });

    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected suspend failure');
    for (const [host, vms] of [
      [hostA, a],
      [slowB, b],
      [hostC, c],
    ] as const) {
      for (const vm of vms) {
        expect(host.state(vm.domain)).toBe('running');
        expect(host.chain(vm.domain)).toHaveLength(1);
        expect(vmOf(result, vm.domain).resumedByGuard).toBeFalsy();
      }
      expect(readdirSync(host.dir).filter((f) => f.includes(result.snapshotId))).toEqual([]);
    }
    const aborts = (await scheduled(result.workflowId)).filter((s) => s.type === 'releaseFreeze');
    expect(aborts.length).toBeGreaterThanOrEqual(3);
    expect(aborts.every((s) => (s.input as { release: boolean }).release === false)).toBe(true);
  }, 60_000);

  it("keeps thaw activities in the old order: every VM resumes after the group's last snapshot", async () => {
    const a = addVms(hostA, 2, 'ta');
    const c = addVms(hostC, 1, 'tc');
    const result = await snapshotGroup(client, {
      vms: [...a, ...c],
      updateBarrierMaxHosts: 1,
      resumeWhen: 'group-snapshotted',
    });

    expect(result.status).toBe('completed');
    const lastSnapshot = Math.max(...result.vms.map((v) => v.snapshottedAtMs!));
    for (const v of result.vms) expect(v.resumedAtMs!).toBeGreaterThanOrEqual(lastSnapshot);
    const steps = await scheduled(result.workflowId);
    expect(steps.some((s) => s.type === 'thawVms')).toBe(true);
    expect(steps.some((s) => s.type === 'releaseFreeze')).toBe(false);
  });
});

import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHost, type HostActivities } from '../activities/host-activities';
import { Client } from '@temporalio/client';
import { snapshotGroup } from '../client';
import { cutViolations } from '../common/cut';
import type { GroupSnapshotResult } from '../common/types';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { FakeHost } from './helpers/fake-hosts';
import { startHosts, type RunningHosts } from './helpers/workers';
import { maybeRecordHistory } from './helpers/histories';

/**
 * The order inside the freeze (issue 15): by default overlays are made before the pause and each VM resumes as soon
 * as its own snapshot is taken and the whole group is paused; `resumeWhen: 'group-snapshotted'` keeps the old
 * order. Real Temporal, fake hypervisors (the same on real VMs: freeze-order-libvirt.test.ts).
 */
describe('freeze order (fake hypervisors, real Temporal)', () => {
  let client: Client;
  let close: () => Promise<void>;
  let hostA: FakeHost;
  let slowB: FakeHost;
  let hosts: RunningHosts;

  beforeAll(async () => {
    ({ client, close } = await connectTestClient());
    hostA = new FakeHost(uniqueId('oa'), { latencyMs: { suspend: 2, snapshot: 30, resume: 2 } });
    // Host B pauses slowly: host A's VMs must not run again before B's are paused.
    slowB = new FakeHost(uniqueId('ob'), { latencyMs: { suspend: 400, snapshot: 30, resume: 2 } });
    hosts = await startHosts([hostA, slowB]);
  });

  afterAll(async () => {
    await hosts?.stop();
    await close?.();
    hostA?.cleanup();
    slowB?.cleanup();
  });

  const vmsOn = (host: FakeHost, names: string[]) => names.map((domain) => ({ domain, host: host.hostId }));
  const addVms = (host: FakeHost, n: number, prefix: string) =>
    Array.from({ length: n }, (_, i) => {
      const vm = uniqueId(`${prefix}${i + 1}`);
      host.addVm(vm);
      return vm;
    });
  const vmOf = (result: GroupSnapshotResult, domain: string) => result.vms.find((v) => v.domain === domain)!;

  it('by default makes the overlays before the pause and resumes each VM once its own snapshot is taken', async () => {
    const vms = addVms(hostA, 4, 'e');
    const before = hostA.hypervisor.calls.length;
    const result = await snapshotGroup(client, { group: 'early', vms: vmsOn(hostA, vms) });

    expect(result.status).toBe('completed');
    expect(result.resumeWhen).toBe('group-paused');
    expect(cutViolations(result)).toEqual([]);
    const calls = hostA.hypervisor.calls.slice(before);
    // Every overlay file exists before the first pause; the snapshots reuse them.
    const firstSuspend = calls.findIndex((c) => c.startsWith('suspend:'));
    expect(calls.slice(0, firstSuspend).filter((c) => c.startsWith('createOverlay:'))).toHaveLength(8);
    expect(calls.slice(firstSuspend).some((c) => c.startsWith('createOverlay:'))).toBe(false);
    // Two snapshots at a time: the first VM is running again before the last one is even snapshotted.
    const [first, , , last] = vms.map((v) => vmOf(result, v));
    expect(first.resumedAtMs!).toBeLessThan(last.snapshottedAtMs!);
    for (const vm of vms) {
      expect(hostA.state(vm)).toBe('running');
      const r = vmOf(result, vm);
      expect(r.resumedAtMs!).toBeGreaterThanOrEqual(result.allPausedAtMs!);
      for (const d of r.disks) expect(hostA.chain(vm, d.target)).toEqual([d.image, d.overlay]);
    }
    expect(new Date(result.createdAt!).getTime()).toBe(Math.floor(result.allPausedAtMs!));
    await maybeRecordHistory(client, result.workflowId, 'completed-group-paused');
  });

  it("across hosts, releases no VM before every host's VMs are paused", async () => {
    const a = addVms(hostA, 2, 'xa');
    const b = addVms(slowB, 1, 'xb');
    const result = await snapshotGroup(client, { group: 'cross', vms: [...vmsOn(hostA, a), ...vmsOn(slowB, b)] });

    expect(result.status).toBe('completed');
    expect(cutViolations(result)).toEqual([]);
    const bPaused = vmOf(result, b[0]).pausedAtMs!;
    expect(result.allPausedAtMs).toBe(bPaused);
    // Host A's VMs were paused (and snapshotted) long before B's pause took effect, and waited for it.
    for (const vm of a) {
      expect(vmOf(result, vm).snapshottedAtMs!).toBeLessThan(bPaused);
      expect(vmOf(result, vm).resumedAtMs!).toBeGreaterThanOrEqual(bPaused);
    }
  });

  it("keeps the old order with resumeWhen 'group-snapshotted': every VM resumes after the last snapshot", async () => {
    const vms = addVms(hostA, 3, 'o');
    const before = hostA.hypervisor.calls.length;
    const result = await snapshotGroup(client, { vms: vmsOn(hostA, vms), resumeWhen: 'group-snapshotted' });

    expect(result.status).toBe('completed');
    expect(result.resumeWhen).toBe('group-snapshotted');
    const lastSnapshot = Math.max(...result.vms.map((v) => v.snapshottedAtMs!));
    for (const v of result.vms) expect(v.resumedAtMs!).toBeGreaterThanOrEqual(lastSnapshot);
    expect(hostA.hypervisor.calls.slice(before).some((c) => c.startsWith('createOverlay:'))).toBe(false);
  });

  it('compensates a snapshot that fails after other VMs resumed: all running, every overlay merged or removed', async () => {
    const vms = addVms(hostA, 3, 'f');
    hostA.hypervisor.failOn('snapshot', vms[2]);
    const result = await snapshotGroup(client, { vms: vmsOn(hostA, vms) });

    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected snapshot failure');
    // The first VM ran again before the third VM's snapshot failed: compensation commits its overlay back.
    expect(hostA.hypervisor.calls.filter((c) => c.startsWith('commit:')).length).toBeGreaterThanOrEqual(2);
    for (const vm of vms) {
      expect(hostA.state(vm)).toBe('running');
      expect(hostA.chain(vm, 'vda')).toHaveLength(1);
      expect(hostA.chain(vm, 'vdb')).toHaveLength(1);
    }
    expect(vmOf(result, vms[0]).outcome).toBe('rolled-back');
    expect(vmOf(result, vms[2])).toMatchObject({ outcome: 'not-snapshotted', state: 'running' });
    // The failed VM's prepared overlays are gone too.
    expect(readdirSync(hostA.dir).filter((f) => f.includes(result.snapshotId))).toEqual([]);
  });

  it('removes the prepared overlays and resumes everything when a pause fails', async () => {
    const vms = addVms(hostA, 3, 'p');
    hostA.hypervisor.failOn('suspend', vms[1]);
    const result = await snapshotGroup(client, { vms: vmsOn(hostA, vms) });

    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected suspend failure');
    expect(hostA.hypervisor.calls.some((c) => c.startsWith(`snapshot:${vms[0]}`))).toBe(false);
    for (const vm of vms) {
      expect(hostA.state(vm)).toBe('running');
      expect(hostA.chain(vm)).toHaveLength(1);
    }
    for (const v of result.vms) for (const d of v.disks) expect(existsSync(d.overlay)).toBe(false);
    expect(readdirSync(hostA.dir).filter((f) => f.includes(result.snapshotId))).toEqual([]);
  });

  it("removes every host's prepared overlays when another host cannot make its own, pausing nothing", async () => {
    const a = addVms(hostA, 2, 'pa');
    const b = addVms(slowB, 1, 'pb');
    const [beforeA, beforeB] = [hostA.hypervisor.calls.length, slowB.hypervisor.calls.length];
    // Every attempt of host B's plan under the lease (3, each making 2 overlays) fails.
    for (let i = 0; i < 6; i++) slowB.hypervisor.failOn('createOverlay', undefined);
    const result = await snapshotGroup(client, { vms: [...vmsOn(hostA, a), ...vmsOn(slowB, b)] });

    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected createOverlay failure');
    // Host A made its overlays, then they were removed; nobody was paused.
    expect(hostA.hypervisor.calls.slice(beforeA).filter((c) => c.startsWith('createOverlay:'))).toHaveLength(4);
    expect([...hostA.hypervisor.calls.slice(beforeA), ...slowB.hypervisor.calls.slice(beforeB)]).not.toContainEqual(
      expect.stringMatching(/^suspend:/),
    );
    for (const dir of [hostA.dir, slowB.dir])
      expect(readdirSync(dir).filter((f) => f.includes(result.snapshotId))).toEqual([]);
    for (const vm of a) expect(hostA.chain(vm)).toHaveLength(1);
  });

  it('refuses an unknown resumeWhen before anything is done', async () => {
    const vms = addVms(hostA, 1, 'bad');
    const before = hostA.hypervisor.calls.length;
    await expect(snapshotGroup(client, { vms: vmsOn(hostA, vms), resumeWhen: 'later' as never })).rejects.toThrow(
      /resume when must be one of group-paused, group-snapshotted/,
    );
    expect(hostA.hypervisor.calls.slice(before)).toEqual([]);
  });
});

/** One run on a host's activities alone: its leases, its plan (overlays prepared) and its freeze, one-host release. */
async function leasePlanFreeze(a: HostActivities, host: string, vms: string[], owner: string, snapshotId: string) {
  await a.acquireLocks({ owner, domains: vms, ttlMs: 60_000 });
  const base = { snapshotId, quiesce: 'none' as const, leaseOwner: owner };
  const plans = await a.planVms({ ...base, domains: vms, prepareOverlays: true });
  const reports = await a.freezeVms({
    ...base,
    vms: plans,
    maxFreezeMs: 10_000,
    release: 'local',
    host,
    resumeWhen: 'group-paused',
  });
  return { plans, reports };
}

/** The host's bound on snapshots taken at once in the group-paused order (`groupsnap worker --snapshots-in-flight`). */
describe('snapshots in flight', () => {
  it.each([1, 3])('takes at most %i snapshots at once when its worker says so', async (bound) => {
    const fake = new FakeHost(`in-flight-${bound}`, { latencyMs: { snapshot: 60 } });
    const stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-in-flight-'));
    try {
      const vms = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6'];
      for (const vm of vms) fake.addVm(vm);
      let now = 0;
      let most = 0;
      const snapshotDisks = fake.hypervisor.snapshotDisks.bind(fake.hypervisor);
      fake.hypervisor.snapshotDisks = async (...args: Parameters<typeof snapshotDisks>) => {
        most = Math.max(most, ++now);
        try {
          return await snapshotDisks(...args);
        } finally {
          now--;
        }
      };
      const host = fake.hostId;
      const a = createHost({
        hypervisor: fake.hypervisor,
        hostId: host,
        stateDir,
        snapshotsInFlight: bound,
      }).activities;
      const { reports } = await leasePlanFreeze(a, host, vms, 'run', 's1');

      expect(reports.every((r) => r.snapshotted && !r.error)).toBe(true);
      expect(most).toBe(bound);
    } finally {
      fake.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  it('refuses a bound outside 1-64 when the host is created', () => {
    const fake = new FakeHost('in-flight-bad');
    try {
      expect(() =>
        createHost({ hypervisor: fake.hypervisor, hostId: 'in-flight-bad', stateDir: fake.dir, snapshotsInFlight: 0 }),
      ).toThrow(/snapshots in flight must be a whole number from 1 to 64, got 0/);
    } finally {
      fake.cleanup();
    }
  });
});

/**
 * A freeze the workflow gave up on (its heartbeat timed out on a starved worker) can still be running on the host
 * when compensation's undo arrives there. Found by the 1,000-snapshot consistency run: undo removed a prepared
 * overlay that a snapshot still in flight then put under the VM, which went on running on a deleted file.
 */
describe('undo against a freeze still running on the same host', () => {
  it('stops the freeze from taking more snapshots, waits for it, then undoes what it took', async () => {
    const fake = new FakeHost('undo-race', { latencyMs: { snapshot: 300 } });
    const stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-undo-race-'));
    try {
      const vms = ['r1', 'r2', 'r3'];
      for (const vm of vms) fake.addVm(vm);
      const a = createHost({ hypervisor: fake.hypervisor, hostId: 'undo-race', stateDir }).activities;
      await a.acquireLocks({ owner: 'run', domains: vms, ttlMs: 60_000 });
      const base = { snapshotId: 's1', quiesce: 'none' as const, leaseOwner: 'run' };
      const plans = await a.planVms({ ...base, domains: vms, prepareOverlays: true });
      const freezing = a.freezeVms({
        ...base,
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'undo-race',
        resumeWhen: 'group-paused',
      });
      // Two snapshots are in flight (at most 2 at a time) when the undo arrives.
      await new Promise((r) => setTimeout(r, 100));
      const undone = await a.undoSnapshots({ ...base, vms: plans.map((p) => ({ domain: p.domain, disks: p.disks })) });
      const reports = await freezing;

      expect(reports.find((r) => r.domain === 'r3')).toMatchObject({
        snapshotted: false,
        error: 'the run is being undone',
      });
      expect(undone.every((u) => u.rolledBack)).toBe(true);
      for (const vm of vms) {
        expect(fake.state(vm)).toBe('running');
        // Every disk back on its image: nothing runs on an overlay, let alone a removed one.
        expect(fake.chain(vm, 'vda')).toHaveLength(1);
        expect(fake.chain(vm, 'vdb')).toHaveLength(1);
      }
      expect(readdirSync(fake.dir).filter((f) => f.includes('s1'))).toEqual([]);
    } finally {
      fake.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  it('lets a new run reuse the snapshot id of a run that was undone (a caller may retry with the same id)', async () => {
    const fake = new FakeHost('undo-reuse');
    const stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-undo-reuse-'));
    try {
      const vms = ['u1', 'u2'];
      for (const vm of vms) fake.addVm(vm);
      const a = createHost({ hypervisor: fake.hypervisor, hostId: 'undo-reuse', stateDir }).activities;
      const attempt = (owner: string) => leasePlanFreeze(a, 'undo-reuse', vms, owner, 'nightly');
      // The first run snapshots, then fails later and is undone.
      const first = await attempt('run-1');
      await a.undoSnapshots({
        snapshotId: 'nightly',
        leaseOwner: 'run-1',
        vms: first.plans.map((p) => ({ domain: p.domain, disks: p.disks })),
      });
      await a.releaseLocks({ owner: 'run-1', domains: vms });
      // The retry, same snapshot id, another run: its snapshots are taken.
      const retry = await attempt('run-2');
      expect(retry.reports.map((r) => [r.domain, r.snapshotted, r.error])).toEqual([
        ['u1', true, undefined],
        ['u2', true, undefined],
      ]);
      for (const vm of vms) expect(fake.chain(vm, 'vda')).toHaveLength(2);
    } finally {
      fake.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { groupSnapshotResult, snapshotGroup, startGroupSnapshot } from '../client';
import { parseVmMetadata } from '../common/catalog';
import { FreezeJournal } from '../activities/freeze-journal';
import { restartablePort } from '../dev/free-port';
import { startDevServer } from '../dev/temporal-dev-server';
import { backingChain, VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { runningGuardPid } from '../worker/guard';
import { failingSnapshots } from './helpers/failing-hypervisor';
import { FakeHost } from './helpers/fake-hosts';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { CLI, WorkerProcess } from './helpers/worker-process';
import { startHosts, type RunningHosts } from './helpers/workers';

/** The saga on real libvirtd + QEMU VMs (firmware-only guests, 2 qcow2 disks each) and a real Temporal server. */

describe('group snapshot saga on real VMs', () => {
  let client: Client;
  let close: () => Promise<void>;
  let fleet: VmFleet;
  const hypervisors: LibvirtHypervisor[] = [];
  let hosts: RunningHosts;
  const failNext = new Set<string>();
  const hostA = uniqueId('ha');
  const hostB = uniqueId('hb');

  const state = async (name: string) => (await (await fleet.conn.lookupByName(name)).state()).state;
  const sources = async (name: string) =>
    Object.fromEntries(
      parseDomainXml(await (await fleet.conn.lookupByName(name)).xml()).disks.map((d) => [d.target, d.source]),
    );
  const originalSources = (name: string) => fleet.vms.find((v) => v.name === name)!.disks;
  const openHypervisor = async () => {
    const h = await LibvirtHypervisor.open('qemu:///system');
    hypervisors.push(h);
    return h;
  };

  beforeAll(async () => {
    ({ client, close } = await connectTestClient());
    fleet = await VmFleet.create({ prefix: 'gs-saga', count: 8 });
    hosts = await startHosts([
      { hostId: hostA, hypervisor: failingSnapshots(await openHypervisor(), failNext) },
      { hostId: hostB, hypervisor: await openHypervisor() },
    ]);
  });

  afterAll(async () => {
    await hosts?.stop();
    for (const h of hypervisors) await h.close();
    await fleet?.destroy();
    await close?.();
  });

  it('snapshots 3 VMs x 2 disks over 2 host workers: all running, new overlays active, catalog points at the images', async () => {
    const [v1, v2, v3] = fleet.names;
    const result = await snapshotGroup(client, {
      group: 'real',
      vms: [
        { domain: v1, host: hostA },
        { domain: v2, host: hostA },
        { domain: v3, host: hostB },
      ],
    });
    expect(result.status).toBe('completed');
    for (const vm of result.vms) {
      expect(await state(vm.domain)).toBe('running');
      expect(vm).toMatchObject({ outcome: 'snapshotted', pausedByUs: true, state: 'running' });
      expect(vm.freezeMs).toBeGreaterThan(0);
      expect(vm.disks.map((d) => d.image).sort()).toEqual(Object.values(originalSources(vm.domain)).sort());
      const now = await sources(vm.domain);
      for (const d of vm.disks) {
        expect(now[d.target]).toBe(d.overlay);
        expect(await backingChain(d.overlay)).toEqual([d.overlay, d.image]);
      }
      const meta = parseVmMetadata(await hypervisors[1].getMetadata(vm.domain));
      expect(meta.snapshots.map((s) => s.snapshotId)).toContain(result.snapshotId);
      expect(meta.snapshots.find((s) => s.snapshotId === result.snapshotId)!.disks).toEqual(vm.disks);
    }
    expect(result.groupFreezeMs).toBeGreaterThan(0);
    // The catalog is readable on the host without Temporal.
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'catalog', v3, '--json']);
    expect(JSON.parse(stdout)).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ snapshotId: result.snapshotId, group: 'real', disks: result.vms[2].disks }),
      ]),
    );
  });

  it("resumes every VM and restores every chain when one VM's snapshot fails", async () => {
    const [, , , v4, v5, v6] = fleet.names;
    const before = { [v4]: await sources(v4), [v5]: await sources(v5), [v6]: await sources(v6) };
    failNext.add(v5);
    const result = await snapshotGroup(client, {
      vms: [
        { domain: v4, host: hostB },
        { domain: v5, host: hostA },
        { domain: v6, host: hostB },
      ],
    });
    expect(result.status).toBe('failed');
    expect(result.vms.find((v) => v.domain === v5)!.error).toContain('injected snapshot failure');
    expect(result.vms.find((v) => v.domain === v4)!.outcome).toBe('rolled-back');
    for (const vm of [v4, v5, v6]) {
      expect(await state(vm)).toBe('running');
      expect(await sources(vm)).toEqual(before[vm]);
    }
    for (const v of result.vms) for (const d of v.disks) expect(existsSync(d.overlay)).toBe(false);
  });

  it('leaves a VM paused beforehand paused and snapshots a shut-off VM without starting it', async () => {
    const [, , , , , , v7, v8] = fleet.names;
    await (await fleet.conn.lookupByName(v7)).suspend();
    await (await fleet.conn.lookupByName(v8)).destroy();
    try {
      const result = await snapshotGroup(client, {
        vms: [
          { domain: v7, host: hostA },
          { domain: v8, host: hostB },
        ],
      });
      expect(result.status).toBe('completed');
      expect(await state(v7)).toBe('paused');
      expect(await state(v8)).toBe('shutoff');
      expect(result.vms.map((v) => [v.domain, v.pausedByUs, v.stateBefore])).toEqual([
        [v7, false, 'paused'],
        [v8, false, 'shutoff'],
      ]);
      for (const v of result.vms) {
        const now = await sources(v.domain);
        for (const d of v.disks) expect(now[d.target]).toBe(d.overlay);
      }
    } finally {
      await (await fleet.conn.lookupByName(v7)).resume();
      await (await fleet.conn.lookupByName(v8)).create();
    }
  });

  describe('--quiesce through the QEMU guest agent', () => {
    let agentFleet: VmFleet;

    beforeAll(async () => {
      // An agent channel, but no OS and so no agent answering on it.
      agentFleet = await VmFleet.create({
        prefix: 'gs-agent',
        count: 1,
        extraDevices: "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
      });
    });

    afterAll(async () => {
      await agentFleet?.destroy();
    });

    it('rejects --quiesce agent for a VM without an agent channel, before pausing anything', async () => {
      const [v1] = fleet.names;
      const before = await sources(v1);
      await expect(snapshotGroup(client, { quiesce: 'agent', vms: [{ domain: v1, host: hostA }] })).rejects.toThrow(
        /has no QEMU guest agent channel, required by --quiesce agent/,
      );
      expect(await sources(v1)).toEqual(before);
    });

    it('fails clearly with --quiesce agent when the agent does not answer, leaving the VM running and unchanged', async () => {
      const [vm] = agentFleet.names;
      const result = await snapshotGroup(client, { quiesce: 'agent', vms: [{ domain: vm, host: hostB }] });
      expect(result.status).toBe('failed');
      expect(result.vms[0].error).toMatch(/agent/i);
      expect(result.vms[0]).toMatchObject({ pausedByUs: false, outcome: 'not-snapshotted' });
      expect(await agentFleet.conn.lookupByName(vm).then((d) => d.state())).toMatchObject({ state: 'running' });
    });

    it('falls back to a crash-consistent snapshot with --quiesce agent-or-crash', async () => {
      const [vm] = agentFleet.names;
      const result = await snapshotGroup(client, { quiesce: 'agent-or-crash', vms: [{ domain: vm, host: hostB }] });
      expect(result.status).toBe('completed');
      expect(result.vms[0]).toMatchObject({
        quiesced: false,
        pausedByUs: true,
        outcome: 'snapshotted',
        state: 'running',
      });
    });
  });

  describe('with a slow second host holding the cross-host barrier', () => {
    let slow: FakeHost;
    let slowHosts: RunningHosts;

    beforeAll(async () => {
      // Slow to pause: the real VMs wait, paused, at the barrier (it releases once every VM of the
      // group is paused, or, in the old order, snapshotted).
      slow = new FakeHost(uniqueId('slow'), { latencyMs: { suspend: 3000 } });
      slowHosts = await startHosts([slow], { workflows: false });
    });

    afterAll(async () => {
      await slowHosts?.stop();
      slow?.cleanup();
    });

    const waitPaused = async (names: string[]) => {
      const deadline = Date.now() + 30_000;
      while (!(await Promise.all(names.map(state))).every((s) => s === 'paused')) {
        if (Date.now() > deadline) throw new Error(`${names.join(', ')} never paused`);
        await new Promise((r) => setTimeout(r, 5));
      }
    };

    /** Polls until every VM runs again; returns when each was first seen running (epoch ms). */
    const watchResumed = async (names: string[], timeoutMs: number) => {
      const seen: Record<string, number> = {};
      const deadline = Date.now() + timeoutMs;
      while (Object.keys(seen).length < names.length && Date.now() < deadline) {
        for (const n of names) if (!seen[n] && (await state(n)) === 'running') seen[n] = Date.now();
        await new Promise((r) => setTimeout(r, 20));
      }
      return seen;
    };

    it('compensates when cancelled mid-freeze: every VM running, chains as before', async () => {
      const [v1, v2] = fleet.names;
      const before = { [v1]: await sources(v1), [v2]: await sources(v2) };
      const fakeVm = uniqueId('f');
      slow.addVm(fakeVm);
      const handle = await startGroupSnapshot(client, {
        vms: [
          { domain: v1, host: hostA },
          { domain: v2, host: hostB },
          { domain: fakeVm, host: slow.hostId },
        ],
      });
      await waitPaused([v1, v2]);
      await handle.cancel();
      await expect(groupSnapshotResult(handle)).rejects.toThrow();
      expect((await handle.describe()).status.name).toBe('CANCELLED');
      for (const vm of [v1, v2]) {
        expect(await state(vm)).toBe('running');
        expect(await sources(vm)).toEqual(before[vm]);
      }
      expect(slow.state(fakeVm)).toBe('running');
    });

    it('resumes VMs by the deadline when their host worker is SIGKILLed mid-freeze; the saga compensates once it is back', async () => {
      const [, , v3, v4] = fleet.names;
      const before = { [v3]: await sources(v3), [v4]: await sources(v4) };
      const killedHost = uniqueId('hk');
      const stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-killed-'));
      const worker = new WorkerProcess(killedHost, stateDir, process.env.GROUPSNAP_TEST_TEMPORAL_ADDRESS!);
      await worker.start(client);
      try {
        const fakeVm = uniqueId('f');
        slow.addVm(fakeVm);
        const maxFreezeMs = 1500;
        const handle = await startGroupSnapshot(client, {
          maxFreezeMs,
          vms: [
            { domain: v3, host: killedHost },
            { domain: v4, host: killedHost },
            { domain: fakeVm, host: slow.hostId },
          ],
        });
        await waitPaused([v3, v4]);
        await worker.kill('SIGKILL');
        const resumedAt = await watchResumed([v3, v4], maxFreezeMs + 5000);
        const journal = new FreezeJournal(stateDir);
        for (const vm of [v3, v4]) {
          const rec = journal.list().find((r) => r.domain === vm)!;
          expect(rec.state).toBe('resumed-by-guard');
          expect(resumedAt[vm]).toBeDefined();
          expect(resumedAt[vm] - rec.pausedAtMs).toBeLessThanOrEqual(maxFreezeMs + 1000);
        }
        // The worker comes back: the workflow learns the cut was broken, and undoes the snapshots.
        await worker.start(client);
        const result = await groupSnapshotResult(handle);
        expect(result.status).toBe('failed');
        for (const vm of [v3, v4]) {
          expect(await state(vm)).toBe('running');
          expect(await sources(vm)).toEqual(before[vm]);
          // Killed after its snapshot: rolled back; killed between pause and snapshot: never snapshotted.
          const r = result.vms.find((v) => v.domain === vm)!;
          expect(r).toMatchObject({ resumedByGuard: true, pausedByUs: true });
          expect(['rolled-back', 'not-snapshotted']).toContain(r.outcome);
        }
      } finally {
        await worker.kill('SIGTERM');
        const guard = runningGuardPid(stateDir);
        if (guard) process.kill(guard, 'SIGTERM');
        await rm(stateDir, { recursive: true, force: true });
      }
    });
  });

  it('resumes VMs by the deadline while the Temporal server is down, and fails-and-compensates once it is back', async () => {
    const [, , , , v5, v6] = fleet.names;
    const before = { [v5]: await sources(v5), [v6]: await sources(v6) };
    const dir = await mkdtemp(join(tmpdir(), 'groupsnap-outage-'));
    const dbFilename = join(dir, 'temporal.db');
    const port = await restartablePort();
    let server = await startDevServer({ dbFilename, port });
    const real = uniqueId('hr');
    const slow = new FakeHost(uniqueId('slow'), { latencyMs: { suspend: 2500 } });
    const outageHosts = await startHosts(
      [
        { hostId: real, hypervisor: await openHypervisor() },
        { hostId: slow.hostId, hypervisor: slow.hypervisor },
      ],
      { address: server.address },
    );
    const connection = await Connection.connect({ address: server.address });
    try {
      const outageClient = new Client({ connection });
      const fakeVm = uniqueId('f');
      slow.addVm(fakeVm);
      const maxFreezeMs = 1000;
      const handle = await startGroupSnapshot(outageClient, {
        maxFreezeMs,
        vms: [
          { domain: v5, host: real },
          { domain: v6, host: real },
          { domain: fakeVm, host: slow.hostId },
        ],
      });
      const deadline = Date.now() + 30_000;
      while ((await state(v5)) !== 'paused' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      await server.stop();
      const pausedSeen = Date.now();
      let resumed = false;
      while (Date.now() - pausedSeen < maxFreezeMs + 3000) {
        if ((await state(v5)) === 'running' && (await state(v6)) === 'running') {
          resumed = true;
          break;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(resumed).toBe(true);
      const journal = new FreezeJournal(outageHosts.stateDirs[real]);
      for (const r of journal.list().filter((r) => r.snapshotId === handle.workflowId.split('/')[2])) {
        expect(r.resumedAtMs! - r.pausedAtMs).toBeLessThanOrEqual(maxFreezeMs + 1000);
      }
      server = await startDevServer({ dbFilename, port });
      const result = await groupSnapshotResult(handle);
      expect(result.status).toBe('failed');
      for (const vm of [v5, v6]) {
        expect(await state(vm)).toBe('running');
        expect(await sources(vm)).toEqual(before[vm]);
      }
    } finally {
      await connection.close();
      await outageHosts.stop();
      await server.stop();
      slow.cleanup();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

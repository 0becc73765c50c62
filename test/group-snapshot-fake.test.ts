import { existsSync } from 'node:fs';
import { Client } from '@temporalio/client';
import { BadInputError, groupSnapshotResult, snapshotGroup, startGroupSnapshot } from '../client';
import { parseVmMetadata } from '../common/catalog';
import { FreezeJournal } from '../activities/freeze-journal';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { FakeHost } from './helpers/fake-hosts';
import { startHosts, WIRINGS, type RunningHosts } from './helpers/workers';
import { maybeRecordHistory } from './helpers/histories';
import { DEFAULT_UPDATE_BARRIER_MAX_HOSTS as UPDATE_BARRIER_MAX_HOSTS } from '../common/names';

/**
 * The saga against a real Temporal server, with in-memory hypervisors standing in for two hosts: fast, and able
 * to inject failures and latency at any step. The same behaviours are proven on real VMs in
 * group-snapshot-libvirt.test.ts. Every flow runs on both worker wirings: groupsnap's own worker, and plain SDK
 * workers with groupsnap's plugins (test/plugins.test.ts keeps what only the plugins do).
 */
describe.each(WIRINGS)('group snapshot saga (fake hypervisors, real Temporal, %s workers)', (wiring) => {
  let client: Client;
  let close: () => Promise<void>;
  let hostA: FakeHost;
  let hostB: FakeHost;
  let hosts: RunningHosts;

  beforeAll(async () => {
    ({ client, close } = await connectTestClient());
    hostA = new FakeHost(uniqueId('fa'), { latencyMs: { suspend: 2, snapshot: 20, resume: 2 } });
    hostB = new FakeHost(uniqueId('fb'), { latencyMs: { suspend: 2, snapshot: 20, resume: 2 } });
    hosts = await startHosts([hostA, hostB], { wiring });
  });

  afterAll(async () => {
    await hosts?.stop();
    await close?.();
    hostA?.cleanup();
    hostB?.cleanup();
  });

  const vmsOn = (host: FakeHost, names: string[]) => names.map((domain) => ({ domain, host: host.hostId }));

  it('snapshots 3 VMs x 2 disks over 2 hosts and resumes them all, cataloguing the snapshot on each VM', async () => {
    const [a1, a2, b1] = [uniqueId('a1'), uniqueId('a2'), uniqueId('b1')];
    hostA.addVm(a1);
    hostA.addVm(a2);
    hostB.addVm(b1);
    const result = await snapshotGroup(client, {
      group: 'g1',
      vms: [...vmsOn(hostA, [a1, a2]), ...vmsOn(hostB, [b1])],
    });

    expect(result.status).toBe('completed');
    expect(result.vms).toHaveLength(3);
    for (const [host, vm] of [
      [hostA, a1],
      [hostA, a2],
      [hostB, b1],
    ] as const) {
      expect(host.state(vm)).toBe('running');
      const r = result.vms.find((v) => v.domain === vm)!;
      expect(r).toMatchObject({ outcome: 'snapshotted', pausedByUs: true, stateBefore: 'running', state: 'running' });
      expect(r.freezeMs).toBeGreaterThan(0);
      expect(r.disks.map((d) => d.target)).toEqual(['vda', 'vdb']);
      for (const d of r.disks) {
        // The snapshot point is the old active image, now the backing file of the new overlay.
        expect(host.chain(vm, d.target)).toEqual([d.image, d.overlay]);
        expect(d.overlay).toContain(result.snapshotId);
      }
      const meta = parseVmMetadata(await host.hypervisor.getMetadata(vm));
      expect(meta.snapshots).toEqual([
        expect.objectContaining({ snapshotId: result.snapshotId, group: 'g1', disks: r.disks }),
      ]);
      expect(existsSync(`${host.dir}/${vm}.${result.snapshotId}.manifest.json`)).toBe(true);
    }
    expect(result.groupFreezeMs).toBeGreaterThanOrEqual(result.maxVmFreezeMs);
    expect(result.workflowId).toBe(`group-snapshot/g1/${result.snapshotId}`);
    if (wiring === 'plain') await maybeRecordHistory(client, result.workflowId, 'completed-two-hosts');
  });

  it('resumes every paused VM and undoes taken snapshots when one VM snapshot fails', async () => {
    const [a1, a2, b1] = [uniqueId('a1'), uniqueId('a2'), uniqueId('b1')];
    hostA.addVm(a1);
    hostA.addVm(a2);
    hostB.addVm(b1);
    hostB.hypervisor.failOn('snapshot', b1);
    const result = await snapshotGroup(client, { vms: [...vmsOn(hostA, [a1, a2]), ...vmsOn(hostB, [b1])] });

    expect(result.status).toBe('failed');
    expect(result.error).toContain('injected snapshot failure');
    for (const [host, vm] of [
      [hostA, a1],
      [hostA, a2],
      [hostB, b1],
    ] as const) {
      expect(host.state(vm)).toBe('running');
      expect(host.chain(vm)).toHaveLength(1);
    }
    expect(result.vms.find((v) => v.domain === a1)!.outcome).toBe('rolled-back');
    expect(result.vms.find((v) => v.domain === b1)).toMatchObject({ outcome: 'not-snapshotted', state: 'running' });
    expect(result.vms.find((v) => v.domain === b1)!.error).toContain('injected snapshot failure');
    // No overlay file of the failed run is left behind.
    for (const v of result.vms) for (const d of v.disks) expect(existsSync(d.overlay)).toBe(false);
    if (wiring === 'plain') await maybeRecordHistory(client, result.workflowId, 'failed-compensated');
  });

  it("undoes only its own overlay, keeping the VM's earlier snapshots in the chain", async () => {
    const [vm, bad] = [uniqueId('vm'), uniqueId('bad')];
    hostA.addVm(vm);
    hostB.addVm(bad);
    const first = await snapshotGroup(client, { vms: vmsOn(hostA, [vm]) });
    expect(first.status).toBe('completed');
    const chainAfterFirst = hostA.chain(vm);
    hostB.hypervisor.failOn('snapshot', bad);
    const second = await snapshotGroup(client, { vms: [...vmsOn(hostA, [vm]), ...vmsOn(hostB, [bad])] });
    expect(second.status).toBe('failed');
    expect(second.vms.find((v) => v.domain === vm)!.outcome).toBe('rolled-back');
    expect(hostA.chain(vm)).toEqual(chainAfterFirst);
    expect(existsSync(chainAfterFirst[1])).toBe(true);
  });

  it('leaves a VM that was paused beforehand paused, and snapshots a shut-off VM without pausing it', async () => {
    const [running, paused, off] = [uniqueId('run'), uniqueId('paused'), uniqueId('off')];
    hostA.addVm(running);
    hostA.addVm(paused, 'paused');
    hostB.addVm(off, 'shutoff');
    const result = await snapshotGroup(client, { vms: [...vmsOn(hostA, [running, paused]), ...vmsOn(hostB, [off])] });

    expect(result.status).toBe('completed');
    expect(hostA.state(paused)).toBe('paused');
    expect(hostB.state(off)).toBe('shutoff');
    expect(hostA.state(running)).toBe('running');
    expect(result.vms.find((v) => v.domain === paused)).toMatchObject({ pausedByUs: false, outcome: 'snapshotted' });
    expect(result.vms.find((v) => v.domain === off)).toMatchObject({ pausedByUs: false, outcome: 'snapshotted' });
    expect(hostA.hypervisor.calls).not.toContain(`suspend:${paused}`);
    expect(hostA.hypervisor.calls).not.toContain(`resume:${paused}`);
    expect(hostB.hypervisor.calls).not.toContain(`suspend:${off}`);
    expect(hostB.chain(off)).toHaveLength(2);
  });

  it('resumes a VM whose pause call failed after taking effect, and leaves one paused by someone else alone', async () => {
    const [lost, other] = [uniqueId('lost'), uniqueId('other')];
    hostA.addVm(lost);
    hostA.addVm(other);
    // The pause takes effect but its reply is lost; the other VM is paused by its owner just before ours.
    const dom = hostA.hypervisor.domains.get(lost)!;
    hostA.hypervisor.failOn('suspend', lost, new Error('connection reset'));
    const realSuspend = hostA.hypervisor.suspend.bind(hostA.hypervisor);
    hostA.hypervisor.suspend = async (name: string) => {
      if (name === lost) dom.state = 'paused';
      if (name === other) hostA.hypervisor.domains.get(other)!.state = 'paused';
      return realSuspend(name);
    };
    try {
      const result = await snapshotGroup(client, { vms: vmsOn(hostA, [lost, other]) });
      expect(result.status).toBe('failed');
      expect(hostA.state(lost)).toBe('running');
      expect(hostA.state(other)).toBe('paused');
      expect(result.vms.find((v) => v.domain === lost)).toMatchObject({ pausedByUs: true, state: 'running' });
      expect(result.vms.find((v) => v.domain === other)).toMatchObject({ pausedByUs: false });
    } finally {
      hostA.hypervisor.suspend = realSuspend;
    }
  });

  it(`releases a group over more than ${UPDATE_BARRIER_MAX_HOSTS} hosts through thaw activities`, async () => {
    const many = Array.from({ length: UPDATE_BARRIER_MAX_HOSTS + 1 }, (_, i) => new FakeHost(uniqueId(`m${i}`)));
    const extra = await startHosts(many, { workflows: false, wiring });
    try {
      const vms = many.map((h) => {
        const vm = uniqueId('vm');
        h.addVm(vm);
        return { domain: vm, host: h.hostId };
      });
      const result = await snapshotGroup(client, { vms });
      expect(result.status).toBe('completed');
      for (const [i, h] of many.entries()) {
        expect(h.state(vms[i].domain)).toBe('running');
        expect(h.chain(vms[i].domain)).toHaveLength(2);
        expect(h.hypervisor.calls.filter((c) => c.startsWith('resume:'))).toHaveLength(1);
      }
      expect(result.vms.every((v) => v.freezeMs! > 0 && v.state === 'running')).toBe(true);
    } finally {
      await extra.stop();
      for (const h of many) h.cleanup();
    }
  });

  it('undoes a shut-off VM snapshot by pointing its disks back at their images', async () => {
    const [off, bad] = [uniqueId('off'), uniqueId('bad')];
    hostB.addVm(off, 'shutoff');
    hostA.addVm(bad);
    hostA.hypervisor.failOn('snapshot', bad);
    const result = await snapshotGroup(client, { vms: [...vmsOn(hostB, [off]), ...vmsOn(hostA, [bad])] });
    expect(result.status).toBe('failed');
    expect(hostB.chain(off)).toHaveLength(1);
    expect(result.vms.find((v) => v.domain === off)!.outcome).toBe('rolled-back');
  });

  describe('bad input is rejected before anything is touched', () => {
    const expectRejected = async (input: Parameters<typeof snapshotGroup>[1], message: RegExp) => {
      const before = [...hostA.hypervisor.calls, ...hostB.hypervisor.calls].filter((c) => !c.startsWith('describe'));
      await expect(snapshotGroup(client, input)).rejects.toThrow(BadInputError);
      await expect(snapshotGroup(client, input)).rejects.toThrow(message);
      const after = [...hostA.hypervisor.calls, ...hostB.hypervisor.calls].filter((c) => !c.startsWith('describe'));
      expect(after).toEqual(before);
    };

    it('an unknown VM', async () => {
      const ok = uniqueId('ok');
      hostA.addVm(ok);
      await expectRejected({ vms: [...vmsOn(hostA, [ok, 'no-such-vm'])] }, /VM "no-such-vm" not found on host/);
      expect(hostA.state(ok)).toBe('running');
    });

    it('an empty group, a VM listed twice, an unsafe label or snapshot id, a bad max freeze', async () => {
      const vm = uniqueId('x');
      hostA.addVm(vm);
      await expectRejected({ vms: [] }, /group is empty/);
      await expectRejected({ vms: vmsOn(hostA, [vm, vm]) }, /listed twice/);
      await expectRejected({ vms: vmsOn(hostA, [vm]), label: '../etc' }, /label "\.\.\/etc" is not safe/);
      await expectRejected({ vms: vmsOn(hostA, [vm]), snapshotId: 'a/b' }, /snapshot id "a\/b" is not safe/);
      await expectRejected({ vms: vmsOn(hostA, [vm]), maxFreezeMs: 5 }, /max freeze/);
    });

    it('a disk that is not a file-backed qcow2/raw disk, naming it', async () => {
      const vm = uniqueId('blk');
      hostA.addVm(vm);
      hostA.hypervisor.domains.get(vm)!.disks[1].type = 'block';
      await expectRejected({ vms: vmsOn(hostA, [vm]) }, /disk vdb: a block disk with format qcow2 is not supported/);
    });

    it('an overlay file that already exists', async () => {
      const vm = uniqueId('ov');
      hostA.addVm(vm);
      const snapshotId = uniqueId('snap');
      const { writeFileSync } = await import('node:fs');
      writeFileSync(`${hostA.dir}/${vm}.vda.${snapshotId}.qcow2`, '');
      await expectRejected({ vms: vmsOn(hostA, [vm]), snapshotId }, /overlay .* already exists/);
    });

    it('a host no worker polls, fast', async () => {
      const vm = uniqueId('x');
      hostA.addVm(vm);
      const started = Date.now();
      await expectRejected(
        { vms: [...vmsOn(hostA, [vm]), { domain: 'd', host: 'no-such-host' }] },
        /no worker polls host no-such-host/,
      );
      expect(Date.now() - started).toBeLessThan(10_000);
    });
  });

  it('never runs the freeze windows of two snapshots sharing a VM at the same time', async () => {
    const [shared, onlyA, onlyB] = [uniqueId('shared'), uniqueId('a'), uniqueId('b')];
    hostA.addVm(shared);
    hostA.addVm(onlyA);
    hostB.addVm(onlyB);
    const runs = await Promise.all([
      snapshotGroup(client, { vms: [...vmsOn(hostA, [shared, onlyA]), ...vmsOn(hostB, [onlyB])] }),
      snapshotGroup(client, { vms: [...vmsOn(hostB, [onlyB]), ...vmsOn(hostA, [shared])] }),
      snapshotGroup(client, { vms: vmsOn(hostA, [shared]) }),
    ]);
    expect(runs.map((r) => r.status)).toEqual(['completed', 'completed', 'completed']);
    const journal = new FreezeJournal(hosts.stateDirs[hostA.hostId]);
    const windows = journal
      .list()
      .filter((r) => r.domain === shared)
      .map((r) => [r.pausedAtMs, r.resumedAtMs!] as const)
      .sort((x, y) => x[0] - y[0]);
    expect(windows).toHaveLength(3);
    for (let i = 1; i < windows.length; i++) expect(windows[i][0]).toBeGreaterThanOrEqual(windows[i - 1][1]);
    expect(hostA.chain(shared)).toHaveLength(4);
  });

  /** Runs `fn` with an extra fake host whose snapshots take `snapshotMs`, holding the cross-host barrier. */
  async function withSlowHost(snapshotMs: number, fn: (slow: FakeHost, extra: RunningHosts) => Promise<void>) {
    const slow = new FakeHost(uniqueId('slow'), { latencyMs: { snapshot: snapshotMs } });
    const extra = await startHosts([slow], { workflows: false, wiring });
    try {
      await fn(slow, extra);
    } finally {
      await extra.stop();
      slow.cleanup();
    }
  }

  it('compensates when the workflow is cancelled mid-freeze', async () => {
    await withSlowHost(1500, async (slow) => {
      const [a1, s1] = [uniqueId('a1'), uniqueId('s1')];
      hostA.addVm(a1);
      slow.addVm(s1);
      const handle = await startGroupSnapshot(client, { vms: [...vmsOn(hostA, [a1]), ...vmsOn(slow, [s1])] });
      await waitFor(() => slow.state(s1) === 'paused' && hostA.chain(a1).length === 2);
      await handle.cancel();
      await expect(groupSnapshotResult(handle)).rejects.toThrow();
      expect((await handle.describe()).status.name).toBe('CANCELLED');
      expect(hostA.state(a1)).toBe('running');
      expect(slow.state(s1)).toBe('running');
      expect(hostA.chain(a1)).toHaveLength(1);
      expect(slow.chain(s1)).toHaveLength(1);
      if (wiring === 'plain') await maybeRecordHistory(client, handle.workflowId, 'cancelled-mid-freeze');
    });
  });

  it('fails and compensates when the freeze deadline passes, resuming VMs by the deadline', async () => {
    await withSlowHost(1200, async (slow, extra) => {
      const [a1, s1] = [uniqueId('a1'), uniqueId('s1')];
      hostA.addVm(a1);
      slow.addVm(s1);
      const result = await snapshotGroup(client, {
        vms: [...vmsOn(hostA, [a1]), ...vmsOn(slow, [s1])],
        maxFreezeMs: 400,
      });
      expect(result.status).toBe('failed');
      expect(result.error).toMatch(/deadline/);
      expect(hostA.state(a1)).toBe('running');
      expect(slow.state(s1)).toBe('running');
      expect(hostA.chain(a1)).toHaveLength(1);
      expect(slow.chain(s1)).toHaveLength(1);
      // Each VM was running again within max-freeze + 1 s of its pause.
      for (const h of [hostA, slow]) {
        const journal = new FreezeJournal((h === slow ? extra : hosts).stateDirs[h.hostId]);
        for (const r of journal.list().filter((r) => r.snapshotId === result.snapshotId)) {
          expect(r.resumedAtMs! - r.pausedAtMs).toBeLessThan(400 + 1000);
        }
      }
      if (wiring === 'plain') await maybeRecordHistory(client, result.workflowId, 'failed-deadline');
    });
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

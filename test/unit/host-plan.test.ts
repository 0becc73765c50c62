import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { createHostContext, type HostContext } from '../../activities/host/context';
import { createLeaseActivities } from '../../activities/host/leases';
import { createPlanActivities, planOne, replan } from '../../activities/host/plan';
import { overlayPath } from '../../common/host-types';
import { BAD_INPUT } from '../../common/failures';
import type { DomainDescription } from '../../hypervisor/hypervisor';
import { FakeHost } from '../helpers/fake-hosts';

/** Planning and leases on this host (activities/host/plan.ts, leases.ts), on a fake host. */
describe('plan', () => {
  const disk = (target: string, source: string | undefined, extra: Partial<DomainDescription['disks'][0]> = {}) => ({
    target,
    device: 'disk',
    type: 'file',
    format: 'qcow2',
    source,
    readonly: false,
    ...extra,
  });
  const described = (disks: DomainDescription['disks'], state: DomainDescription['state'] = 'running') => ({
    name: 'web',
    uuid: 'u1',
    state,
    persistent: true,
    hasGuestAgent: false,
    disks,
  });

  it('skips CD-ROMs, read-only and empty drives, names each overlay, and refuses what it cannot snapshot', () => {
    const problems: string[] = [];
    const vm = planOne(
      described([
        disk('vda', '/nowhere/web.qcow2'),
        disk('hdc', '/iso/x.iso', { device: 'cdrom' }),
        disk('vdb', '/nowhere/ro.qcow2', { readonly: true }),
        disk('vdc', undefined),
        disk('vdd', '/dev/sdb', { type: 'block', format: 'raw' }),
      ]),
      's1',
      'agent',
      problems,
    );
    expect(vm.disks).toEqual([
      { target: 'vda', image: '/nowhere/web.qcow2', overlay: overlayPath('/nowhere/web.qcow2', 'web', 'vda', 's1') },
    ]);
    expect(vm.skip).toEqual(['hdc', 'vdb', 'vdc']);
    expect(vm.quiesce).toBe(false);
    expect(problems).toEqual([
      'VM web disk vdd: a block disk with format raw is not supported (only file-backed qcow2 or raw disks)',
      'VM web has no QEMU guest agent channel, required by --quiesce agent',
    ]);
  });

  describe('on a fake host', () => {
    let host: FakeHost;
    let stateDir: string;
    let ctx: HostContext;

    beforeEach(() => {
      host = new FakeHost('plan');
      stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-plan-'));
      ctx = createHostContext({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
    });

    afterEach(() => {
      ctx.timers.disarmAll();
      host.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    });

    it('refuses an overlay that already exists, and an unknown VM, naming both, changing nothing', async () => {
      host.addVm('a');
      const image = host.chain('a', 'vda')[0];
      writeFileSync(overlayPath(image, 'a', 'vda', 's1'), '');
      const plan = createPlanActivities(ctx).planVms({ snapshotId: 's1', domains: ['a', 'ghost'], quiesce: 'none' });
      await expect(plan).rejects.toThrow(/VM "ghost" not found on host plan; VM a disk vda: overlay .* already exists/);
      await expect(plan).rejects.toMatchObject({ type: BAD_INPUT, nonRetryable: true });
      expect(host.hypervisor.calls.filter((c) => !c.startsWith('describe:'))).toEqual([]);
    });

    it('under leases: refuses for good a run that does not hold them, and prepares overlays for one that does', async () => {
      host.addVm('a');
      const leases = createLeaseActivities(ctx);
      const { planVms } = createPlanActivities(ctx);
      const req = {
        snapshotId: 's1',
        domains: ['a'],
        quiesce: 'none' as const,
        leaseOwner: 'run-1',
        prepareOverlays: true,
      };
      await expect(planVms(req)).rejects.toMatchObject({ type: 'LeaseLost', nonRetryable: true });
      await leases.acquireLocks({ owner: 'run-1', domains: ['a'], ttlMs: 60_000 });
      const [vm] = await planVms(req);
      expect(vm.prepared).toBe(true);
      for (const d of vm.disks) expect(host.hypervisor.image(d.overlay)?.backing).toBe(d.image);
    });

    it('plans again unchanged, and says what changed when a disk moved on since planning', async () => {
      host.addVm('a');
      const [vm] = await createPlanActivities(ctx).planVms({ snapshotId: 's1', domains: ['a'], quiesce: 'none' });
      await expect(replan(ctx, vm, 's1', 'none')).resolves.toEqual(vm);
      host.hypervisor.domains.get('a')!.disks[0].chain.push('/elsewhere/a-vda.other.qcow2');
      await expect(replan(ctx, vm, 's1', 'none')).rejects.toThrow(/the disks of a changed since planning/);
    });

    it('a lease held by another run is busy (retryable); a bad lease time is bad input', async () => {
      host.addVm('a');
      const leases = createLeaseActivities(ctx);
      await leases.acquireLocks({ owner: 'run-1', domains: ['a'], ttlMs: 60_000 });
      const busy = leases.acquireLocks({ owner: 'run-2', domains: ['a'], ttlMs: 60_000 });
      await expect(busy).rejects.toBeInstanceOf(ApplicationFailure);
      await expect(busy).rejects.toMatchObject({ type: 'LockBusyError', nonRetryable: false });
      await expect(leases.acquireLocks({ owner: 'run-2', domains: ['a'], ttlMs: 10 })).rejects.toMatchObject({
        type: BAD_INPUT,
      });
      await leases.releaseLocks({ owner: 'run-1', domains: ['a'] });
      await expect(leases.acquireLocks({ owner: 'run-2', domains: ['a'], ttlMs: 60_000 })).resolves.toBeUndefined();
    });
  });
});

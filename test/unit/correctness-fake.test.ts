import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { parseVmMetadata } from '../../common/catalog';
import { DomainLocks, LeaseLostError, LockBusyError } from '../../activities/domain-locks';
import { FreezeJournal } from '../../activities/freeze-journal';
import { createHost } from '../../activities/host-activities';
import { overlayPath, type PlannedVm } from '../../common/host-types';
import { DeadlineTimers, recoverFreezes } from '../../activities/resume';
import { BAD_INPUT } from '../../common/failures';
import { HypervisorError } from '../../hypervisor/errors';
import { FakeHypervisor } from '../../hypervisor/fake-hypervisor';
import { isGuardOf } from '../../worker/guard';

/**
 * Issue 13 on the fake hypervisor: every recorded point is the state it names, under concurrency, crashes and
 * hostile input. The host activities are called directly (as a worker would run them), without Temporal.
 */
describe('every recorded snapshot point is the right one (host side, fake hypervisor)', () => {
  let dir: string;
  let stateDir: string;
  let hv: FakeHypervisor;
  let host: ReturnType<typeof createHost>;

  const file = (name: string) => {
    const f = join(dir, name);
    closeSync(openSync(f, 'a'));
    return f;
  };
  const addVm = (name: string, opts: { agent?: boolean } = {}) =>
    hv.addDomain({
      name,
      state: 'running',
      hasGuestAgent: opts.agent ?? false,
      disks: [{ target: 'vda', format: 'qcow2', type: 'file', device: 'disk', chain: [file(`${name}.vda.qcow2`)] }],
    });
  const active = (domain: string) => hv.domains.get(domain)!.disks[0].chain.at(-1)!;

  /** One run's whole snapshot of `domains` on this host: plan, lease, freeze, catalog, release. */
  async function snapshot(run: string, snapshotId: string, domains: string[], plans?: PlannedVm[]) {
    const a = host.activities;
    plans ??= await a.planVms({ snapshotId, domains, quiesce: 'none' });
    await a.acquireLocks({ owner: run, domains, ttlMs: 60_000 });
    try {
      const reports = await a.freezeVms({
        snapshotId,
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'h',
        quiesce: 'none',
        leaseOwner: run,
      });
      if (reports.some((r) => r.error)) return { plans, reports };
      await a.recordCatalog({
        entry: { snapshotId, group: 'g', createdAt: new Date().toISOString() },
        host: 'h',
        vms: plans.map((p) => ({ domain: p.domain, uuid: p.uuid, disks: p.disks })),
        leaseOwner: run,
      });
      return { plans, reports };
    } finally {
      await a.releaseLocks({ owner: run, domains });
    }
  }

  const catalog = async (domain: string) => parseVmMetadata(await hv.getMetadata(domain)).snapshots;

  async function expectBadInput(p: Promise<unknown>, text: RegExp): Promise<void> {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect((err as ApplicationFailure).type).toBe(BAD_INPUT);
    expect((err as Error).message).toMatch(text);
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'groupsnap-correct-'));
    stateDir = join(dir, 'state');
    hv = new FakeHypervisor();
    host = createHost({ hypervisor: hv, hostId: 'h', stateDir });
  });

  afterEach(async () => {
    host.shutdown();
    await rm(dir, { recursive: true, force: true });
  });

  describe('1. plan under the lease', () => {
    it('a freeze planned before another run snapshotted the VM refuses, pauses nothing and creates nothing', async () => {
      addVm('db');
      const stale = await host.activities.planVms({ snapshotId: 's-a', domains: ['db'], quiesce: 'none' });
      // Another run (another group sharing the VM) takes its snapshot in between.
      await snapshot('run-b', 's-b', ['db']);
      const imageBefore = active('db');
      const { reports } = await snapshot('run-a', 's-a', ['db'], stale);
      expect(reports[0].error).toMatch(/changed since planning/);
      expect(reports[0].pausedByUs).toBe(false);
      expect(hv.domains.get('db')!.state).toBe('running');
      expect(active('db')).toBe(imageBefore);
      expect(existsSync(stale[0].disks[0].overlay)).toBe(false);
      expect((await catalog('db')).map((s) => s.snapshotId)).toEqual(['s-b']);
    });

    it('planned again under the lease, the run snapshots on top of the other run, and names the file under it', async () => {
      addVm('db');
      await snapshot('run-b', 's-b', ['db']);
      const { plans, reports } = await snapshot('run-a', 's-a', ['db']);
      expect(reports[0].snapshotted).toBe(true);
      const [disk] = plans[0].disks;
      expect(hv.image(disk.overlay)!.backing).toBe(disk.image);
      const entry = (await catalog('db')).find((s) => s.snapshotId === 's-a')!;
      expect(entry.disks[0].image).toBe(hv.image(entry.disks[0].overlay)!.backing);
    });

    it('the catalog refuses a disk whose overlay is not directly over the image it names', async () => {
      addVm('db');
      const { plans } = await snapshot('run-b', 's-b', ['db']);
      const wrong = plans[0].disks.map((d) => ({ ...d, image: join(dir, 'other.qcow2') }));
      wrong[0].overlay = overlayPath(wrong[0].image, 'db', 'vda', 's-b');
      await host.activities.acquireLocks({ owner: 'run-b', domains: ['db'], ttlMs: 60_000 });
      await expect(
        host.activities.recordCatalog({
          entry: { snapshotId: 's-b', group: 'g', createdAt: new Date().toISOString() },
          host: 'h',
          vms: [{ domain: 'db', uuid: 'u', disks: wrong }],
          leaseOwner: 'run-b',
        }),
      ).rejects.toThrow(/not in the VM's chain/);
    });
  });

  describe('2. compensation removes what it undoes', () => {
    it('undo removes the catalog entry and manifest, and a late catalog write cannot bring them back', async () => {
      addVm('db');
      const { plans } = await snapshot('run-a', 's-a', ['db']);
      const manifest = join(dir, 'db.s-a.manifest.json');
      expect(existsSync(manifest)).toBe(true);
      await host.activities.acquireLocks({ owner: 'run-a', domains: ['db'], ttlMs: 60_000 });
      const [undo] = await host.activities.undoSnapshots({
        snapshotId: 's-a',
        vms: [{ domain: 'db', disks: plans[0].disks }],
        leaseOwner: 'run-a',
      });
      expect(undo).toMatchObject({ hadSnapshot: true, rolledBack: true });
      expect(await catalog('db')).toEqual([]);
      expect(existsSync(manifest)).toBe(false);
      // The catalog activity of the same run, retried late (it raced the cancellation): refused, nothing written.
      await expect(
        host.activities.recordCatalog({
          entry: { snapshotId: 's-a', group: 'g', createdAt: new Date().toISOString() },
          host: 'h',
          vms: [{ domain: 'db', uuid: 'u', disks: plans[0].disks }],
          leaseOwner: 'run-a',
        }),
      ).rejects.toThrow(/was undone/);
      expect(await catalog('db')).toEqual([]);
      expect(existsSync(manifest)).toBe(false);
    });
  });

  describe('3. quiesced guests are thawed on every path', () => {
    it('a worker that dies between fsFreeze and the resume leaves a record the guard closes, thawing the guest', async () => {
      addVm('db', { agent: true });
      const plans = await host.activities.planVms({ snapshotId: 's-q', domains: ['db'], quiesce: 'agent-or-crash' });
      await host.activities.acquireLocks({ owner: 'run-q', domains: ['db'], ttlMs: 60_000 });
      // The worker "dies" while the pause hangs: its timers are gone, nothing else runs in it.
      let die!: (err: Error) => void;
      const slow = new Promise<void>((_, reject) => (die = reject));
      const suspend = hv.suspend.bind(hv);
      hv.suspend = () => slow;
      void host.activities.freezeVms({
        snapshotId: 's-q',
        vms: plans,
        maxFreezeMs: 200,
        release: 'local',
        host: 'h',
        quiesce: 'agent-or-crash',
        leaseOwner: 'run-q',
      });
      const until = Date.now() + 2000;
      while (!hv.fsFrozen.has('db') && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      expect(hv.fsFrozen.has('db')).toBe(true);
      host.shutdown();
      hv.suspend = suspend;
      await new Promise((r) => setTimeout(r, 250));
      // The guard (or a restarted worker) finds the record and thaws the guest.
      const { closed, failed } = await recoverFreezes(hv, new FreezeJournal(stateDir), undefined, 'resumed-by-guard');
      expect(failed).toEqual([]);
      expect(closed.map((r) => r.domain)).toEqual(['db']);
      expect(hv.fsFrozen.has('db')).toBe(false);
      expect(new FreezeJournal(stateDir).read('s-q', 'db')).toMatchObject({ fsFrozen: true, fsThawed: true });
      die(new Error('the worker is gone'));
    });

    it('a normal quiesced snapshot leaves the guest thawed and its record closed', async () => {
      addVm('db', { agent: true });
      const plans = await host.activities.planVms({ snapshotId: 's-q2', domains: ['db'], quiesce: 'agent-or-crash' });
      await host.activities.acquireLocks({ owner: 'run-q2', domains: ['db'], ttlMs: 60_000 });
      const [r] = await host.activities.freezeVms({
        snapshotId: 's-q2',
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'h',
        quiesce: 'agent-or-crash',
        leaseOwner: 'run-q2',
      });
      expect(r).toMatchObject({ quiesced: true, snapshotted: true });
      expect(hv.fsFrozen.has('db')).toBe(false);
      expect(new FreezeJournal(stateDir).listOpen()).toEqual([]);
    });
  });

  describe('4. the guard never gets stuck', () => {
    it('one record it cannot resume does not stop it from resuming the others, nor the worker from starting', async () => {
      addVm('bad');
      addVm('good');
      hv.domains.get('bad')!.state = 'paused';
      hv.domains.get('good')!.state = 'paused';
      const journal = new FreezeJournal(stateDir);
      const now = Date.now();
      for (const domain of ['bad', 'good'])
        journal.write({ snapshotId: 's1', domain, state: 'paused', pausedAtMs: now - 5000, deadlineMs: now - 1000 });
      hv.failOn('resume', 'bad', new HypervisorError('libvirt: internal error', 'bad'));
      const outcome = await recoverFreezes(hv, journal, undefined, 'resumed-by-guard');
      expect(outcome.closed.map((r) => r.domain)).toEqual(['good']);
      expect(outcome.failed.map((f) => f.record.domain)).toEqual(['bad']);
      expect(hv.domains.get('good')!.state).toBe('running');
      // A worker starting now is not stopped by it either, and its timer finishes the job.
      hv.failOn('resume', 'bad', new HypervisorError('still failing', 'bad'));
      const restarted = createHost({ hypervisor: hv, hostId: 'h', stateDir });
      try {
        await expect(restarted.recover()).resolves.toEqual([]);
        const until = Date.now() + 3000;
        while (hv.domains.get('bad')!.state !== 'running' && Date.now() < until)
          await new Promise((r) => setTimeout(r, 20));
        expect(hv.domains.get('bad')!.state).toBe('running');
      } finally {
        restarted.shutdown();
      }
    });

    it('the deadline timer retries a resume that failed (libvirtd restarting) until it succeeds', async () => {
      addVm('db');
      hv.domains.get('db')!.state = 'paused';
      const journal = new FreezeJournal(stateDir);
      const now = Date.now();
      const rec = { snapshotId: 's1', domain: 'db', state: 'paused' as const, pausedAtMs: now, deadlineMs: now + 50 };
      journal.write(rec);
      for (let i = 0; i < 3; i++) hv.failOn('resume', 'db', new HypervisorError('Cannot recv data: Connection reset'));
      const timers = new DeadlineTimers(hv, journal, () => {}, { initial: 20, max: 50 });
      try {
        timers.arm(rec);
        const until = Date.now() + 3000;
        while (hv.domains.get('db')!.state !== 'running' && Date.now() < until)
          await new Promise((r) => setTimeout(r, 10));
        expect(hv.domains.get('db')!.state).toBe('running');
        expect(journal.read('s1', 'db')!.state).toBe('resumed-by-timer');
      } finally {
        timers.disarmAll();
      }
    });

    it('matches the guard of a state dir exactly', () => {
      const args = (dir: string) =>
        ['node', '/x/main.js', 'guard', '--state-dir', dir, '--libvirt-uri', 'q'].join('\0');
      expect(isGuardOf(args('/var/lib/groupsnap/hv-a'), '/var/lib/groupsnap/hv-a')).toBe(true);
      expect(isGuardOf(args('/var/lib/groupsnap/hv-ab'), '/var/lib/groupsnap/hv-a')).toBe(false);
      expect(isGuardOf(args('/var/lib/groupsnap/hv-a'), '/var/lib/groupsnap/hv-ab')).toBe(false);
      expect(isGuardOf(['vim', '/var/lib/groupsnap/hv-a/guard.log'].join('\0'), '/var/lib/groupsnap/hv-a')).toBe(false);
    });
  });

  describe('5. leases are exclusive and live as long as the work', () => {
    it('belong to one owner; a lease that expired and was taken cannot be renewed by its old owner', () => {
      const locks = new DomainLocks(stateDir);
      locks.acquire('run-1', ['a', 'b'], 60_000);
      expect(() => locks.acquire('run-2', ['b', 'c'], 60_000)).toThrow(LockBusyError);
      expect(locks.holder('c')).toBeUndefined(); // all or none
      locks.acquire('run-1', ['a'], 1, Date.now() - 10); // expired
      locks.acquire('run-2', ['a'], 60_000);
      expect(() => locks.renew('run-1', ['a'], 60_000)).toThrow(LeaseLostError);
      expect(locks.holder('a')).toBe('run-2');
    });

    it('keepAlive renews a lease for as long as the work runs', async () => {
      const locks = new DomainLocks(stateDir);
      locks.acquire('run-1', ['a'], 400);
      const stop = locks.keepAlive('run-1', ['a'], 400);
      try {
        await new Promise((r) => setTimeout(r, 1000));
        expect(locks.holder('a')).toBe('run-1');
      } finally {
        stop();
      }
      await new Promise((r) => setTimeout(r, 500));
      expect(locks.holder('a')).toBeUndefined();
    });

    it('the freeze refuses when its run does not hold the leases', async () => {
      addVm('db');
      const plans = await host.activities.planVms({ snapshotId: 's-l', domains: ['db'], quiesce: 'none' });
      await host.activities.acquireLocks({ owner: 'someone-else', domains: ['db'], ttlMs: 60_000 });
      const [r] = await host.activities.freezeVms({
        snapshotId: 's-l',
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'h',
        quiesce: 'none',
        leaseOwner: 'run-l',
      });
      expect(r.error).toMatch(/lease/);
      expect(r.pausedByUs).toBe(false);
      expect(hv.calls.filter((c) => c.startsWith('suspend') || c.startsWith('snapshot'))).toEqual([]);
    });

    it('two deletions of the same snapshot (two runs) never hold the VM at once', async () => {
      addVm('db');
      await snapshot('run-a', 's-a', ['db']);
      await host.activities.acquireLocks({ owner: 'delete-run-1', domains: ['db'], ttlMs: 60_000 });
      await expect(
        host.activities.deleteSnapshot({ owner: 'delete-run-2', snapshotId: 's-a', domain: 'db' }),
      ).rejects.toThrow(/in use by delete-run-1/);
      expect((await catalog('db')).map((s) => s.snapshotId)).toEqual(['s-a']);
    });
  });

  describe('6. metadata updates on one VM are serialised', () => {
    it('a catalog write and a tag change racing on one VM both land', async () => {
      addVm('db');
      const plans = await host.activities.planVms({ snapshotId: 's-m', domains: ['db'], quiesce: 'none' });
      await host.activities.acquireLocks({ owner: 'run-m', domains: ['db'], ttlMs: 60_000 });
      await host.activities.freezeVms({
        snapshotId: 's-m',
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'h',
        quiesce: 'none',
        leaseOwner: 'run-m',
      });
      // Slow metadata reads make the two read-modify-writes overlap.
      const get = hv.getMetadata.bind(hv);
      hv.getMetadata = async (d: string) => {
        const xml = await get(d);
        await new Promise((r) => setTimeout(r, 30));
        return xml;
      };
      await Promise.all([
        host.activities.recordCatalog({
          entry: { snapshotId: 's-m', group: 'g', createdAt: new Date().toISOString() },
          host: 'h',
          vms: plans.map((p) => ({ domain: p.domain, uuid: p.uuid, disks: p.disks })),
          leaseOwner: 'run-m',
        }),
        host.activities.setTags({ domain: 'db', add: ['shop'] }),
      ]);
      const meta = parseVmMetadata(await get('db'));
      expect(meta.tags).toEqual(['shop']);
      expect(meta.snapshots.map((s) => s.snapshotId)).toEqual(['s-m']);
    });
  });

  describe('8. an interrupted block commit is recovered', () => {
    it('undo finishes (pivots) a ready active commit left by a dead worker instead of failing on it', async () => {
      addVm('db');
      const plans = await host.activities.planVms({ snapshotId: 's-c', domains: ['db'], quiesce: 'none' });
      await host.activities.acquireLocks({ owner: 'run-c', domains: ['db'], ttlMs: 60_000 });
      await host.activities.freezeVms({
        snapshotId: 's-c',
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'h',
        quiesce: 'none',
        leaseOwner: 'run-c',
      });
      hv.leaveActiveCommit('db', 'vda', true);
      const [r] = await host.activities.undoSnapshots({
        snapshotId: 's-c',
        vms: [{ domain: 'db', disks: plans[0].disks }],
        leaseOwner: 'run-c',
      });
      expect(r).toMatchObject({ rolledBack: true });
      expect(r.error).toBeUndefined();
      expect(active('db')).toBe(plans[0].disks[0].image);
      expect(hv.jobs.size).toBe(0);
    });

    it('a commit that was not ready is aborted, then done again', async () => {
      addVm('db');
      const plans = await host.activities.planVms({ snapshotId: 's-c2', domains: ['db'], quiesce: 'none' });
      await host.activities.acquireLocks({ owner: 'run-c2', domains: ['db'], ttlMs: 60_000 });
      await host.activities.freezeVms({
        snapshotId: 's-c2',
        vms: plans,
        maxFreezeMs: 5000,
        release: 'local',
        host: 'h',
        quiesce: 'none',
        leaseOwner: 'run-c2',
      });
      hv.leaveActiveCommit('db', 'vda', false);
      const [r] = await host.activities.undoSnapshots({
        snapshotId: 's-c2',
        vms: [{ domain: 'db', disks: plans[0].disks }],
        leaseOwner: 'run-c2',
      });
      expect(r).toMatchObject({ rolledBack: true });
      expect(active('db')).toBe(plans[0].disks[0].image);
      expect(hv.jobs.size).toBe(0);
    });
  });

  describe('9. host activities trust nothing', () => {
    it('undo refuses files that are not the overlays this host makes, and touches nothing', async () => {
      addVm('db');
      const victim = join(dir, 'precious.txt');
      writeFileSync(victim, 'keep me');
      const image = hv.domains.get('db')!.disks[0].chain[0];
      await expectBadInput(
        host.activities.undoSnapshots({
          snapshotId: 's-x',
          vms: [{ domain: 'db', disks: [{ target: 'vda', image, overlay: victim }] }],
          leaseOwner: 'run-x',
        }),
        /not the overlay this host makes/,
      );
      expect(readFileSync(victim, 'utf8')).toBe('keep me');
      await expectBadInput(
        host.activities.undoSnapshots({
          snapshotId: '../../etc',
          vms: [{ domain: 'db', disks: [{ target: 'vda', image, overlay: victim }] }],
          leaseOwner: 'run-x',
        }),
        /snapshot id/,
      );
    });

    it('plan, freeze and catalog refuse unsafe ids, names and paths before touching a VM', async () => {
      addVm('db');
      await expectBadInput(
        host.activities.planVms({ snapshotId: 'a/b', domains: ['db'], quiesce: 'none' }),
        /snapshot id/,
      );
      await expectBadInput(
        host.activities.planVms({ snapshotId: 'ok', domains: ['../db'], quiesce: 'none' }),
        /VM name/,
      );
      const plans = await host.activities.planVms({ snapshotId: 's-ok', domains: ['db'], quiesce: 'none' });
      const evil = [{ ...plans[0], disks: [{ ...plans[0].disks[0], overlay: '/etc/groupsnap-evil.qcow2' }] }];
      await host.activities.acquireLocks({ owner: 'run-e', domains: ['db'], ttlMs: 60_000 });
      await expectBadInput(
        host.activities.freezeVms({
          snapshotId: 's-ok',
          vms: evil,
          maxFreezeMs: 5000,
          release: 'local',
          host: 'h',
          quiesce: 'none',
          leaseOwner: 'run-e',
        }),
        /not the overlay this host makes/,
      );
      expect(existsSync('/etc/groupsnap-evil.qcow2')).toBe(false);
      expect(hv.domains.get('db')!.state).toBe('running');
      await expectBadInput(
        host.activities.recordCatalog({
          entry: { snapshotId: 's-ok', group: 'g', createdAt: 'yesterday' },
          host: 'h',
          vms: [{ domain: 'db', uuid: 'u', disks: plans[0].disks }],
          leaseOwner: 'run-e',
        }),
        /snapshot time/,
      );
      expect(await catalog('db')).toEqual([]);
    });
  });
});

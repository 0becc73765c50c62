import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import { createHost } from '../activities/host-activities';
import { FreezeJournal } from '../activities/freeze-journal';
import { GUARD_GRACE_MS } from '../common/names';
import { SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { startDevServer } from '../dev/temporal-dev-server';
import { FakeHypervisor } from '../hypervisor/fake-hypervisor';
import { runGuard } from '../worker/guard';
import { createGroupsnapWorker } from '../worker/worker';
import { workflowBundle } from './helpers/workers';

function pausedVm(hv: FakeHypervisor, name: string): void {
  hv.addDomain({ name, state: 'paused', disks: [] });
}

describe('freezes interrupted by a crash', () => {
  let stateDir: string;

  beforeEach(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-recovery-'));
  });

  afterEach(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  it('a restarted worker resumes VMs past their deadline and re-arms timers for the others', async () => {
    const hv = new FakeHypervisor();
    pausedVm(hv, 'late');
    pausedVm(hv, 'early');
    pausedVm(hv, 'not-ours');
    const journal = new FreezeJournal(stateDir);
    const now = Date.now();
    journal.write({
      snapshotId: 's1',
      domain: 'late',
      state: 'paused',
      pausedAtMs: now - 5000,
      deadlineMs: now - 1000,
    });
    journal.write({ snapshotId: 's1', domain: 'early', state: 'paused', pausedAtMs: now, deadlineMs: now + 300 });
    const host = createHost({ hypervisor: hv, hostId: 'h', stateDir });
    try {
      const closed = await host.recover();
      expect(closed.map((r) => r.domain)).toEqual(['late']);
      expect(hv.domains.get('late')!.state).toBe('running');
      expect(hv.domains.get('early')!.state).toBe('paused');
      await new Promise((r) => setTimeout(r, 600));
      expect(hv.domains.get('early')!.state).toBe('running');
      expect(journal.read('s1', 'early')!.state).toBe('resumed-by-timer');
      expect(hv.domains.get('not-ours')!.state).toBe('paused');
    } finally {
      host.shutdown();
    }
  });

  it('the guard resumes a VM whose record is open past its deadline, and leaves others alone', async () => {
    const hv = new FakeHypervisor();
    pausedVm(hv, 'stuck');
    pausedVm(hv, 'fresh');
    pausedVm(hv, 'paused-by-user');
    const journal = new FreezeJournal(stateDir);
    const now = Date.now();
    journal.write({ snapshotId: 's2', domain: 'stuck', state: 'paused', pausedAtMs: now - 400, deadlineMs: now + 100 });
    journal.write({ snapshotId: 's2', domain: 'fresh', state: 'paused', pausedAtMs: now, deadlineMs: now + 60_000 });
    const controller = new AbortController();
    const guard = runGuard({
      hypervisor: hv,
      stateDir,
      pollMs: 20,
      graceMs: GUARD_GRACE_MS,
      signal: controller.signal,
    });
    try {
      const deadline = Date.now() + 5000;
      while (hv.domains.get('stuck')!.state !== 'running' && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 10));
      const rec = journal.read('s2', 'stuck')!;
      expect(rec.state).toBe('resumed-by-guard');
      // Resumed after the grace period and well within max-freeze + 1 s.
      expect(rec.resumedAtMs! - rec.deadlineMs).toBeGreaterThanOrEqual(250);
      expect(rec.resumedAtMs! - rec.deadlineMs).toBeLessThan(1000);
      expect(hv.domains.get('fresh')!.state).toBe('paused');
      expect(hv.domains.get('paused-by-user')!.state).toBe('paused');
    } finally {
      controller.abort();
      await guard;
    }
  });
});

describe('worker start-up', () => {
  it('adds missing search attributes to a namespace that lacks them', async () => {
    const server = await startDevServer({ searchAttributes: false });
    const stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-sa-'));
    const connection = await Connection.connect({ address: server.address });
    try {
      const before = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
      expect(Object.keys(before.customAttributes ?? {})).not.toContain('GroupsnapGroup');
      const worker = await createGroupsnapWorker({
        connectionOptions: { address: server.address },
        namespace: 'default',
        hostId: 'sa-test',
        hypervisor: new FakeHypervisor(),
        stateDir,
        workflowBundle: await workflowBundle(),
      });
      const running = worker.run();
      worker.shutdown();
      await running;
      const after = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
      expect(Object.keys(after.customAttributes ?? {})).toEqual(expect.arrayContaining(Object.keys(SEARCH_ATTRIBUTES)));
    } finally {
      await connection.close();
      await server.stop();
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});

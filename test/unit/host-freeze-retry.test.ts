import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createHost } from '../../activities/host-activities';
import type { FreezeRequest, FreezeVmReport } from '../../common/host-types';
import { FakeHost } from '../helpers/fake-hosts';

/**
 * A retried attempt of a run's freeze (issue 29: the Temporal server was down when the first attempt heartbeated or
 * completed, and timed it out on its restart) pauses nothing again: it returns the host's outcome of the run's first
 * attempt, waiting for it while it still runs, or, when the host knows of none, reports every VM failed.
 */
describe('freezeVms retried', () => {
  let host: FakeHost;
  let stateDir: string;
  const hosts: ReturnType<typeof createHost>[] = [];

  beforeEach(() => {
    host = new FakeHost('retry', { latencyMs: { snapshot: 30 } });
    stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-retry-'));
  });

  afterEach(() => {
    for (const h of hosts.splice(0)) h.shutdown();
    host.cleanup();
    rmSync(stateDir, { recursive: true, force: true });
  });

  async function prepare(leaseOwner = 'run-1') {
    const h = createHost({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
    hosts.push(h);
    const domains = ['d1', 'd2'];
    for (const d of domains) if (!host.hypervisor.domains.has(d)) host.addVm(d);
    await h.activities.acquireLocks({ owner: leaseOwner, domains, ttlMs: 60_000 });
    const snapshotId = 'snap1';
    const vms = await h.activities.planVms({ snapshotId, domains, quiesce: 'none', leaseOwner, prepareOverlays: true });
    const req: FreezeRequest = {
      snapshotId,
      vms,
      maxFreezeMs: 5_000,
      release: 'local',
      host: host.hostId,
      quiesce: 'none',
      leaseOwner,
      resumeWhen: 'group-paused',
    };
    return { h, req };
  }

  /** Attempt `n` of `h`'s freezeVms, in an activity context. */
  const attempt = (h: ReturnType<typeof createHost>, n: number, req: FreezeRequest) =>
    new MockActivityEnvironment({ attempt: n }).run(h.activities.freezeVms, req) as Promise<FreezeVmReport[]>;
  const pauses = () => host.hypervisor.calls.filter((c) => c.startsWith('suspend:')).length;

  it('returns the outcome of the first attempt, which it waits for while it runs, and pauses nothing', async () => {
    const { h, req } = await prepare();
    const first = attempt(h, 1, req);
    // The retry arrives while the first attempt is still taking its snapshots.
    await new Promise((r) => setTimeout(r, 10));
    const retried = await attempt(h, 2, req);
    expect(retried).toEqual(await first);
    for (const r of retried) expect(r).toMatchObject({ pausedByUs: true, snapshotted: true, state: 'running' });
    expect(retried.every((r) => r.error === undefined)).toBe(true);
    // Once it ended too: the same outcome, and still only the first attempt's two pauses.
    expect(await attempt(h, 3, req)).toEqual(retried);
    expect(pauses()).toBe(2);
  });

  it("keeps the first attempt's failures (a snapshot that failed still fails the run)", async () => {
    host.hypervisor.failOn('snapshot', 'd2');
    const { h, req } = await prepare();
    const first = await attempt(h, 1, req);
    expect(first.find((r) => r.domain === 'd2')!.error).toBeDefined();
    expect(await attempt(h, 2, req)).toEqual(first);
  });

  it('without a first attempt known on the host (the worker restarted), reports every VM failed and pauses nothing', async () => {
    const { req } = await prepare();
    const restarted = createHost({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
    hosts.push(restarted);
    const reports = await attempt(restarted, 2, req);
    expect(reports.map((r) => r.domain)).toEqual(['d1', 'd2']);
    for (const r of reports) {
      expect(r).toMatchObject({ pausedByUs: false, snapshotted: false });
      expect(r.error).toMatch(/no earlier attempt/);
    }
    expect(pauses()).toBe(0);
    for (const d of ['d1', 'd2']) expect(host.state(d)).toBe('running');
  });

  it("another run's freeze of the same snapshot id is not this run's outcome", async () => {
    const { h, req } = await prepare();
    await attempt(h, 1, req);
    const reports = await attempt(h, 2, { ...req, leaseOwner: 'run-2' });
    for (const r of reports) expect(r.error).toMatch(/no earlier attempt/);
    expect(pauses()).toBe(2);
  });

  describe('in the armed barrier', () => {
    /** The workflow's side, as far as the host sees it: Updates answered true, their names recorded. */
    function workflowSaying(updates: string[]) {
      const handle = { executeUpdate: async (name: string) => (updates.push(name), true) };
      const client = {
        workflow: { getHandle: () => handle },
        withAbortSignal: (_: AbortSignal, fn: () => unknown) => fn(),
        withDeadline: (_: number, fn: () => unknown) => fn(),
      };
      return client as unknown as Client;
    }
    const armedAttempt = (h: ReturnType<typeof createHost>, n: number, req: FreezeRequest, updates: string[]) =>
      new MockActivityEnvironment(
        { attempt: n, workflowExecution: { workflowId: 'wf', runId: 'run' } },
        { client: workflowSaying(updates) },
      ).run(h.activities.freezeVms, req) as Promise<FreezeVmReport[]>;

    it('a retry that no attempt ever began on this host freezes as a first attempt would', async () => {
      const { req } = await prepare();
      const restarted = createHost({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
      hosts.push(restarted);
      const updates: string[] = [];
      const reports = await armedAttempt(restarted, 2, { ...req, release: 'barrier', arm: true }, updates);
      for (const r of reports) expect(r).toMatchObject({ pausedByUs: true, snapshotted: true, state: 'running' });
      expect(reports.every((r) => r.error === undefined)).toBe(true);
      // Ready, go, then paused, released.
      expect(updates).toEqual(['hostArmed', 'hostFrozen']);
      expect(pauses()).toBe(2);
    });

    it('a retry after an attempt that paused here (its record in the journal, the worker restarted) pauses nothing', async () => {
      const { h, req } = await prepare();
      await attempt(h, 1, req);
      expect(pauses()).toBe(2);
      const restarted = createHost({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
      hosts.push(restarted);
      const updates: string[] = [];
      const reports = await armedAttempt(restarted, 2, { ...req, release: 'barrier', arm: true }, updates);
      for (const r of reports) expect(r.error).toMatch(/no earlier attempt/);
      expect(updates).toEqual([]);
      expect(pauses()).toBe(2);
    });
  });
});

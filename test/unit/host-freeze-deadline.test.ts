import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHost } from '../../activities/host-activities';
import { freezeDeadline } from '../../activities/host/freeze-deadline';
import type { FreezeRecord } from '../../activities/freeze-journal';
import type { FreezeVmReport } from '../../common/host-types';
import type { ResumeWhen } from '../../common/types';
import { FakeHost } from '../helpers/fake-hosts';

/**
 * The freeze deadline (activities/host/freeze-deadline.ts): computed in one place, with the host's injected clock.
 * The fake clock moves on at every read, so a deadline computed from a second read of the clock would not be its
 * VM's pause time plus the max freeze.
 */
describe('freeze deadline', () => {
  it('is the start plus the max freeze; without a start, one read of the clock plus the max freeze', () => {
    let reads = 0;
    const ctx = { now: () => 1_000 + 10 * ++reads };
    expect(freezeDeadline(ctx, 5_000, 42)).toBe(5_042);
    expect(reads).toBe(0);
    expect(freezeDeadline(ctx, 5_000)).toBe(6_010);
    expect(reads).toBe(1);
  });

  describe('of a freeze on a fake hypervisor, with a fake clock', () => {
    let host: FakeHost;
    let stateDir: string;
    let t: number;
    let reads: number;
    const now = () => t + 7 * ++reads;

    beforeEach(() => {
      host = new FakeHost('deadline');
      stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-deadline-'));
      // Near the real time: the deadline timers (real clock) must not fire during the test.
      t = Date.now();
      reads = 0;
    });

    afterEach(() => {
      host.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    });

    async function freeze(resumeWhen: ResumeWhen, quiesce: 'none' | 'agent' = 'none') {
      const h = createHost({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir, now });
      const domains = ['d1', 'd2'];
      for (const d of domains) host.addVm(d);
      if (quiesce === 'agent') for (const d of domains) host.hypervisor.domains.get(d)!.hasGuestAgent = true;
      const leaseOwner = 'run-1';
      const snapshotId = 'snap1';
      await h.activities.acquireLocks({ owner: leaseOwner, domains, ttlMs: 60_000 });
      const vms = await h.activities.planVms({
        snapshotId,
        domains,
        quiesce,
        leaseOwner,
        prepareOverlays: resumeWhen === 'group-paused',
      });
      const reports = await h.activities.freezeVms({
        snapshotId,
        vms,
        maxFreezeMs: 5_000,
        release: 'local',
        host: host.hostId,
        quiesce,
        leaseOwner,
        resumeWhen,
      });
      h.shutdown();
      return { reports, records: domains.map((d) => h.journal.read(snapshotId, d)!) };
    }

    function expectDeadlines(reports: FreezeVmReport[], records: FreezeRecord[]) {
      for (const [i, r] of reports.entries()) {
        expect(r.error).toBeUndefined();
        expect(r.pausedByUs).toBe(true);
        const rec = records[i];
        // The pause time is a reading of the injected clock, and the deadline that reading plus the max freeze.
        expect(rec.pausedAtMs).toBe(r.pausedAtMs);
        expect((r.pausedAtMs! - t) % 7).toBe(0);
        expect(rec.deadlineMs).toBe(r.pausedAtMs! + 5_000);
      }
    }

    it('in the group-paused order, each VM is journalled with its pause time plus the max freeze', async () => {
      const { reports, records } = await freeze('group-paused');
      expectDeadlines(reports, records);
    });

    it('in the group-snapshotted order, the same', async () => {
      const { reports, records } = await freeze('group-snapshotted');
      expectDeadlines(reports, records);
    });

    it('with quiesced guests: the record of the pause (written over the quiesce one) has the same rule', async () => {
      const { reports, records } = await freeze('group-paused', 'agent');
      for (const r of reports) expect(r.quiesced).toBe(true);
      expectDeadlines(reports, records);
      for (const rec of records) expect(rec.fsThawed).toBe(true);
    });
  });
});

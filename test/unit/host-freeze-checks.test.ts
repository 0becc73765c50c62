import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHost } from '../../activities/host-activities';
import { overlayPath } from '../../common/host-types';
import { BAD_INPUT } from '../../common/failures';
import { checkMaxFreezeMs, MAX_MAX_FREEZE_MS, MIN_MAX_FREEZE_MS } from '../../common/validation';
import { FakeHost } from '../helpers/fake-hosts';

/** The max freeze: one check in common/, the same bounds on the host as for every caller (issue 25). */
describe('max freeze bounds', () => {
  it('one check: a whole number of ms from MIN_MAX_FREEZE_MS to MAX_MAX_FREEZE_MS', () => {
    for (const ok of [MIN_MAX_FREEZE_MS, 5_000, MAX_MAX_FREEZE_MS]) {
      const problems: string[] = [];
      checkMaxFreezeMs(ok, problems);
      expect(problems).toEqual([]);
    }
    for (const bad of [MIN_MAX_FREEZE_MS - 1, MAX_MAX_FREEZE_MS + 1, 1.5, undefined, '5000']) {
      const problems: string[] = [];
      checkMaxFreezeMs(bad, problems);
      expect(problems).toEqual([`max freeze must be an integer from 100 to 600000 ms, got ${bad}`]);
    }
  });

  describe('on the host', () => {
    let host: FakeHost;
    let stateDir: string;

    beforeEach(() => {
      host = new FakeHost('maxfreeze');
      stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-maxfreeze-'));
    });

    afterEach(() => {
      host.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    });

    it.each([1, 99, 600_001])('refuses a freeze of %i ms as bad input, pausing nothing', async (maxFreezeMs) => {
      const h = createHost({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
      host.addVm('a', 'running', 1);
      const image = host.chain('a')[0];
      const vms = [
        {
          domain: 'a',
          uuid: '',
          state: 'running' as const,
          disks: [{ target: 'vda', image, overlay: overlayPath(image, 'a', 'vda', 's1') }],
          skip: [],
          quiesce: false,
        },
      ];
      await h.activities.acquireLocks({ owner: 'run-1', domains: ['a'], ttlMs: 60_000 });
      const freeze = h.activities.freezeVms({
        snapshotId: 's1',
        vms,
        maxFreezeMs,
        release: 'local',
        host: host.hostId,
        quiesce: 'none',
        leaseOwner: 'run-1',
      });
      await expect(freeze).rejects.toMatchObject({ type: BAD_INPUT, nonRetryable: true });
      await expect(freeze).rejects.toThrow(`max freeze must be an integer from 100 to 600000 ms, got ${maxFreezeMs}`);
      expect(host.hypervisor.calls.filter((c) => c.startsWith('suspend:'))).toEqual([]);
      expect(host.state('a')).toBe('running');
      h.shutdown();
    });
  });
});

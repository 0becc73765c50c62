import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHost } from '../../activities/host-activities';
import { FakeHypervisor } from '../../hypervisor/fake-hypervisor';

/**
 * The composition of the host side (activities/host-activities.ts): the activity names are part of recorded histories
 * and of the worker's API, so the rooms under activities/host/ must add up to exactly the set the worker registered
 * before they were split out.
 */
describe('createHost', () => {
  it('returns the same activities, recovery and shutdown as before the split', () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-host-'));
    try {
      const host = createHost({ hypervisor: new FakeHypervisor(), hostId: 'h1', stateDir });
      expect(Object.keys(host).sort()).toEqual(['activities', 'journal', 'recover', 'shutdown']);
      expect(Object.keys(host.activities).sort()).toEqual([
        'acquireLocks',
        'chooseSocketPorts',
        'cloneVm',
        'deleteSnapshot',
        'freezeVms',
        'listVms',
        'pinSnapshot',
        'planVms',
        'recordCatalog',
        'releaseFreeze',
        'releaseInPlaceRestore',
        'releaseLocks',
        'removeClone',
        'restoreInPlace',
        'setTags',
        'thawVms',
        'undoInPlace',
        'undoSnapshots',
        'vmStates',
      ]);
      host.shutdown();
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  it('refuses a bad snapshotsInFlight when it is built', () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-host-'));
    try {
      expect(() =>
        createHost({ hypervisor: new FakeHypervisor(), hostId: 'h1', stateDir, snapshotsInFlight: 0 }),
      ).toThrow(/snapshots in flight must be a whole number from 1 to 64/);
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});

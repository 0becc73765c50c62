import { cutViolations } from '../../common/cut';
import type { GroupSnapshotResult, VmResult } from '../../common/types';

const vm = (domain: string, times: Partial<VmResult>): VmResult => ({
  host: 'h1',
  domain,
  outcome: 'snapshotted',
  pausedByUs: true,
  disks: [],
  ...times,
});

const result = (vms: VmResult[], allPausedAtMs?: number): GroupSnapshotResult => ({
  snapshotId: 's',
  workflowId: 'w',
  group: 'g',
  status: 'completed',
  groupFreezeMs: 0,
  maxVmFreezeMs: 0,
  vms,
  ...(allPausedAtMs !== undefined ? { allPausedAtMs } : {}),
});

describe('cutViolations', () => {
  it('accepts VMs resumed early, once the group is paused and each after its own snapshot', () => {
    const r = result(
      [
        vm('a', { pausedAtMs: 10, snapshottedAtMs: 30, resumeIssuedAtMs: 31, resumedAtMs: 33 }),
        vm('b', { pausedAtMs: 12, snapshottedAtMs: 80, resumeIssuedAtMs: 81, resumedAtMs: 82 }),
      ],
      12,
    );
    expect(cutViolations(r)).toEqual([]);
  });

  it('names a VM that ran again before every VM was paused', () => {
    const r = result(
      [
        vm('a', { pausedAtMs: 10, snapshottedAtMs: 20, resumeIssuedAtMs: 21, resumedAtMs: 22 }),
        vm('b', { pausedAtMs: 25, snapshottedAtMs: 40, resumeIssuedAtMs: 41 }),
      ],
      25,
    );
    expect(cutViolations(r)).toEqual(['a@h1: resumed (21) before every VM of the group was paused (25)']);
  });

  it('names a VM resumed before its snapshot completed, or snapshotted before its pause took effect', () => {
    const r = result(
      [
        vm('a', { pausedAtMs: 10, snapshottedAtMs: 30, resumeIssuedAtMs: 29 }),
        vm('b', { pausedAtMs: 10, snapshottedAtMs: 5, resumeIssuedAtMs: 40 }),
      ],
      10,
    );
    expect(cutViolations(r)).toEqual([
      'a@h1: resumed (29) before its snapshot completed (30)',
      'b@h1: snapshot completed (5) before its pause took effect (10)',
    ]);
  });

  it('uses the resume time when the request time is unknown, and ignores VMs it did not pause', () => {
    const r = result(
      [
        vm('a', { pausedAtMs: 10, snapshottedAtMs: 20, resumedAtMs: 15 }),
        vm('off', { pausedByUs: false }),
        vm('gone', { outcome: 'rolled-back', pausedAtMs: 1 }),
      ],
      10,
    );
    expect(cutViolations(r)).toEqual(['a@h1: resumed (15) before its snapshot completed (20)']);
  });

  it('reports missing times of a snapshotted VM it paused', () => {
    expect(cutViolations(result([vm('a', { pausedAtMs: 1 })]))).toEqual([
      'a@h1: pause, snapshot or resume time missing',
    ]);
  });
});

import { ApplicationFailure } from '@temporalio/common';
import { createRetentionActivities } from '../../activities/retention-activities';
import { BAD_INPUT } from '../../common/failures';
import { planRetention, retentionBucketsIn, type RetentionCandidate } from '../../common/retention';

/** Snapshots every 5 hours over a week, across the Europe/Paris DST change of 2025-10-26. */
const SNAPSHOTS: RetentionCandidate[] = Array.from({ length: 40 }, (_, i) => ({
  snapshotId: `s${String(i).padStart(2, '0')}`,
  createdAt: new Date(Date.UTC(2025, 9, 22, 0) + i * 5 * 3_600_000).toISOString(),
}));

/**
 * Retention in workflows does not depend on the worker's time-zone (ICU) data or locale, and a catalog entry it
 * cannot place in time fails the run at once (item 11 of issue 13). The run itself, over a real Temporal, is in
 * test/retention-determinism.test.ts.
 */
describe('deterministic retention', () => {
  describe('planning with buckets given (as the workflow does)', () => {
    const realFormat = Intl.DateTimeFormat;
    afterEach(() => {
      Intl.DateTimeFormat = realFormat;
    });

    it('plans exactly as with Intl, and without using any time-zone data of its own', () => {
      const policy = { keepLast: 2, hourly: 3, daily: 4, weekly: 2, monthly: 2 };
      const withIntl = planRetention(SNAPSHOTS, policy, { timezone: 'Europe/Paris' });
      const buckets = retentionBucketsIn(
        'Europe/Paris',
        SNAPSHOTS.map((s) => s.createdAt),
      );
      // Any use of Intl.DateTimeFormat now throws: the plan must come from the buckets alone.
      Intl.DateTimeFormat = function () {
        throw new Error('Intl.DateTimeFormat used while planning');
      } as unknown as typeof Intl.DateTimeFormat;
      expect(planRetention(SNAPSHOTS, policy, { timezone: 'Europe/Paris', buckets })).toEqual(withIntl);
      expect(() => planRetention(SNAPSHOTS, policy, { timezone: 'Europe/Paris' })).toThrow(
        /Intl.DateTimeFormat used|not a known IANA time zone/,
      );
    });

    it('refuses buckets that are missing or malformed instead of guessing', () => {
      const buckets = retentionBucketsIn('UTC', [SNAPSHOTS[0].createdAt]);
      expect(() => planRetention(SNAPSHOTS.slice(0, 2), { daily: 1 }, { buckets })).toThrow(
        /snapshot s01 has no valid UTC hour, day, week and month/,
      );
      const bad = { [SNAPSHOTS[0].createdAt]: { ...buckets[SNAPSHOTS[0].createdAt], daily: '22/10/2025' } };
      expect(() => planRetention(SNAPSHOTS.slice(0, 1), { daily: 1 }, { buckets: bad })).toThrow(/no valid/);
    });

    it('the activity gives the buckets, skips values that are not date-times, and refuses an unknown zone', async () => {
      const { retentionBuckets } = createRetentionActivities();
      const out = await retentionBuckets({
        timezone: 'Europe/Paris',
        createdAt: ['2025-10-26T00:30:00Z', '2025-10-26T01:30:00Z', 'yesterday'],
      });
      // 02:30 CEST, then 02:30 CET again: the same wall-clock hour, one hour apart.
      expect(out).toEqual({
        '2025-10-26T00:30:00Z': {
          hourly: '2025-10-26 02:00',
          daily: '2025-10-26',
          weekly: '2025-W43',
          monthly: '2025-10',
        },
        '2025-10-26T01:30:00Z': {
          hourly: '2025-10-26 02:00',
          daily: '2025-10-26',
          weekly: '2025-W43',
          monthly: '2025-10',
        },
      });
      const err = await retentionBuckets({ timezone: 'Mars/Olympus', createdAt: [] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApplicationFailure);
      expect(err).toMatchObject({ type: BAD_INPUT, nonRetryable: true, message: expect.stringMatching(/time zone/) });
    });
  });
});

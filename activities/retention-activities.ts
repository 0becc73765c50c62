import { retentionBucketsIn, type RetentionBuckets } from '../common/retention';
import { BadInputError, failure } from '../common/failures';

/**
 * Retention's time-zone arithmetic, run as an activity so that workflows plan with its recorded result instead of
 * the time-zone (ICU) data of whichever worker replays them.
 */
export function createRetentionActivities() {
  return {
    /**
     * The hour, day, ISO week and month of each `createdAt` in `timezone` (keyed by the given text; values that are
     * not ISO 8601 date-times with `Z` or an offset are left out, for the plan to report).
     * @throws a non-retryable {@link BAD_INPUT} failure for an unknown time zone.
     */
    async retentionBuckets(req: { timezone: string; createdAt: string[] }): Promise<Record<string, RetentionBuckets>> {
      if (!Array.isArray(req?.createdAt) || req.createdAt.some((c) => typeof c !== 'string'))
        throw failure('badInput', 'createdAt must be a list of strings');
      try {
        return retentionBucketsIn(req.timezone, req.createdAt);
      } catch (err) {
        if (err instanceof BadInputError) throw failure('badInput', err.message);
        throw err;
      }
    },
  };
}

import { runNewestFirst, type Compensation } from '../../workflows/compensations';
import { DR_PRESETS, drillWaitOptions } from '../../workflows/activity-options';

describe('a compensation list', () => {
  it('runs newest first, one at a time; a failing undo is reported and the older ones still run', async () => {
    const events: string[] = [];
    const step = (name: string, fail = false): Compensation => ({
      what: name,
      undo: async () => {
        events.push(`start ${name}`);
        await new Promise((r) => setTimeout(r, 5));
        events.push(`end ${name}`);
        if (fail) throw new Error(`${name} broke`);
      },
    });
    const errors: string[] = [];
    await runNewestFirst([step('lease'), step('disk', true), step('define')], (c, err) =>
      errors.push(`${c.what}: ${(err as Error).message}`),
    );
    expect(events).toEqual(['start define', 'end define', 'start disk', 'end disk', 'start lease', 'end lease']);
    expect(errors).toEqual(['disk: disk broke']);
  });

  it('an empty list does nothing', async () => {
    const onError = jest.fn();
    await runNewestFirst([], onError);
    expect(onError).not.toHaveBeenCalled();
  });
});

describe('DR activity presets', () => {
  it('the teardown of a restore retries every error; its planning and rebuild never retry a damaged point', () => {
    expect(DR_PRESETS.restoreCleanup.retry?.nonRetryableErrorTypes).toBeUndefined();
    for (const p of [DR_PRESETS.restorePlan, DR_PRESETS.restoreRebuild, DR_PRESETS.restoreVm])
      expect(p.retry?.nonRetryableErrorTypes).toContain('DamagedPoint');
  });

  it("a drill's readiness wait outlasts the drill's own timeout by a minute and never retries a not-ready verdict", () => {
    const o = drillWaitOptions(90_000);
    expect(o.startToCloseTimeout).toBe(150_000);
    expect(o.retry?.nonRetryableErrorTypes).toContain('DrillNotReady');
  });

  it('exports give up at once on a wrong key or a missing bucket, and keep retrying S3 outages for a day', () => {
    for (const p of [DR_PRESETS.exportDisk, DR_PRESETS.exportManifest]) {
      expect(p.retry?.nonRetryableErrorTypes).toEqual(expect.arrayContaining(['WrongKeyError', 'BucketNotFoundError']));
      expect(p.retry?.maximumAttempts).toBeUndefined();
      expect(p.scheduleToCloseTimeout).toBe('24h');
    }
  });
});

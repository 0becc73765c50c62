/** Unit tests of the retention planner (pure: no server, no VMs). */
import {
  describeRetention,
  normalizeRetention,
  planRetention,
  type RetentionCandidate,
  type RetentionPlan,
  type RetentionPolicy,
} from '../../common/retention';
import { badInput } from '../helpers/bad-input';

const pad = (n: number): string => String(n).padStart(2, '0');

/** One snapshot an hour, on the hour, from 2025-11-01T00:00Z to 2025-11-30T23:00Z: 720 snapshots. */
function novemberHourly(): RetentionCandidate[] {
  const out: RetentionCandidate[] = [];
  for (let day = 1; day <= 30; day++) {
    for (let hour = 0; hour < 24; hour++) {
      out.push({
        snapshotId: `gs-11${pad(day)}-${pad(hour)}`,
        createdAt: `2025-11-${pad(day)}T${pad(hour)}:00:00.000Z`,
      });
    }
  }
  return out;
}

/** A fixed, non-trivial permutation of `list` (no randomness: reproducible failures). */
function shuffled<T>(list: T[]): T[] {
  return list
    .map((item, i) => ({ item, key: (i * 7919) % 1009 }))
    .sort((a, b) => a.key - b.key)
    .map((x) => x.item);
}

const keptIds = (plan: RetentionPlan): string[] => plan.keep.map((k) => k.snapshotId);
const reasonsOf = (plan: RetentionPlan, id: string): string[] | undefined =>
  plan.keep.find((k) => k.snapshotId === id)?.reasons;

describe('planRetention over 30 days of hourly snapshots', () => {
  const series = novemberHourly();

  test('{daily: 7} keeps the last snapshot of each of the 7 newest days', () => {
    const plan = planRetention(series, { daily: 7 });
    expect(plan.keep).toEqual(
      [30, 29, 28, 27, 26, 25, 24].map((d) => ({
        snapshotId: `gs-11${d}-23`,
        reasons: [`daily 2025-11-${d}`],
      })),
    );
    expect(plan.remove).toHaveLength(713);
    // Oldest first.
    expect(plan.remove.slice(0, 3)).toEqual(['gs-1101-00', 'gs-1101-01', 'gs-1101-02']);
    expect(plan.remove[plan.remove.length - 1]).toBe('gs-1130-22');
  });

  test('{hourly: 24, daily: 7, weekly: 4, monthly: 3} keeps 33 snapshots with every reason', () => {
    const plan = planRetention(series, { hourly: 24, daily: 7, weekly: 4, monthly: 3 });
    const expected = [
      ...Array.from({ length: 24 }, (_, i) => `gs-1130-${pad(23 - i)}`), // all of Nov 30 (hourly)
      ...[29, 28, 27, 26, 25, 24].map((d) => `gs-11${d}-23`), // daily
      'gs-1123-23', // weekly 2025-W47 (Mon 17 - Sun 23)
      'gs-1116-23', // weekly 2025-W46
      'gs-1109-23', // weekly 2025-W45
    ];
    expect(keptIds(plan)).toEqual(expected);
    expect(reasonsOf(plan, 'gs-1130-23')).toEqual([
      'hourly 2025-11-30 23:00',
      'daily 2025-11-30',
      'weekly 2025-W48',
      'monthly 2025-11', // only one month has snapshots: monthly keeps 1 of its 3
    ]);
    expect(reasonsOf(plan, 'gs-1130-00')).toEqual(['hourly 2025-11-30 00:00']);
    expect(reasonsOf(plan, 'gs-1124-23')).toEqual(['daily 2025-11-24']); // W48 is already kept by Nov 30
    expect(reasonsOf(plan, 'gs-1123-23')).toEqual(['weekly 2025-W47']);
    expect(reasonsOf(plan, 'gs-1109-23')).toEqual(['weekly 2025-W45']);
    expect(plan.remove).toHaveLength(720 - 33);
    expect(new Set([...keptIds(plan), ...plan.remove]).size).toBe(720);
  });

  test('keepLast alone keeps exactly the N newest', () => {
    const plan = planRetention(series, { keepLast: 5 });
    expect(plan.keep).toEqual(
      ['gs-1130-23', 'gs-1130-22', 'gs-1130-21', 'gs-1130-20', 'gs-1130-19'].map((snapshotId) => ({
        snapshotId,
        reasons: ['last'],
      })),
    );
    expect(plan.remove).toHaveLength(715);
    expect(plan.remove[0]).toBe('gs-1101-00');
    expect(plan.remove[714]).toBe('gs-1130-18');
  });

  test('a snapshot kept by several rules lists every reason, "last" first', () => {
    const plan = planRetention(series, { keepLast: 2, daily: 2 });
    expect(plan.keep).toEqual([
      { snapshotId: 'gs-1130-23', reasons: ['last', 'daily 2025-11-30'] },
      { snapshotId: 'gs-1130-22', reasons: ['last'] },
      { snapshotId: 'gs-1129-23', reasons: ['daily 2025-11-29'] },
    ]);
  });

  test('a count larger than the history keeps every bucket there is', () => {
    const plan = planRetention(series, { daily: 365 });
    expect(plan.keep).toHaveLength(30);
    expect(plan.remove).toHaveLength(690);
    expect(planRetention(series, { keepLast: 1000 }).remove).toEqual([]);
  });

  test('the plan does not depend on the input order', () => {
    const policy: RetentionPolicy = { keepLast: 3, hourly: 12, daily: 7, weekly: 4, monthly: 3 };
    const reference = planRetention(series, policy);
    expect(planRetention([...series].reverse(), policy)).toEqual(reference);
    expect(planRetention(shuffled(series), policy)).toEqual(reference);
  });

  test.each<RetentionPolicy>([{ keepLast: 1 }, { hourly: 1 }, { daily: 1 }, { weekly: 1 }, { monthly: 1 }])(
    'the newest snapshot is always kept (%j)',
    (policy) => {
      const plan = planRetention(shuffled(series), policy);
      expect(keptIds(plan)).toEqual(['gs-1130-23']);
      expect(plan.remove).toHaveLength(719);
    },
  );

  test('planning does not modify its input', () => {
    const input = shuffled(series);
    const copy = JSON.parse(JSON.stringify(input)) as RetentionCandidate[];
    const policy: RetentionPolicy = { daily: 7, weekly: 0 };
    planRetention(input, policy);
    expect(policy).toEqual({ daily: 7, weekly: 0 });
    expect(input).toEqual(copy);
  });
});

describe('planRetention buckets', () => {
  test('monthly keeps the newest snapshot of each of the N newest months', () => {
    const daily: RetentionCandidate[] = [];
    for (let d = Date.UTC(2025, 7, 15); d <= Date.UTC(2025, 10, 30); d += 86_400_000) {
      const iso = new Date(d + 12 * 3_600_000).toISOString();
      daily.push({ snapshotId: `d-${iso.slice(0, 10)}`, createdAt: iso });
    }
    const plan = planRetention(daily, { monthly: 3 });
    expect(plan.keep).toEqual([
      { snapshotId: 'd-2025-11-30', reasons: ['monthly 2025-11'] },
      { snapshotId: 'd-2025-10-31', reasons: ['monthly 2025-10'] },
      { snapshotId: 'd-2025-09-30', reasons: ['monthly 2025-09'] },
    ]);
    expect(plan.remove[0]).toBe('d-2025-08-15');
    expect(plan.remove).toHaveLength(daily.length - 3);
  });

  test.each([
    ['2025-11-24T00:00:00Z', '2025-W48'], // Monday starts the week
    ['2025-11-23T23:59:59Z', '2025-W47'], // Sunday ends it
    ['2025-12-29T12:00:00Z', '2026-W01'], // late December in next year's week 1
    ['2024-12-30T12:00:00Z', '2025-W01'],
    ['2021-01-03T12:00:00Z', '2020-W53'], // early January in last year's week 53
    ['2027-01-01T12:00:00Z', '2026-W53'],
    ['2010-01-03T12:00:00Z', '2009-W53'],
    ['2026-01-05T00:00:00Z', '2026-W02'],
  ])('%s is in ISO week %s', (createdAt, week) => {
    const plan = planRetention([{ snapshotId: 's', createdAt }], { weekly: 1 });
    expect(plan.keep).toEqual([{ snapshotId: 's', reasons: [`weekly ${week}`] }]);
  });

  test('weekly keeps one snapshot per ISO week across a year boundary', () => {
    const snapshots = [
      { snapshotId: 'sun-2025-12-28', createdAt: '2025-12-28T10:00:00Z' }, // 2025-W52
      { snapshotId: 'mon-2025-12-29', createdAt: '2025-12-29T10:00:00Z' }, // 2026-W01
      { snapshotId: 'thu-2026-01-01', createdAt: '2026-01-01T10:00:00Z' }, // 2026-W01
      { snapshotId: 'mon-2026-01-05', createdAt: '2026-01-05T10:00:00Z' }, // 2026-W02
    ];
    const plan = planRetention(snapshots, { weekly: 3 });
    expect(plan.keep).toEqual([
      { snapshotId: 'mon-2026-01-05', reasons: ['weekly 2026-W02'] },
      { snapshotId: 'thu-2026-01-01', reasons: ['weekly 2026-W01'] },
      { snapshotId: 'sun-2025-12-28', reasons: ['weekly 2025-W52'] },
    ]);
    expect(plan.remove).toEqual(['mon-2025-12-29']);
  });

  test('hourly buckets are clock hours: two snapshots in one hour keep only the newer', () => {
    const plan = planRetention(
      [
        { snapshotId: 'a', createdAt: '2025-11-24T10:05:00Z' },
        { snapshotId: 'b', createdAt: '2025-11-24T10:55:00Z' },
        { snapshotId: 'c', createdAt: '2025-11-24T11:00:00Z' },
      ],
      { hourly: 5 },
    );
    expect(plan.keep).toEqual([
      { snapshotId: 'c', reasons: ['hourly 2025-11-24 11:00'] },
      { snapshotId: 'b', reasons: ['hourly 2025-11-24 10:00'] },
    ]);
    expect(plan.remove).toEqual(['a']);
  });
});

describe('planRetention time zones', () => {
  // 23:30 UTC on Nov 24 is 08:30 on Nov 25 in Tokyo; 14:00 UTC is 23:00 on Nov 24 there.
  const late = { snapshotId: 'late', createdAt: '2025-11-24T23:30:00Z' };
  const early = { snapshotId: 'early', createdAt: '2025-11-24T14:00:00Z' };

  test('in UTC (the default) both are on Nov 24: daily keeps the later one only', () => {
    const plan = planRetention([early, late], { daily: 2 });
    expect(plan).toEqual({ keep: [{ snapshotId: 'late', reasons: ['daily 2025-11-24'] }], remove: ['early'] });
    expect(planRetention([early, late], { daily: 2 }, { timezone: 'UTC' })).toEqual(plan);
  });

  test('in Asia/Tokyo they are on different days: daily keeps both', () => {
    const plan = planRetention([early, late], { daily: 2 }, { timezone: 'Asia/Tokyo' });
    expect(plan).toEqual({
      keep: [
        { snapshotId: 'late', reasons: ['daily 2025-11-25'] },
        { snapshotId: 'early', reasons: ['daily 2025-11-24'] },
      ],
      remove: [],
    });
  });

  test('a Monday 03:00 UTC snapshot is still Sunday (last ISO week) in New York', () => {
    const monday = { snapshotId: 'm', createdAt: '2025-11-24T03:00:00Z' };
    expect(planRetention([monday], { weekly: 1 }).keep[0].reasons).toEqual(['weekly 2025-W48']);
    expect(planRetention([monday], { weekly: 1 }, { timezone: 'America/New_York' }).keep[0].reasons).toEqual([
      'weekly 2025-W47',
    ]);
  });

  test('month boundaries follow the zone too', () => {
    const s = { snapshotId: 's', createdAt: '2025-12-01T02:00:00Z' };
    expect(planRetention([s], { monthly: 1 }).keep[0].reasons).toEqual(['monthly 2025-12']);
    expect(planRetention([s], { monthly: 1 }, { timezone: 'America/New_York' }).keep[0].reasons).toEqual([
      'monthly 2025-11',
    ]);
  });

  test('hours are wall-clock hours: the repeated 01:00 hour of a DST fall-back is one bucket', () => {
    // New York falls back on 2025-11-02: 05:30Z is 01:30 EDT, 06:30Z is 01:30 EST, 07:30Z is 02:30 EST.
    const night = [
      { snapshotId: 'edt-0130', createdAt: '2025-11-02T05:30:00Z' },
      { snapshotId: 'est-0130', createdAt: '2025-11-02T06:30:00Z' },
      { snapshotId: 'est-0230', createdAt: '2025-11-02T07:30:00Z' },
    ];
    expect(planRetention(night, { hourly: 3 }, { timezone: 'America/New_York' })).toEqual({
      keep: [
        { snapshotId: 'est-0230', reasons: ['hourly 2025-11-02 02:00'] },
        { snapshotId: 'est-0130', reasons: ['hourly 2025-11-02 01:00'] },
      ],
      remove: ['edt-0130'],
    });
    expect(planRetention(night, { hourly: 3 }).remove).toEqual([]);
  });

  test('createdAt offsets are honoured: the same instant written two ways sorts as equal', () => {
    const plan = planRetention(
      [
        { snapshotId: 'z', createdAt: '2025-11-24T23:30:00Z' },
        { snapshotId: 'tokyo', createdAt: '2025-11-25T08:30:00+09:00' },
        { snapshotId: 'ny', createdAt: '2025-11-24T18:00:00-05:00' }, // 23:00Z: older
      ],
      { keepLast: 1, daily: 2 },
      { timezone: 'Asia/Tokyo' },
    );
    // 'z' and 'tokyo' are the same instant, so the greater id ('z') counts as newer; 'ny' (23:00Z) is 08:00 on
    // Nov 25 in Tokyo, the same day: one daily bucket only.
    expect(plan.keep).toEqual([{ snapshotId: 'z', reasons: ['last', 'daily 2025-11-25'] }]);
    expect(plan.remove).toEqual(['ny', 'tokyo']);
  });

  test('an unknown time zone is bad input', () => {
    const err = badInput(() => planRetention([early], { daily: 1 }, { timezone: 'Mars/Olympus' }));
    expect(err.message).toContain('Mars/Olympus');
  });
});

describe('planRetention ties and edge cases', () => {
  const at = '2025-11-24T10:00:00Z';

  test('equal timestamps are ordered by snapshot id, the greater id counting as newer', () => {
    const tied = [
      { snapshotId: 'b', createdAt: at },
      { snapshotId: 'c', createdAt: at },
      { snapshotId: 'a', createdAt: at },
    ];
    for (const input of [tied, [...tied].reverse(), [tied[2], tied[0], tied[1]]]) {
      expect(planRetention(input, { keepLast: 1 })).toEqual({
        keep: [{ snapshotId: 'c', reasons: ['last'] }],
        remove: ['a', 'b'],
      });
      expect(keptIds(planRetention(input, { daily: 1 }))).toEqual(['c']);
    }
  });

  test('the tie-break uses code-unit order, not locale order', () => {
    // Locale collation puts 'B' after 'a'; code units put 'B' (0x42) before 'a' (0x61), so 'a' is the greater id.
    const plan = planRetention(
      [
        { snapshotId: 'a', createdAt: at },
        { snapshotId: 'B', createdAt: at },
      ],
      { keepLast: 1 },
    );
    expect(keptIds(plan)).toEqual(['a']);
  });

  test('sub-second precision orders snapshots within one second', () => {
    const plan = planRetention(
      [
        { snapshotId: 'x', createdAt: '2025-11-24T10:00:00.5Z' },
        { snapshotId: 'y', createdAt: '2025-11-24T10:00:00.25Z' },
        { snapshotId: 'w', createdAt: '2025-11-24T10:00:00.123456789Z' },
      ],
      { keepLast: 1 },
    );
    expect(plan).toEqual({ keep: [{ snapshotId: 'x', reasons: ['last'] }], remove: ['w', 'y'] });
  });

  test('an empty list gives an empty plan', () => {
    expect(planRetention([], { daily: 7 })).toEqual({ keep: [], remove: [] });
  });

  test('an empty list with a policy that keeps nothing is still rejected', () => {
    expect(badInput(() => planRetention([], { daily: 0 })).message).toMatch(/^retention would keep nothing: /);
  });

  test('leap days are valid dates', () => {
    const plan = planRetention(
      [
        { snapshotId: 'leap', createdAt: '2024-02-29T12:00:00Z' },
        { snapshotId: 'y2k', createdAt: '2000-02-29T12:00:00Z' },
      ],
      { daily: 2 },
    );
    expect(plan.keep.map((k) => k.reasons[0])).toEqual(['daily 2024-02-29', 'daily 2000-02-29']);
  });

  test.each([
    'yesterday',
    '',
    '2025-11-24', // no time
    '2025-11-24T10:00:00', // no zone: would depend on the host's local time
    '2025-11-24 10:00:00Z',
    '2025-02-30T10:00:00Z',
    '2025-02-29T10:00:00Z', // 2025 is not a leap year
    '2100-02-29T10:00:00Z',
    '2025-13-01T10:00:00Z',
    '2025-11-24T24:00:00Z',
    '2025-11-24T10:60:00Z',
    '2025-11-24T10:00:60Z',
    '2025-11-24T10:00:00+24:00',
    'Mon, 24 Nov 2025 10:00:00 GMT',
  ])('createdAt %j is bad input', (createdAt) => {
    const err = badInput(() =>
      planRetention(
        [
          { snapshotId: 'ok', createdAt: at },
          { snapshotId: 'bad', createdAt },
        ],
        { daily: 1 },
      ),
    );
    expect(err.message).toContain(`snapshot bad has createdAt ${JSON.stringify(createdAt)}`);
    expect(err.message).toContain('ISO 8601');
  });

  test('a non-string createdAt is bad input', () => {
    const err = badInput(() =>
      planRetention([{ snapshotId: 'n', createdAt: 1764000000000 as unknown as string }], { daily: 1 }),
    );
    expect(err.message).toContain('snapshot n has createdAt 1764000000000');
  });

  test('a snapshot listed twice is bad input', () => {
    const err = badInput(() =>
      planRetention(
        [
          { snapshotId: 'dup', createdAt: at },
          { snapshotId: 'dup', createdAt: '2025-11-25T10:00:00Z' },
        ],
        { daily: 1 },
      ),
    );
    expect(err.message).toBe('snapshot dup is listed twice');
  });

  test('a snapshot without an id is bad input', () => {
    const err = badInput(() => planRetention([{ snapshotId: '', createdAt: at }], { daily: 1 }));
    expect(err.message).toContain('has no snapshot id');
  });

  test('every bad snapshot is reported, at most five by name', () => {
    const bad = Array.from({ length: 7 }, (_, i) => ({ snapshotId: `s${i}`, createdAt: 'nope' }));
    const err = badInput(() => planRetention(bad, { daily: 1 }));
    expect(err.message).toContain('snapshot s0 has createdAt "nope"');
    expect(err.message).toContain('snapshot s4 has createdAt "nope"');
    expect(err.message).not.toContain('snapshot s5');
    expect(err.message).toMatch(/; and 2 more$/);
  });
});

describe('normalizeRetention', () => {
  test('keeps the rules that keep something, in canonical order, without changing its input', () => {
    const input: RetentionPolicy = { monthly: 3, daily: 0, keepLast: 2, hourly: undefined };
    const normalized = normalizeRetention(input);
    expect(normalized).toEqual({ keepLast: 2, monthly: 3 });
    expect(Object.keys(normalized)).toEqual(['keepLast', 'monthly']);
    expect(input).toEqual({ monthly: 3, daily: 0, keepLast: 2, hourly: undefined });
  });

  test('a full policy passes through unchanged', () => {
    const full = { keepLast: 1, hourly: 24, daily: 7, weekly: 4, monthly: 12 };
    expect(normalizeRetention(full)).toEqual(full);
    expect(normalizeRetention(full)).not.toBe(full);
  });

  test.each<[RetentionPolicy, string]>([
    [{}, 'retention would keep nothing: '],
    [{ daily: 0 }, 'retention would keep nothing: '],
    [{ keepLast: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 }, 'retention would keep nothing: '],
    [{ daily: 1.5 }, 'retention daily must be a whole number of 0 or more, got 1.5'],
    [{ weekly: -1 }, 'retention weekly must be a whole number of 0 or more, got -1'],
    [{ keepLast: Number.NaN }, 'retention keepLast must be a whole number of 0 or more, got NaN'],
    [{ monthly: Number.POSITIVE_INFINITY }, 'retention monthly must be a whole number of 0 or more, got Infinity'],
    [{ hourly: '24' as unknown as number }, 'retention hourly must be a whole number of 0 or more, got "24"'],
    [{ hourly: null as unknown as number }, 'retention hourly must be a whole number of 0 or more, got null'],
    [{ dayly: 7 } as RetentionPolicy, 'unknown retention rule "dayly": use keepLast, hourly, daily, weekly, monthly'],
  ])('%p is rejected', (policy, message) => {
    expect(badInput(() => normalizeRetention(policy)).message).toContain(message);
  });

  test('every problem is reported at once', () => {
    const err = badInput(() => normalizeRetention({ daily: -1, weekly: 0.5, yearly: 2 } as RetentionPolicy));
    expect(err.message).toContain('unknown retention rule "yearly"');
    expect(err.message).toContain('retention daily must be');
    expect(err.message).toContain('retention weekly must be');
  });

  test.each([null, undefined, 7, 'daily', [{ daily: 7 }]])('%j is not a policy', (policy) => {
    expect(badInput(() => normalizeRetention(policy as unknown as RetentionPolicy)).message).toMatch(
      /^retention policy must be an object/,
    );
  });

  test('planRetention rejects what normalizeRetention rejects', () => {
    const one = [{ snapshotId: 's', createdAt: '2025-11-24T10:00:00Z' }];
    expect(badInput(() => planRetention(one, {})).message).toMatch(/^retention would keep nothing: /);
    expect(badInput(() => planRetention(one, { daily: -2 })).message).toContain('got -2');
  });
});

describe('describeRetention', () => {
  test.each<[RetentionPolicy, string]>([
    [{ keepLast: 3, hourly: 24, daily: 7 }, 'last 3, 24 hourly, 7 daily'],
    [{ monthly: 12, daily: 7, keepLast: 1, weekly: 4, hourly: 48 }, 'last 1, 48 hourly, 7 daily, 4 weekly, 12 monthly'],
    [{ daily: 7, weekly: 0 }, '7 daily'],
    [{ keepLast: 10 }, 'last 10'],
  ])('%j is "%s"', (policy, text) => {
    expect(describeRetention(policy)).toBe(text);
  });

  test('a policy that keeps nothing cannot be described', () => {
    expect(badInput(() => describeRetention({ daily: 0 })).message).toMatch(/^retention would keep nothing: /);
  });
});

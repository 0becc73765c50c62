/**
 * Unit tests of the schedule input checks (pure: no server). The cron cases were checked against a real Temporal
 * server (CLI 1.5.1, Server 1.29.1, `temporal schedule create --cron`): every "accepted" case was accepted and
 * every "rejected" case rejected by it, except the two `#` cases marked below, where groupsnap is stricter.
 */
import { ScheduleOverlapPolicy } from '@temporalio/client';
import {
  OVERLAP_NAMES,
  parseDuration,
  parseOverlap,
  scheduleIdFor,
  validateCron,
  validateTimezone,
} from '../../common/schedule-spec';
import { badInput } from '../helpers/bad-input';

describe('validateCron', () => {
  test.each([
    // 5 fields: minute hour day-of-month month day-of-week
    '* * * * *',
    '0 2 * * *',
    '*/5 * * * *',
    '0 0-23/2 * * *',
    '5/15 * * * *', // from 5 to 59 every 15
    '0 9-17 * * MON-FRI',
    '0 0 1 JAN,jul *',
    '0 0 1 january *',
    '0 0 1 janu *', // any month prefix of 3 letters or more
    '0 12 * * mo,we,fr', // any weekday prefix of 2 letters or more
    '0 0 * * sun',
    '0 0 * * 7', // 7 is Sunday too
    '0 0 * * 0-7',
    '0 0 * * 5-7',
    '0 0 * * SUN-SAT',
    '0 0 * * 1-1',
    '0 0 1-31/7 * *',
    '59 23 31 12 6',
    '0,15,30,45 */2 1,15 * *',
    // 6 fields: the sixth is the year
    '0 0 * * 2 2026',
    '0 0 1 1 * 2030-2035',
    // 7 fields: second first, year last
    '30 0 12 * * * *',
    '0 0 0 1 1 * 2030-2100/5',
    // predefined and intervals
    '@hourly',
    '@daily',
    '@midnight',
    '@weekly',
    '@monthly',
    '@yearly',
    '@annually',
    '@every 30m',
    '@every 1h/15m',
    '@every 1h/',
    '@every 2d',
    '@every 1.5h',
    '@every 1d12h',
    '@every 1s',
    // time zone prefix, comment, white space
    'TZ=Europe/Paris 0 3 * * *',
    'CRON_TZ=UTC @daily',
    'TZ=America/New_York @every 1h',
    '0 3 * * * # nightly',
    '  0 3 * * *  ',
    '0\t3  *\t* *',
    // Go's strconv.Atoi takes a leading '+', and so does the server
    '*/+5 * * * *',
  ])('accepts %j', (expr) => {
    expect(() => validateCron(expr)).not.toThrow();
  });

  test.each([
    ['61 * * * *', "minute field '61' is out of range 0-59"],
    ['0 24 * * *', "hour field '24' is out of range 0-23"],
    ['0 0 0 * *', "day-of-month field '0' is out of range 1-31"],
    ['0 0 32 * *', "day-of-month field '32' is out of range 1-31"],
    ['0 0 * 13 *', "month field '13' is out of range 1-12"],
    ['0 0 * 0 *', "month field '0' is out of range 1-12"],
    ['0 0 * * 8', "day-of-week field '8' is out of range 0-7"],
    ['0 0 * * * 1999', "year field '1999' is out of range 2000-2100"],
    ['0 0 * * * 2101', "year field '2101' is out of range 2000-2100"],
    ['60 0 0 * * * *', "second field '60' is out of range 0-59"],
    ['0 0-61 * * *', "hour field '61' is out of range 0-23"],
    ['0 0,25 * * *', "hour field '25' is out of range 0-23"],
    ['0 0 * * ?', "day-of-week field '?' is not supported by Temporal: use '*'"],
    ['0 0 ? * MON', "day-of-month field '?' is not supported by Temporal: use '*'"],
    ['0 0 L * *', "day-of-month field 'L' is not supported by Temporal"],
    ['0 0 15W * *', "day-of-month field '15W' is not supported by Temporal"],
    ['0 0 * * 5L', "day-of-week field '5L' is not supported by Temporal"],
    ['* * * *', 'it has 4 fields: use 5 (minute hour day-of-month month day-of-week), 6 (... year) or 7'],
    ['* * * * * * * *', 'it has 8 fields'],
    ['daily', 'it has 1 field:'],
    ['', 'it has 0 fields'],
    ['   ', 'it has 0 fields'],
    ['# only a comment', 'it has 0 fields'],
    ['*/0 * * * *', "minute field '*/0' has step '0': use a whole number of 1 or more"],
    ['*/-1 * * * *', "minute field '*/-1' has step '-1'"],
    ['*/x * * * *', "minute field '*/x' has step 'x'"],
    ['*/5/2 * * * *', "minute field '*/5/2' has more than one '/'"],
    ['/5 * * * *', "minute field '/5' has no value before '/'"],
    ['1-2-3 * * * *', "minute field '1-2-3' has more than one '-'"],
    ['30-10 * * * *', "minute field '30-10' ends before it starts"],
    ['0 0 * * MON-SUN', "day-of-week field 'MON-SUN' ends before it starts"], // SUN is 0: use MON-7
    ['0 0 * dec-jan *', "month field 'dec-jan' ends before it starts"],
    ['-5 * * * *', "minute field '-5' has a range without a start or end"],
    ['5- * * * *', "minute field '5-' has a range without a start or end"],
    ['*-5 * * * *', "minute field '*-5' has '*' in a range"],
    ['1,,2 * * * *', "minute field '1,,2' has an empty list item"],
    [',1 * * * *', "minute field ',1' has an empty list item"],
    ['0 0 * FOO *', "month field 'FOO' is not a number (use 1-12 or a name such as FEB)"],
    ['0 0 * ja *', "month field 'ja' is not a number"], // names need 3 letters
    ['0 0 * * M', "day-of-week field 'M' is not a number (use 0-7 or a name such as MON)"], // and 2 for weekdays
    ['MON 0 * * *', "minute field 'MON' is not a number (use 0-59)"], // names only in their own fields
    ['0 0 JAN * *', "day-of-month field 'JAN' is not a number"],
    ['1.5 * * * *', "minute field '1.5' is not a number"],
    ['@every', '@every needs a duration, e.g. @every 30m'],
    ['@everyday', '@every needs a duration'],
    ['@every 0s', "'@every 0s' is shorter than the minimum of 1s"],
    ['@every 500ms', "'@every 500ms' is shorter than the minimum of 1s"],
    ['@every -1h', "'@every -1h' is shorter than the minimum of 1s"],
    ['@every 1h/1h', "@every phase '1h' must be shorter than the interval '1h'"],
    ['@every 1h/2h', "@every phase '2h' must be shorter than the interval '1h'"],
    ['@every 1h/-5m', "@every phase '-5m' is negative"],
    ['@every 1h/5x', "@every phase '5x' is not a duration"],
    ['@every 1x', "'@every 1x' needs a duration such as 30s, 15m, 1h30m or 2d"],
    ['@every 1hm', "'@every 1hm' needs a duration"],
    ['@every 5', "'@every 5' needs a duration"],
    ['@every 1h extra', "'@every 1h extra' needs a duration"],
    ['@fortnightly', "'@fortnightly' is not one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"],
    ['@DAILY', "'@DAILY' is not one of"],
    ['@daily 0', "'@daily 0' is not one of"],
    ['TZ=Mars/Olympus 0 * * * *', 'time zone "Mars/Olympus" is not valid'],
    ['TZ=utc 0 * * * *', 'time zone "utc" is not valid'],
    ['TZ=UTC', 'it has a time zone but no schedule after it'],
    // Accepted by the server, which reads '#' as a comment and so runs these every Friday / every day:
    ['0 0 * * 5#3', "'5#3' is not supported: '#' starts a comment and needs a space before it"],
    ['0 3 * * *#nightly', "'*#nightly' is not supported"],
  ])('rejects %j: %s', (expr, reason) => {
    expect(badInput(() => validateCron(expr)).message).toContain(
      `cron expression ${JSON.stringify(expr)} is not valid: ${reason}`,
    );
  });

  test('the message names the expression, the field and the reason', () => {
    expect(badInput(() => validateCron('61 * * * *')).message).toBe(
      `cron expression "61 * * * *" is not valid: minute field '61' is out of range 0-59`,
    );
  });

  test('the 6th field is a year, not seconds: a seconds-first 6-field cron is caught by its year', () => {
    // robfig/cron's optional-seconds form; Temporal reads '5' as the year and rejects it.
    expect(badInput(() => validateCron('0 */5 * * * 5')).message).toContain("year field '5' is out of range 2000-2100");
  });

  test('a non-string is bad input', () => {
    expect(badInput(() => validateCron(undefined as unknown as string)).message).toContain('it is not a string');
  });
});

describe('validateTimezone', () => {
  test.each(['UTC', 'Europe/Paris', 'Asia/Tokyo', 'America/Argentina/Buenos_Aires', 'Etc/GMT+5', 'US/Pacific', 'GMT'])(
    'accepts %j',
    (tz) => {
      expect(() => validateTimezone(tz)).not.toThrow();
    },
  );

  test.each([
    ['Mars/Olympus', 'not a known IANA time zone name'],
    ['', 'give an IANA name such as UTC'],
    ['Local', 'not a known IANA time zone name'], // the server's local zone: not portable
    ['+01:00', 'not a known IANA time zone name'],
    ['utc', 'time zone names are case-sensitive, did you mean UTC?'],
    ['asia/tokyo', 'did you mean Asia/Tokyo?'],
    ['America/Port-Au-Prince', 'did you mean America/Port-au-Prince?'],
    ['us/Pacific', 'time zone names are case-sensitive'],
  ])('rejects %j', (tz, reason) => {
    const err = badInput(() => validateTimezone(tz));
    expect(err.message).toContain(`time zone ${JSON.stringify(tz)} is not valid: `);
    expect(err.message).toContain(reason);
  });
});

describe('parseDuration', () => {
  test.each([
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['2d', 172_800_000],
    ['1h30m', 5_400_000],
    ['500ms', 500],
    ['1d2h3m4s5ms', 93_784_005],
    ['90s', 90_000],
    ['0h1m', 60_000],
    [' 10m ', 600_000],
  ])('%j is %d ms', (text, ms) => {
    expect(parseDuration(text, 'catch-up window')).toBe(ms);
  });

  test.each([
    '',
    ' ',
    '5',
    'm',
    '1.5h',
    '-5m',
    '+5m',
    '5M',
    '1H',
    '1h 30m',
    '30m1h',
    '1h1h',
    '5 minutes',
    'abc',
    '1w',
    '1ms5s',
  ])('rejects %j, naming what it is', (text) => {
    const err = badInput(() => parseDuration(text, 'catch-up window'));
    expect(err.message).toBe(
      `catch-up window ${JSON.stringify(text)} is not a duration: use whole numbers with units d, h, m, s or ms, ` +
        `largest first, e.g. 30s, 5m, 1h30m, 2d or 500ms`,
    );
  });

  test.each(['0s', '0ms', '0d0h'])('rejects the zero duration %j', (text) => {
    expect(badInput(() => parseDuration(text, 'jitter')).message).toBe(
      `jitter ${JSON.stringify(text)} must be longer than zero`,
    );
  });

  test('rejects a duration too long to count in milliseconds', () => {
    expect(badInput(() => parseDuration('99999999999999d', 'pause')).message).toBe(
      'pause "99999999999999d" is too long',
    );
  });
});

describe('parseOverlap', () => {
  test('OVERLAP_NAMES lists the six policies', () => {
    expect(OVERLAP_NAMES).toEqual(['skip', 'buffer-one', 'buffer-all', 'cancel-other', 'terminate-other', 'allow-all']);
  });

  test.each(OVERLAP_NAMES.map((n) => [n]))('%s is a ScheduleOverlapPolicy of the Temporal client', (name) => {
    const key = name.toUpperCase().replace(/-/g, '_') as keyof typeof ScheduleOverlapPolicy;
    expect(ScheduleOverlapPolicy[key]).toBeDefined();
  });

  test.each(OVERLAP_NAMES.map((n) => [n]))('parses %s', (name) => {
    expect(parseOverlap(name)).toBe(name);
  });

  test.each([
    ['BUFFER_ONE', 'buffer-one'],
    ['Skip', 'skip'],
    [' allow-all ', 'allow-all'],
    ['terminate_other', 'terminate-other'],
  ])('parses %j as %s', (text, name) => {
    expect(parseOverlap(text)).toBe(name);
  });

  test.each(['', 'bogus', 'buffer', 'cancel', 'skip-all'])('rejects %j, listing the valid names', (text) => {
    expect(badInput(() => parseOverlap(text)).message).toBe(
      `overlap policy ${JSON.stringify(text)} is not valid: use one of ` +
        'skip, buffer-one, buffer-all, cancel-other, terminate-other, allow-all',
    );
  });
});

describe('scheduleIdFor', () => {
  test('is groupsnap-schedule/<group>', () => {
    expect(scheduleIdFor('shop')).toBe('groupsnap-schedule/shop');
    expect(scheduleIdFor('db-tier_2.eu')).toBe('groupsnap-schedule/db-tier_2.eu');
  });

  test.each(['', '../shop', 'a/b', '.hidden', 'x'.repeat(101)])('rejects the unsafe group name %j', (group) => {
    expect(badInput(() => scheduleIdFor(group)).message).toContain('group name');
  });
});

/**
 * Checks for the parts of a Temporal schedule that groupsnap lets users write: cron expressions, time zones,
 * durations and overlap policies. Pure and deterministic (no Node built-ins, no clock, no randomness; only
 * `Intl`), so workflows can use it as well as the client and the CLI.
 *
 * {@link validateCron} follows the Temporal server's own cron parser (`service/worker/scheduler/calendar.go`,
 * `parseCronString`), which compiles `ScheduleSpec.cronString` (the TypeScript SDK's `cronExpressions`):
 *
 * - optional `TZ=<zone> ` or `CRON_TZ=<zone> ` prefix and an optional trailing `# comment`;
 * - `@every <duration>[/<phase>]` (Go durations plus `d` for 24 h; interval at least 1 s, phase below it);
 * - `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`;
 * - 5 fields `minute hour day-of-month month day-of-week`, 6 fields `... day-of-week year` (the sixth field is
 *   a **year**, not seconds), or 7 fields `second minute hour day-of-month month day-of-week year`;
 * - each field a comma list of `*`, `x`, `x-y`, `*\/n`, `x-y/n` or `x/n` (from x to the field's maximum);
 *   months also by name prefix of at least 3 letters (`jan`, `JAN`, `january`), days of week by prefix of at
 *   least 2 letters (`mo`, `MON`, `monday`), both case-insensitive; day of week 0-7 (0 and 7 are Sunday); years
 *   2000-2100.
 *
 * The server rejects Quartz's `?`, `L` and `W`, so this does too. It reads `#` as the start of a comment, so
 * Quartz's `5#3` (third Friday) would silently mean every Friday: this rejects a `#` that does not follow white
 * space, the one place where it is stricter than the server.
 */
import { BadInputError } from './failures';
import { assertSafeName } from './validation';

// ---------------------------------------------------------------------------------------------------------------
// Time zones

/**
 * Checks that `tz` is an IANA time zone name that Temporal (Go's `time.LoadLocation`) and `Intl` both know.
 * `UTC` is accepted. Names must be spelled with IANA's capitalisation (`Asia/Tokyo`, not `asia/tokyo`): `Intl`
 * ignores case but the server's zone database does not.
 * @throws BadInputError naming the zone.
 */
export function validateTimezone(tz: string): void {
  const bad = (why: string): BadInputError => new BadInputError(`time zone ${JSON.stringify(tz)} is not valid: ${why}`);
  if (typeof tz !== 'string' || tz === '') throw bad('give an IANA name such as UTC or Europe/Paris');
  const notIana = 'not a known IANA time zone name (e.g. UTC, Europe/Paris, America/New_York)';
  // Node 22+ (newer ICU) accepts UTC offsets such as +01:00 as a time zone; the server's schedules do not.
  if (/^[+-]/.test(tz)) throw bad(notIana);
  let resolved: string;
  try {
    resolved = new Intl.DateTimeFormat('en-US', { timeZone: tz }).resolvedOptions().timeZone;
  } catch {
    throw bad(notIana);
  }
  // Every IANA name (zone or link) has segments starting with an upper-case letter: UTC, Etc/GMT+5, US/Pacific.
  const wrongCase =
    tz.split('/').some((segment) => !/^[A-Z]/.test(segment)) ||
    (resolved.toLowerCase() === tz.toLowerCase() && resolved !== tz);
  if (wrongCase) throw bad(`time zone names are case-sensitive, did you mean ${resolved}?`);
}

// ---------------------------------------------------------------------------------------------------------------
// Durations

const DURATION = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$/;
const DURATION_UNITS_MS = [86_400_000, 3_600_000, 60_000, 1_000, 1];

/**
 * Parses a positive duration such as `30s`, `5m`, `1h`, `2d`, `1h30m` or `500ms` into milliseconds: whole
 * numbers, units `d` (24 h), `h`, `m`, `s`, `ms`, each at most once and from largest to smallest.
 * @param what names the value in the error message, e.g. `catch-up window`.
 * @throws BadInputError naming `what` for anything else, including zero.
 */
export function parseDuration(text: string, what: string): number {
  const trimmed = typeof text === 'string' ? text.trim() : '';
  const m = DURATION.exec(trimmed);
  if (trimmed === '' || !m) {
    throw new BadInputError(
      `${what} ${JSON.stringify(text)} is not a duration: use whole numbers with units d, h, m, s or ms, ` +
        `largest first, e.g. 30s, 5m, 1h30m, 2d or 500ms`,
    );
  }
  let ms = 0;
  for (let i = 0; i < DURATION_UNITS_MS.length; i++) {
    if (m[i + 1] !== undefined) ms += Number(m[i + 1]) * DURATION_UNITS_MS[i];
  }
  if (ms === 0) throw new BadInputError(`${what} ${JSON.stringify(text)} must be longer than zero`);
  if (!Number.isSafeInteger(ms)) throw new BadInputError(`${what} ${JSON.stringify(text)} is too long`);
  return ms;
}

// ---------------------------------------------------------------------------------------------------------------
// Overlap policies

/** How a schedule treats a run that is due while the previous one still runs (Temporal's ScheduleOverlapPolicy). */
export type OverlapName = 'skip' | 'buffer-one' | 'buffer-all' | 'cancel-other' | 'terminate-other' | 'allow-all';
export const OVERLAP_NAMES: readonly OverlapName[] = [
  'skip',
  'buffer-one',
  'buffer-all',
  'cancel-other',
  'terminate-other',
  'allow-all',
];

/**
 * Parses an overlap policy name. Case and `_` versus `-` do not matter (`BUFFER_ONE` is `buffer-one`), so
 * Temporal's own enum names work too.
 * @throws BadInputError listing the valid names.
 */
export function parseOverlap(name: string): OverlapName {
  const normalized = typeof name === 'string' ? name.trim().toLowerCase().replace(/_/g, '-') : '';
  const found = OVERLAP_NAMES.find((n) => n === normalized);
  if (!found) {
    throw new BadInputError(
      `overlap policy ${JSON.stringify(name)} is not valid: use one of ${OVERLAP_NAMES.join(', ')}`,
    );
  }
  return found;
}

// ---------------------------------------------------------------------------------------------------------------
// Schedule ids

/**
 * Id of the Temporal schedule of a group: `groupsnap-schedule/<group>`.
 * @throws BadInputError when the group name is not safe (see {@link assertSafeName}).
 */
export function scheduleIdFor(group: string): string {
  assertSafeName('group name', group);
  return `groupsnap-schedule/${group}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Cron

interface CronField {
  name: string;
  min: number;
  max: number;
  names?: { list: readonly string[]; minLength: number; first: number };
}

const MONTHS = [
  'january',
  'february',
  'march',
  'april',
  'may',
  'june',
  'july',
  'august',
  'september',
  'october',
  'november',
  'december',
];
const WEEKDAYS = ['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'];

const SECOND: CronField = { name: 'second', min: 0, max: 59 };
const MINUTE: CronField = { name: 'minute', min: 0, max: 59 };
const HOUR: CronField = { name: 'hour', min: 0, max: 23 };
const DAY_OF_MONTH: CronField = { name: 'day-of-month', min: 1, max: 31 };
const MONTH: CronField = { name: 'month', min: 1, max: 12, names: { list: MONTHS, minLength: 3, first: 1 } };
const DAY_OF_WEEK: CronField = {
  name: 'day-of-week',
  min: 0,
  max: 7,
  names: { list: WEEKDAYS, minLength: 2, first: 0 },
};
const YEAR: CronField = { name: 'year', min: 2000, max: 2100 };

const FIELD_LAYOUTS: Record<number, CronField[]> = {
  5: [MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
  6: [MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK, YEAR],
  7: [SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK, YEAR],
};

const PREDEFINED = ['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly'];

/** Go's strconv.Atoi syntax (an optional sign, then decimal digits). */
const GO_INT = /^[+-]?\d+$/;

class CronError extends Error {}

/** A single value of a field: a number, or a month / day-of-week name prefix. */
function cronValue(field: CronField, text: string): number {
  if (field.names && text.length >= field.names.minLength) {
    const lower = text.toLowerCase();
    const index = field.names.list.findIndex((n) => n.startsWith(lower));
    if (index >= 0) return index + field.names.first;
  }
  if (text === '?') throw new CronError(`${field.name} field '?' is not supported by Temporal: use '*'`);
  if (/^\d*[LW]$/i.test(text)) {
    throw new CronError(`${field.name} field '${text}' is not supported by Temporal (no Quartz 'L' or 'W')`);
  }
  if (!GO_INT.test(text)) {
    const hint = field.names
      ? `use ${field.min}-${field.max} or a name such as ${field.names.list[1].slice(0, 3).toUpperCase()}`
      : `use ${field.min}-${field.max}`;
    throw new CronError(`${field.name} field '${text}' is not a number (${hint})`);
  }
  const value = Number(text);
  if (value < field.min || value > field.max) {
    throw new CronError(`${field.name} field '${text}' is out of range ${field.min}-${field.max}`);
  }
  return value;
}

function checkCronField(field: CronField, text: string): void {
  for (const part of text.split(',')) {
    if (part === '') throw new CronError(`${field.name} field '${text}' has an empty list item`);
    let range = part;
    if (part.includes('/')) {
      const pieces = part.split('/');
      if (pieces.length !== 2) throw new CronError(`${field.name} field '${part}' has more than one '/'`);
      range = pieces[0];
      if (!GO_INT.test(pieces[1]) || Number(pieces[1]) < 1) {
        throw new CronError(`${field.name} field '${part}' has step '${pieces[1]}': use a whole number of 1 or more`);
      }
    }
    if (range === '*') continue;
    if (range === '') throw new CronError(`${field.name} field '${part}' has no value before '/'`);
    if (range.includes('-')) {
      const ends = range.split('-');
      if (ends.length !== 2) throw new CronError(`${field.name} field '${part}' has more than one '-'`);
      if (ends.includes('')) throw new CronError(`${field.name} field '${part}' has a range without a start or end`);
      if (ends.includes('*')) throw new CronError(`${field.name} field '${part}' has '*' in a range`);
      const start = cronValue(field, ends[0]);
      if (cronValue(field, ends[1]) < start) {
        throw new CronError(`${field.name} field '${part}' ends before it starts`);
      }
    } else {
      cronValue(field, range);
    }
  }
}

const GO_DURATION_ELEMENT = /(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;
const GO_UNIT_SECONDS: Record<string, number> = {
  ns: 1e-9,
  us: 1e-6,
  µs: 1e-6,
  μs: 1e-6,
  ms: 1e-3,
  s: 1,
  m: 60,
  h: 3600,
};
const GO_MAX_DURATION_SECONDS = 9_223_372_036.854775807;

/**
 * Seconds of a duration as the Temporal server reads it (`timestamp.ParseDuration`: Go's `time.ParseDuration`
 * after rewriting each `<n>d` as 24n hours), or undefined when the server would reject it.
 */
function goDurationSeconds(text: string): number | undefined {
  let s = text.replace(/(\d+(\.\d*)?|(\.\d+))d/g, (v) => `${24 * Number(v.slice(0, -1))}h`);
  let sign = 1;
  if (s.startsWith('-') || s.startsWith('+')) {
    if (s.startsWith('-')) sign = -1;
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') return undefined;
  let total = 0;
  GO_DURATION_ELEMENT.lastIndex = 0;
  while (GO_DURATION_ELEMENT.lastIndex < s.length) {
    const m = GO_DURATION_ELEMENT.exec(s);
    // The unit is every character up to the next digit or dot: a longer unit ("hm") is unknown.
    if (!m || /^[^\d.]/.test(s.slice(GO_DURATION_ELEMENT.lastIndex))) return undefined;
    total += Number(m[1]) * GO_UNIT_SECONDS[m[2]];
  }
  if (total > GO_MAX_DURATION_SECONDS) return undefined;
  return sign * total;
}

function checkEvery(rest: string): void {
  const [interval, phase] = rest.split(/\/(.*)/s, 2);
  const intervalSeconds = goDurationSeconds(interval);
  if (intervalSeconds === undefined) {
    throw new CronError(`'@every ${interval}' needs a duration such as 30s, 15m, 1h30m or 2d`);
  }
  if (intervalSeconds < 1) throw new CronError(`'@every ${interval}' is shorter than the minimum of 1s`);
  if (!phase) return; // '@every 1h/' has no phase, as on the server
  const phaseSeconds = goDurationSeconds(phase);
  if (phaseSeconds === undefined) throw new CronError(`@every phase '${phase}' is not a duration such as 5m`);
  if (phaseSeconds < 0) throw new CronError(`@every phase '${phase}' is negative`);
  if (phaseSeconds >= intervalSeconds) {
    throw new CronError(`@every phase '${phase}' must be shorter than the interval '${interval}'`);
  }
}

/**
 * Checks a cron expression the way the Temporal server parses a schedule's `cronString` (see the module
 * comment for the accepted forms).
 * @throws BadInputError quoting the expression, the field and the reason, e.g.
 *   `cron expression "61 * * * *" is not valid: minute field '61' is out of range 0-59`.
 */
export function validateCron(expr: string): void {
  try {
    if (typeof expr !== 'string') throw new CronError('it is not a string');
    let c = expr.trim();
    if (c.startsWith('TZ=') || c.startsWith('CRON_TZ=')) {
      const space = c.indexOf(' ');
      if (space < 0) throw new CronError('it has a time zone but no schedule after it');
      const tz = c.slice(c.indexOf('=') + 1, space);
      if (tz !== '') {
        try {
          validateTimezone(tz);
        } catch (err) {
          throw new CronError((err as Error).message);
        }
      }
      c = c.slice(space + 1);
    }
    const hash = c.indexOf('#');
    if (hash >= 0) {
      // The server cuts a comment at the first '#', so Quartz's "5#3" (third Friday) would silently mean "every
      // Friday": only a '#' after white space is taken as a comment.
      if (hash > 0 && !/\s/.test(c[hash - 1])) {
        const token = c.split(/\s+/).find((t) => t.includes('#'));
        throw new CronError(
          `'${token}' is not supported: '#' starts a comment and needs a space before it; ` +
            `Temporal has no nth-weekday form such as 5#3`,
        );
      }
      c = c.slice(0, hash);
    }
    c = c.trim();
    if (c.startsWith('@every')) {
      const space = c.indexOf(' ');
      if (space < 0) throw new CronError('@every needs a duration, e.g. @every 30m');
      checkEvery(c.slice(space + 1));
      return;
    }
    if (c.startsWith('@')) {
      if (PREDEFINED.includes(c)) return;
      throw new CronError(`'${c}' is not one of ${PREDEFINED.join(', ')} or @every <duration>`);
    }
    const fields = c.split(/\s+/).filter((f) => f !== '');
    const layout = FIELD_LAYOUTS[fields.length];
    if (!layout) {
      throw new CronError(
        `it has ${fields.length} field${fields.length === 1 ? '' : 's'}: use 5 (minute hour day-of-month month ` +
          `day-of-week), 6 (... year) or 7 (second ... year)`,
      );
    }
    layout.forEach((field, i) => checkCronField(field, fields[i]));
  } catch (err) {
    if (err instanceof CronError) {
      throw new BadInputError(`cron expression ${JSON.stringify(expr)} is not valid: ${err.message}`);
    }
    throw err;
  }
}

/**
 * Retention of group snapshots: which to keep and which to delete, grandfather-father-son style as in
 * `restic forget` and `borg prune`. Pure (no Node built-ins, no clock, no randomness). Wall-clock buckets need
 * time-zone data (`Intl`): workflows get them from an activity ({@link retentionBucketsIn}) and pass them to
 * {@link planRetention}, so a plan never depends on the ICU data of the worker that replays it.
 */
import { validateTimezone } from './schedule-spec';
import { BadInputError } from './failures';

/** How many snapshots to keep, by rule. An absent or zero rule keeps nothing by itself. */
export interface RetentionPolicy {
  /** The N newest snapshots. */
  keepLast?: number;
  /** The newest snapshot of each of the N newest hours that have one. */
  hourly?: number;
  /** The newest snapshot of each of the N newest days that have one. */
  daily?: number;
  /** The newest snapshot of each of the N newest ISO weeks (Monday to Sunday) that have one. */
  weekly?: number;
  /** The newest snapshot of each of the N newest months that have one. */
  monthly?: number;
}

export interface RetentionCandidate {
  snapshotId: string;
  /** ISO 8601 date and time with `Z` or an offset, e.g. `2025-11-24T10:00:00.000Z`. */
  createdAt: string;
}

export interface RetentionPlan {
  /** Newest first; `reasons` in rule order, e.g. `['last', 'daily 2025-11-24']`. */
  keep: { snapshotId: string; reasons: string[] }[];
  /** Snapshot ids to delete, oldest first. */
  remove: string[];
}

type Rule = keyof RetentionPolicy;
const RULES: readonly Rule[] = ['keepLast', 'hourly', 'daily', 'weekly', 'monthly'];

function show(value: unknown): string {
  return typeof value === 'number' ? String(value) : JSON.stringify(value);
}

/**
 * Checks a retention policy and drops its zero rules.
 * @returns a new policy with only the rules that keep something, in the order keepLast, hourly, daily, weekly,
 *   monthly.
 * @throws BadInputError listing every problem: unknown rules, counts that are not whole numbers of 0 or more, and
 *   a policy that keeps nothing (every rule absent or zero).
 */
export function normalizeRetention(p: RetentionPolicy): RetentionPolicy {
  if (p === null || typeof p !== 'object' || Array.isArray(p)) {
    throw new BadInputError(`retention policy must be an object such as { daily: 7 }, got ${show(p)}`);
  }
  const problems: string[] = [];
  for (const key of Object.keys(p)) {
    if (!(RULES as readonly string[]).includes(key)) {
      problems.push(`unknown retention rule ${JSON.stringify(key)}: use ${RULES.join(', ')}`);
    }
  }
  const normalized: RetentionPolicy = {};
  for (const rule of RULES) {
    const value: unknown = p[rule];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      problems.push(`retention ${rule} must be a whole number of 0 or more, got ${show(value)}`);
    } else if (value > 0) {
      normalized[rule] = value;
    }
  }
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
  if (Object.keys(normalized).length === 0) {
    throw new BadInputError(
      `retention would keep nothing: every rule is absent or zero; give at least one of ${RULES.join(', ')} ` +
        `a count of 1 or more`,
    );
  }
  return normalized;
}

/**
 * A policy in words, e.g. `last 3, 24 hourly, 7 daily` (rules in the order keepLast, hourly, daily, weekly,
 * monthly; zero rules left out).
 * @throws BadInputError as {@link normalizeRetention} does.
 */
export function describeRetention(p: RetentionPolicy): string {
  const n = normalizeRetention(p);
  return RULES.filter((rule) => n[rule] !== undefined)
    .map((rule) => (rule === 'keepLast' ? `last ${n[rule]}` : `${n[rule]} ${rule}`))
    .join(', ');
}

// ---------------------------------------------------------------------------------------------------------------
// Calendar arithmetic (proleptic Gregorian, no Date objects)

/** Days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil). */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

/** Year of the civil date `days` after 1970-01-01 (H. Hinnant's civil_from_days, year only). */
function yearFromDays(days: number): number {
  const z = days + 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const month = mp < 10 ? mp + 3 : mp - 9;
  return yoe + era * 400 + (month <= 2 ? 1 : 0);
}

function daysInMonth(year: number, month: number): number {
  return daysFromCivil(month === 12 ? year + 1 : year, month === 12 ? 1 : month + 1, 1) - daysFromCivil(year, month, 1);
}

/** ISO 8601 week of a civil date: weeks start on Monday; week 1 holds the year's first Thursday. */
function isoWeek(year: number, month: number, day: number): { year: number; week: number } {
  const days = daysFromCivil(year, month, day);
  const weekday = (((days + 3) % 7) + 7) % 7; // Monday 0 ... Sunday 6 (1970-01-01 was a Thursday)
  const thursday = days - weekday + 3;
  const isoYear = yearFromDays(thursday);
  return { year: isoYear, week: Math.floor((thursday - daysFromCivil(isoYear, 1, 1)) / 7) + 1 };
}

const ISO_DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(?:(Z)|([+-])(\d{2}):(\d{2}))$/;

/** Milliseconds since the epoch of an ISO 8601 date-time with `Z` or an offset, or undefined if it is not one. */
export function parseIsoMs(text: string): number | undefined {
  const m = typeof text === 'string' ? ISO_DATE_TIME.exec(text) : null;
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i] ?? 0));
  const offsetHours = Number(m[10] ?? 0);
  const offsetMinutes = Number(m[11] ?? 0);
  if (
    month < 1 ||
    month > 12 ||
    day < 1 ||
    day > daysInMonth(year, month) ||
    hour > 23 ||
    minute > 59 ||
    second > 59 ||
    offsetHours > 23 ||
    offsetMinutes > 59
  ) {
    return undefined;
  }
  const millis = m[7] === undefined ? 0 : Number(m[7].padEnd(3, '0').slice(0, 3));
  const offset = (m[9] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes);
  return (
    (daysFromCivil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second - offset * 60) * 1_000 + millis
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Planning

type BucketRule = Exclude<Rule, 'keepLast'>;
const BUCKET_RULES: readonly BucketRule[] = ['hourly', 'daily', 'weekly', 'monthly'];

interface Dated {
  snapshotId: string;
  ms: number;
  reasons: string[];
  buckets?: RetentionBuckets;
}

const pad = (n: number, width = 2): string => String(n).padStart(width, '0');

/**
 * The hour, day, ISO week and month an instant falls in, as wall-clock time in a time zone, e.g.
 * `{ hourly: '2025-11-24 10:00', daily: '2025-11-24', weekly: '2025-W48', monthly: '2025-11' }`.
 */
export type RetentionBuckets = Record<BucketRule, string>;

function formatIn(timezone: string): Intl.DateTimeFormat {
  return new Intl.DateTimeFormat('en-US-u-ca-gregory-nu-latn', {
    timeZone: timezone,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    hourCycle: 'h23',
  });
}

/**
 * The buckets of each of `createdAt` (ISO 8601 date-times with `Z` or an offset) in `timezone`, keyed by the given
 * text; values that are not such date-times are left out. Uses the time-zone data of the process it runs in
 * (`Intl`), so workflows take it as an activity result rather than computing it themselves: their replay must not
 * depend on a worker's ICU version.
 * @throws BadInputError for an unknown time zone.
 */
export function retentionBucketsIn(timezone: string, createdAt: readonly string[]): Record<string, RetentionBuckets> {
  validateTimezone(timezone);
  const format = formatIn(timezone);
  const out: Record<string, RetentionBuckets> = {};
  for (const text of createdAt) {
    const ms = parseIsoMs(text);
    if (ms !== undefined) out[text] = bucketsOf(format, ms);
  }
  return out;
}

const BUCKET_SHAPES: Record<BucketRule, RegExp> = {
  hourly: /^\d{4}-\d{2}-\d{2} \d{2}:00$/,
  daily: /^\d{4}-\d{2}-\d{2}$/,
  weekly: /^\d{4}-W\d{2}$/,
  monthly: /^\d{4}-\d{2}$/,
};

function isBuckets(b: unknown): b is RetentionBuckets {
  return (
    typeof b === 'object' &&
    b !== null &&
    BUCKET_RULES.every(
      (r) =>
        typeof (b as Record<string, unknown>)[r] === 'string' &&
        BUCKET_SHAPES[r].test((b as Record<string, string>)[r]),
    )
  );
}

/** The bucket of each rule for an instant, as wall-clock time in the formatter's time zone. */
function bucketsOf(format: Intl.DateTimeFormat, ms: number): Record<BucketRule, string> {
  const parts: Record<string, number> = {};
  for (const part of format.formatToParts(ms)) {
    if (part.type !== 'literal') parts[part.type] = Number(part.value);
  }
  const { year, month, day } = parts;
  const hour = parts.hour % 24; // some ICU versions write midnight as 24
  const date = `${pad(year, 4)}-${pad(month)}-${pad(day)}`;
  const week = isoWeek(year, month, day);
  return {
    hourly: `${date} ${pad(hour)}:00`,
    daily: date,
    weekly: `${pad(week.year, 4)}-W${pad(week.week)}`,
    monthly: `${pad(year, 4)}-${pad(month)}`,
  };
}

/**
 * Plans which snapshots a retention policy keeps, the way `restic forget` / `borg prune` do: snapshots are
 * sorted newest first; `keepLast` keeps the N newest; each of `hourly`, `daily`, `weekly` (ISO weeks, starting
 * Monday) and `monthly` walks from newest to oldest and keeps the newest snapshot of each bucket (hour, day, week,
 * month) until it has kept N buckets. Buckets are wall-clock periods in `options.timezone` (IANA name, default
 * `UTC`). Snapshots with the same `createdAt` are ordered by `snapshotId` (the greater id counts as the newer),
 * so the plan never depends on the input order. The newest snapshot is always kept.
 * @returns kept snapshots newest first, each with every rule that keeps it (`last`, `hourly 2025-11-24 10:00`,
 *   `daily 2025-11-24`, `weekly 2025-W48`, `monthly 2025-11`), and the other ids, oldest first.
 * @throws BadInputError for an invalid policy (see {@link normalizeRetention}), an unknown time zone, a
 *   `createdAt` that is not an ISO 8601 date-time with `Z` or an offset, or a missing or repeated snapshot id.
 */
export function planRetention(
  snapshots: RetentionCandidate[],
  policy: RetentionPolicy,
  options: {
    timezone?: string;
    /**
     * Each snapshot's buckets by its `createdAt` (from {@link retentionBucketsIn}, e.g. as an activity result): the
     * plan then uses no time-zone data of its own and is the same on every worker. Without it, buckets are computed
     * here with `Intl` in `timezone`.
     */
    buckets?: Record<string, RetentionBuckets>;
  } = {},
): RetentionPlan {
  const rules = normalizeRetention(policy);
  const timezone = options.timezone ?? 'UTC';
  const given = options.buckets;
  if (!given) validateTimezone(timezone);
  if (!Array.isArray(snapshots)) throw new BadInputError('retention needs a list of snapshots');

  const problems: string[] = [];
  const seen = new Set<string>();
  const dated: Dated[] = [];
  for (const s of snapshots) {
    const id: unknown = s?.snapshotId;
    if (typeof id !== 'string' || id === '') {
      problems.push(`snapshot ${JSON.stringify(s)} has no snapshot id`);
      continue;
    }
    if (seen.has(id)) problems.push(`snapshot ${id} is listed twice`);
    seen.add(id);
    const ms = parseIsoMs(s.createdAt);
    if (ms === undefined) {
      problems.push(
        `snapshot ${id} has createdAt ${show(s.createdAt)}, not an ISO 8601 date and time with Z or an offset`,
      );
      continue;
    }
    if (given && !isBuckets(given[s.createdAt])) {
      problems.push(
        `snapshot ${id} has no valid ${timezone} hour, day, week and month for createdAt ${show(s.createdAt)}`,
      );
      continue;
    }
    dated.push({ snapshotId: id, ms, reasons: [], ...(given ? { buckets: given[s.createdAt] } : {}) });
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 5).join('; ');
    throw new BadInputError(problems.length > 5 ? `${shown}; and ${problems.length - 5} more` : shown);
  }

  // Newest first; equal times by id, greater id first (code-unit order, independent of any locale).
  dated.sort((a, b) => b.ms - a.ms || (a.snapshotId < b.snapshotId ? 1 : a.snapshotId > b.snapshotId ? -1 : 0));

  dated.slice(0, rules.keepLast ?? 0).forEach((s) => s.reasons.push('last'));

  const format = given ? undefined : formatIn(timezone);
  const buckets = dated.map((s) => s.buckets ?? bucketsOf(format!, s.ms));
  for (const rule of BUCKET_RULES) {
    const limit = rules[rule] ?? 0;
    const kept = new Set<string>();
    for (let i = 0; i < dated.length && kept.size < limit; i++) {
      const bucket = buckets[i][rule];
      if (kept.has(bucket)) continue;
      kept.add(bucket);
      dated[i].reasons.push(`${rule} ${bucket}`);
    }
  }

  return {
    keep: dated.filter((s) => s.reasons.length > 0).map((s) => ({ snapshotId: s.snapshotId, reasons: s.reasons })),
    remove: dated
      .filter((s) => s.reasons.length === 0)
      .map((s) => s.snapshotId)
      .reverse(),
  };
}

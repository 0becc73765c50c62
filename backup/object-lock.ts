/**
 * Object Lock of a repository (docs/repository-format.md, "Object Lock"): the dates every locked object gets, and
 * what an export knows of its chunks' retention (from the chunk index), so it extends only the chunks whose known
 * lock ends too early.
 */
import { bisect } from './chunk-id-set';
import type { LockMode } from './store';

export const DAY_MS = 24 * 3600_000;

/** The lock settings recorded (authenticated) in a repository's config. */
export interface ObjectLockSettings {
  mode: LockMode;
  /** Every point is locked this many days from its export. */
  days: number;
}

/**
 * How much longer than needed a chunk is locked when it is stored or extended: a quarter of the lock period, at
 * least a day. A chunk is extended when its known lock ends less than half of that after the lock a new point needs,
 * so a chunk shared by every export is extended about once per this period, not once per export.
 */
export function lockSlackMs(s: ObjectLockSettings): number {
  return Math.max(DAY_MS, Math.ceil(s.days / 4) * DAY_MS);
}

/** When a manifest written at `now` is locked until: `now` + the lock period. */
export function manifestRetainUntil(s: ObjectLockSettings, now: number): number {
  return now + s.days * DAY_MS;
}

/**
 * The least lock every chunk of a disk exported at `now` must have (its point's lock plus half the slack, which
 * covers the rest of the export: the group manifest is written later, and its lock is the point's).
 */
export function chunkNeededUntil(s: ObjectLockSettings, now: number): number {
  return manifestRetainUntil(s, now) + lockSlackMs(s) / 2;
}

/** The lock a chunk gets when it is stored or extended at `now`. */
export function chunkRetainUntil(s: ObjectLockSettings, now: number): number {
  return manifestRetainUntil(s, now) + lockSlackMs(s);
}

/**
 * What is known of chunks' retention: for each index object, the date (ms) all its chunks are locked until at least,
 * and its ids (sorted 32-byte ids, as the index stores them); plus the chunks this process stored or extended.
 */
export class ChunkRetention {
  private readonly objects: { until: number; ids: Buffer }[] = [];
  private readonly noted = new Map<string, number>();

  /** Adds one index object's ids, all locked until at least `until`. */
  addSorted(until: number, ids: Buffer): void {
    if (until > 0 && ids.length >= 32) this.objects.push({ until, ids });
  }

  note(id: string, until: number): void {
    if (until > (this.noted.get(id) ?? 0)) this.noted.set(id, until);
  }

  /** The latest date the chunk is known to be locked until (0: unknown). */
  until(id: string): number {
    let best = this.noted.get(id) ?? 0;
    if (this.objects.length === 0) return best;
    const want = Buffer.from(id, 'hex');
    if (want.length !== 32) return best;
    for (const o of this.objects) if (o.until > best && bisect(o.ids, want)) best = o.until;
    return best;
  }
}

/** An index object's body in a locked repository: the date (8 bytes, ms, big-endian) its chunks are locked until. */
export function datedIndexBody(until: number, ids: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(until))));
  return Buffer.concat([head, ids]);
}

/** {@link datedIndexBody} taken apart; `undefined` when too short. */
export function parseDatedIndexBody(body: Buffer): { until: number; ids: Buffer } | undefined {
  if (body.length < 8) return undefined;
  return { until: Number(body.readBigUInt64BE(0)), ids: body.subarray(8) };
}

/**
 * A set of chunk ids (64 hex digits) for the chunk index: the loaded index objects stay as they are stored, 32-byte
 * ids sorted in each, searched by bisection, so loading 10^5 ids costs no string per id; ids added or removed later
 * are kept in small sets beside them. An object whose ids are not sorted only makes lookups miss (by the index's
 * contract, a missed chunk is uploaded again; a hit is never invented).
 */
export class ChunkIdSet implements Iterable<string> {
  private readonly sorted: Buffer[] = [];
  private readonly added = new Set<string>();
  private readonly removed = new Set<string>();

  /** Adds the ids of one index object (32 bytes each, ascending). */
  addSorted(ids: Buffer): void {
    if (ids.length >= 32) this.sorted.push(ids);
  }

  add(id: string): this {
    this.removed.delete(id);
    this.added.add(id);
    return this;
  }

  delete(id: string): boolean {
    const had = this.has(id);
    this.added.delete(id);
    this.removed.add(id);
    return had;
  }

  has(id: string): boolean {
    if (this.removed.has(id)) return false;
    if (this.added.has(id)) return true;
    if (this.sorted.length === 0 || id.length !== 64) return false;
    const want = Buffer.from(id, 'hex');
    if (want.length !== 32) return false;
    return this.sorted.some((b) => bisect(b, want));
  }

  /** The ids added one by one (a listing's, uploads'). */
  addedIds(): ReadonlySet<string> {
    return this.added;
  }

  /** The number of distinct ids (walks them all: for tests and reports, not lookups). */
  get size(): number {
    let n = 0;
    for (const _ of this) n++;
    return n;
  }

  *[Symbol.iterator](): Iterator<string> {
    const seen = new Set<string>();
    for (const b of this.sorted) {
      for (let off = 0; off + 32 <= b.length; off += 32) {
        const id = b.toString('hex', off, off + 32);
        if (seen.has(id) || this.removed.has(id)) continue;
        seen.add(id);
        yield id;
      }
    }
    for (const id of this.added) if (!seen.has(id) && !this.removed.has(id)) yield id;
  }
}

/** Whether `want` (32 bytes) is one of the ascending 32-byte ids in `b`. */
/** Whether `want` (32 bytes) is in `b`, a buffer of 32-byte ids in ascending order. */
export function bisect(b: Buffer, want: Buffer): boolean {
  let lo = 0;
  let hi = Math.floor(b.length / 32) - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = b.compare(want, 0, 32, mid * 32, mid * 32 + 32);
    if (c === 0) return true;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

/** `ids` (hex) as one buffer of 32-byte ids in ascending order, as index objects are written. */
export function sortedIdBuffer(ids: string[]): Buffer {
  return Buffer.from([...ids].sort().join(''), 'hex');
}

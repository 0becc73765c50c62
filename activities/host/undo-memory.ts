/** How long a host remembers that a snapshot's undo started (a freeze activity lives at most ~10.5 minutes). */
export const UNDO_MEMORY_MS = 60 * 60_000;

/** A run's own snapshot on this host: its lease owner (the workflow run) and snapshot id. */
export const runKey = (req: { leaseOwner: string; snapshotId: string }): string =>
  `${req.leaseOwner}/${req.snapshotId}`;

/**
 * Freezes running in this process, by run, and the runs whose undo has started. A freeze the workflow gave up on (its
 * heartbeat timed out on a starved worker) may still be running here when compensation's undo arrives: undo then
 * stops it from taking more snapshots and waits for it, so it never removes an overlay file that a snapshot still in
 * flight is about to put under a VM. An undo is remembered for `memoryMs` (far longer than a freeze activity may
 * live), then forgotten. All are keyed by run and snapshot id ({@link runKey}): a caller may give a new run the
 * snapshot id of one that failed.
 */
export class UndoMemory {
  private readonly running = new Map<string, Promise<unknown>>();
  private readonly undoStarted = new Map<string, number>();
  /** The latest freeze of each run (running or settled) and when it started, for a retried attempt to find. */
  private readonly freezes = new Map<string, { at: number; freeze: Promise<unknown> }>();

  constructor(
    private readonly now: () => number,
    private readonly memoryMs = UNDO_MEMORY_MS,
  ) {}

  /** Notes `freeze` as the freeze of run `key` running in this process. */
  freezeStarted(key: string, freeze: Promise<unknown>): void {
    this.running.set(key, freeze);
    const now = this.now();
    for (const [id, f] of this.freezes) if (now - f.at > this.memoryMs) this.freezes.delete(id);
    this.freezes.set(key, { at: now, freeze });
  }

  /**
   * The freeze of run `key` started in this process (still running or settled, remembered for `memoryMs`): what a
   * retried freeze attempt of the same run returns instead of freezing again.
   */
  lastFreeze(key: string): Promise<unknown> | undefined {
    return this.freezes.get(key)?.freeze;
  }

  /** Forgets `freeze`; true when it was still the freeze of `key` here (a later one of the same run may replace it). */
  freezeEnded(key: string, freeze: Promise<unknown>): boolean {
    if (this.running.get(key) !== freeze) return false;
    this.running.delete(key);
    return true;
  }

  /** The freeze of run `key` still running in this process, if any. */
  runningFreeze(key: string): Promise<unknown> | undefined {
    return this.running.get(key);
  }

  /** Notes that the undo of run `key` started (and forgets undos older than the memory). */
  startUndo(key: string): void {
    const now = this.now();
    for (const [id, at] of this.undoStarted) if (now - at > this.memoryMs) this.undoStarted.delete(id);
    this.undoStarted.set(key, now);
  }

  /** The undo of run `key` started (and is still remembered): its freeze must take no more snapshots. */
  isUndoing(key: string): boolean {
    return this.undoStarted.has(key);
  }
}

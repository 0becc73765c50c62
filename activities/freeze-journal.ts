import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export type FreezeRecordState = 'pausing' | 'paused' | 'resumed' | 'resumed-by-timer' | 'resumed-by-guard';

/**
 * One VM paused by one snapshot run, written on the host before the pause is issued. It outlives the worker
 * process, so the host guard (a separate process) can resume the VM by its deadline if the worker dies.
 */
export interface FreezeRecord {
  snapshotId: string;
  domain: string;
  state: FreezeRecordState;
  /** When the pause was issued (epoch ms). */
  pausedAtMs: number;
  /** The VM must be running again by this time (epoch ms). */
  deadlineMs: number;
  resumedAtMs?: number;
  /** A `resumed-by-guard` record already counted in the worker's metrics (the guard process has none). */
  reported?: boolean;
  /**
   * The guest's filesystems were (or were about to be) frozen through its agent for this snapshot: written before the
   * freeze is asked for, so whoever closes the record (workflow, timer, guard, restarted worker) thaws them too.
   */
  fsFrozen?: boolean;
  /** The guest's filesystems were thawed again (or there was nothing to thaw). */
  fsThawed?: boolean;
  /** When the thaw last failed (epoch ms), so the guard retries it at a slower pace. */
  fsThawFailedAtMs?: number;
  /** groupsnap did not pause the VM (someone else had, or the freeze stopped before): kept only for the thaw. */
  notPausedByUs?: boolean;
}

/** A record whose VM may still be paused by groupsnap, or whose guest filesystems may still be frozen by it. */
export function needsClosing(r: FreezeRecord): boolean {
  return OPEN_STATES.includes(r.state) || (r.fsFrozen === true && r.fsThawed !== true);
}

export const OPEN_STATES: readonly FreezeRecordState[] = ['pausing', 'paused'];

/** Freeze records of one host, as small JSON files in `<stateDir>/freezes`, replaced atomically. */
export class FreezeJournal {
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'freezes');
    mkdirSync(this.dir, { recursive: true });
  }

  private file(snapshotId: string, domain: string): string {
    // snapshot ids are validated file-safe; domain names may hold anything but '/'.
    return join(this.dir, `${snapshotId}__${encodeURIComponent(domain)}.json`);
  }

  write(record: FreezeRecord): void {
    const file = this.file(record.snapshotId, record.domain);
    writeFileSync(`${file}.tmp`, JSON.stringify(record));
    renameSync(`${file}.tmp`, file);
  }

  read(snapshotId: string, domain: string): FreezeRecord | undefined {
    try {
      return JSON.parse(readFileSync(this.file(snapshotId, domain), 'utf8')) as FreezeRecord;
    } catch {
      return undefined;
    }
  }

  remove(snapshotId: string, domain: string): void {
    rmSync(this.file(snapshotId, domain), { force: true });
  }

  /** Every record (open or closed) on this host. */
  list(): FreezeRecord[] {
    const out: FreezeRecord[] = [];
    for (const name of readdirSync(this.dir)) {
      if (!name.endsWith('.json')) continue;
      try {
        out.push(JSON.parse(readFileSync(join(this.dir, name), 'utf8')) as FreezeRecord);
      } catch {
        // a record being replaced right now; the next scan sees it
      }
    }
    return out;
  }

  /** Records whose VM may still be paused (or its filesystems frozen) by groupsnap. */
  listOpen(): FreezeRecord[] {
    return this.list().filter(needsClosing);
  }

  /** Removes closed records last touched more than `maxAgeMs` ago. */
  prune(maxAgeMs: number, now = Date.now()): void {
    for (const name of readdirSync(this.dir)) {
      const path = join(this.dir, name);
      try {
        const rec = JSON.parse(readFileSync(path, 'utf8')) as FreezeRecord;
        if (!needsClosing(rec) && now - statSync(path).mtimeMs > maxAgeMs) rmSync(path, { force: true });
      } catch {
        // ignore partial files
      }
    }
  }
}

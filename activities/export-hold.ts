import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { safeFileName } from '../common/names';

/**
 * Export holds: while a disk of a snapshot is being exported, the image files its export reads (the snapshot's
 * layer and the layers below it) must not be merged by local retention or a deletion. A hold is a file in the
 * host's state dir (`export-holds/`), one per holder: an export run (its workflow run, activity and attempt) to one
 * repository. Two exports of one point (two repositories, or a timed-out attempt still running beside its retry)
 * each hold their own file and release only their own, so the point stays held while any of them reads it. A hold
 * not refreshed for {@link EXPORT_HOLD_STALE_MS} belongs to an export that died and is ignored (a resumed export
 * re-reads the chain from the catalog, so the point's content is found wherever a later merge left it).
 */
export const EXPORT_HOLD_STALE_MS = 15 * 60_000;

/** One holder's record. */
export interface HoldRecord {
  domain: string;
  snapshotId: string;
  target: string;
  /** The repository the export writes to. */
  repository: string;
  /** The export run that holds it (workflow run id, activity id and attempt, or a random token). */
  holder: string;
  files: string[];
  createdAt: string;
}

/** Host id -> its state dir, registered when the host's export activities are created. */
const holdDirs = new Map<string, string>();

function dirOf(stateDir: string): string {
  return join(stateDir, 'export-holds');
}

/** Makes `hostId`'s holds visible to {@link exportHoldBlockers} (called by the host's export activities). */
export function registerExportHoldDir(hostId: string, stateDir: string): void {
  holdDirs.set(hostId, stateDir);
}

/** A hold on the files one disk's export reads; `release()` when the export ends. */
export class ExportHold {
  private constructor(readonly file: string) {}

  /** Takes this holder's hold (taking it again refreshes it; other holders' records are left alone). */
  static take(stateDir: string, rec: Omit<HoldRecord, 'createdAt'>): ExportHold {
    const dir = dirOf(stateDir);
    mkdirSync(dir, { recursive: true });
    const who = createHash('sha256')
      .update(JSON.stringify([rec.repository, rec.holder]))
      .digest('hex')
      .slice(0, 16);
    const file = join(dir, `${safeFileName(rec.domain)}.${rec.snapshotId}.${safeFileName(rec.target)}.${who}.json`);
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, JSON.stringify({ ...rec, createdAt: new Date().toISOString() }));
    // Whole or absent for a reader (exportHoldsOf skips what it cannot parse).
    renameSync(tmp, file);
    return new ExportHold(file);
  }

  /** Keeps the hold fresh. */
  refresh(): void {
    const now = new Date();
    try {
      utimesSync(this.file, now, now);
    } catch {
      // removed underneath: nothing to keep fresh
    }
  }

  /** Removes this holder's record only. */
  release(): void {
    rmSync(this.file, { force: true });
  }
}

/** Fresh holds of `domain` on `hostId`, one per holder (empty when the host runs no export activities). */
export function exportHoldsOf(hostId: string, domain: string, now = Date.now()): HoldRecord[] {
  const stateDir = holdDirs.get(hostId);
  if (!stateDir) return [];
  let names: string[];
  try {
    names = readdirSync(dirOf(stateDir));
  } catch {
    return [];
  }
  const out: HoldRecord[] = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    const file = join(dirOf(stateDir), n);
    try {
      if (now - statSync(file).mtimeMs > EXPORT_HOLD_STALE_MS) continue;
      const rec = JSON.parse(readFileSync(file, 'utf8')) as HoldRecord;
      if (rec.domain === domain) out.push(rec);
    } catch {
      // being written or removed
    }
  }
  return out;
}

/**
 * Why the files of a deletion (`files`: the snapshot's images and the layers above them that a merge would touch)
 * cannot be merged now: exports of this VM still read them (one reason per holder). Empty when nothing holds them.
 */
export function exportHoldBlockers(hostId: string, domain: string, files: string[]): string[] {
  const touched = new Set(files);
  return exportHoldsOf(hostId, domain)
    .filter((h) => h.files.some((f) => touched.has(f)))
    .map(
      (h) =>
        `an export of snapshot ${h.snapshotId} (disk ${h.target}${h.repository ? ` to ${h.repository}` : ''}) still reads it: try again when it ends`,
    );
}

import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { safeFileName } from '../common/names';

/**
 * Export holds: while a disk of a snapshot is being exported, the image files its export reads (the snapshot's
 * layer and the layers below it) must not be merged by local retention or a deletion. A hold is a file in the
 * host's state dir (`export-holds/`), refreshed while the export runs; one not refreshed for
 * {@link EXPORT_HOLD_STALE_MS} belongs to an export that died and is ignored (a resumed export re-reads the chain
 * from the catalog, so the point's content is found wherever a later merge left it).
 */
export const EXPORT_HOLD_STALE_MS = 15 * 60_000;

interface HoldRecord {
  domain: string;
  snapshotId: string;
  target: string;
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
  private constructor(private readonly file: string) {}

  static take(stateDir: string, rec: Omit<HoldRecord, 'createdAt'>): ExportHold {
    const dir = dirOf(stateDir);
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${safeFileName(rec.domain)}.${rec.snapshotId}.${safeFileName(rec.target)}.json`);
    writeFileSync(file, JSON.stringify({ ...rec, createdAt: new Date().toISOString() }));
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

  release(): void {
    rmSync(this.file, { force: true });
  }
}

/** Fresh holds of `domain` on `hostId` (empty when the host runs no export activities). */
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
 * cannot be merged now: an export of this VM still reads them. Empty when nothing holds them.
 */
export function exportHoldBlockers(hostId: string, domain: string, files: string[]): string[] {
  const touched = new Set(files);
  return exportHoldsOf(hostId, domain)
    .filter((h) => h.files.some((f) => touched.has(f)))
    .map((h) => `an export of snapshot ${h.snapshotId} (disk ${h.target}) still reads it: try again when it ends`);
}

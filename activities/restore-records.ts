import { chmodSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertSafeName } from '../common/validation';

/**
 * What a restore from the repository planned on this host, kept in the host's state dir (mode 0600): the VMs it
 * defines (name, planned UUID) and every file it may write. A host writes only files a restore planned and deletes
 * only files and VMs recorded here, so a request naming another file or VM changes nothing.
 */
export interface RestoreRecord {
  restoreId: string;
  vms: {
    /** Name in the point. */
    source: string;
    /** Name on this host. */
    domain: string;
    uuid: string;
    disks: { target: string; file: string; format: string }[];
  }[];
  /** Files of the restore that were written (rebuilt disks). */
  created: string[];
}

/** Mode of every file groupsnap writes in a state dir or for a restored disk: the owner's only. */
export const PRIVATE_FILE_MODE = 0o600;

/** Writes `text` to `file` atomically with mode 0600, whatever the umask. */
export function writePrivateFile(file: string, text: string): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, text, { mode: PRIVATE_FILE_MODE });
  chmodSync(tmp, PRIVATE_FILE_MODE);
  renameSync(tmp, file);
}

/** The restore records of a host: `<stateDir>/repo-restores/<restoreId>.json`. */
export class RestoreRecords {
  private readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'repo-restores');
  }

  private file(restoreId: string): string {
    assertSafeName('restore id', restoreId);
    return join(this.dir, `${restoreId}.json`);
  }

  /** Records (or records again, on a retried plan) what restore `restoreId` planned. */
  plan(restoreId: string, vms: RestoreRecord['vms']): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const before = this.get(restoreId);
    this.save({ restoreId, vms, created: before?.created ?? [] });
  }

  /** Notes that `file` of restore `restoreId` was written. */
  created(restoreId: string, file: string): void {
    const rec = this.get(restoreId);
    if (!rec || rec.created.includes(file)) return;
    this.save({ ...rec, created: [...rec.created, file] });
  }

  get(restoreId: string): RestoreRecord | undefined {
    try {
      return JSON.parse(readFileSync(this.file(restoreId), 'utf8')) as RestoreRecord;
    } catch {
      return undefined;
    }
  }

  /** Every restore recorded on this host. */
  all(): RestoreRecord[] {
    let names: string[];
    try {
      names = readdirSync(this.dir).filter((n) => n.endsWith('.json'));
    } catch {
      return [];
    }
    return names.flatMap((n) => {
      const rec = this.get(n.slice(0, -'.json'.length));
      return rec ? [rec] : [];
    });
  }

  /** The recorded VM named `domain` on this host (newest restore first), with its restore. */
  vmNamed(domain: string): { record: RestoreRecord; vm: RestoreRecord['vms'][number] } | undefined {
    for (const record of this.all()) {
      const vm = record.vms.find((v) => v.domain === domain);
      if (vm) return { record, vm };
    }
    return undefined;
  }

  private save(rec: RestoreRecord): void {
    writePrivateFile(this.file(rec.restoreId), JSON.stringify(rec, null, 2) + '\n');
  }
}

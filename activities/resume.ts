import { DomainNotFoundError, InvalidStateError } from '../hypervisor/errors';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { nowMs } from './clock';
import { OPEN_STATES, type FreezeJournal, type FreezeRecord, type FreezeRecordState } from './freeze-journal';

type ClosedBy = Exclude<FreezeRecordState, 'pausing' | 'paused'>;

const inFlight = new Map<string, Promise<FreezeRecord>>();

/**
 * Resumes the VM of an open freeze record and closes the record, once: concurrent callers in this process
 * (the workflow's thaw, the deadline timer) share one attempt, and a record already closed (by another process,
 * e.g. the host guard) is returned as it is. A VM found running or gone counts as resumed.
 */
export function resumeFromJournal(
  hypervisor: Hypervisor,
  journal: FreezeJournal,
  snapshotId: string,
  domain: string,
  by: ClosedBy,
): Promise<FreezeRecord | undefined> {
  const key = `${journal.dir}\0${snapshotId}\0${domain}`;
  const pending = inFlight.get(key);
  if (pending) return pending;
  const current = journal.read(snapshotId, domain);
  if (!current || !OPEN_STATES.includes(current.state)) return Promise.resolve(current);
  const attempt = (async (): Promise<FreezeRecord> => {
    try {
      await hypervisor.resume(domain);
    } catch (err) {
      if (!(err instanceof InvalidStateError || err instanceof DomainNotFoundError)) throw err;
      const now = journal.read(snapshotId, domain);
      if (now && !OPEN_STATES.includes(now.state)) return now; // someone else closed it meanwhile
    }
    const closed: FreezeRecord = { ...current, state: by, resumedAtMs: nowMs() };
    journal.write(closed);
    return closed;
  })();
  inFlight.set(key, attempt);
  return attempt.finally(() => inFlight.delete(key));
}

/** In-process deadline timers: resume a paused VM at its record's deadline if nobody did before. */
export class DeadlineTimers {
  private readonly timers = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly hypervisor: Hypervisor,
    private readonly journal: FreezeJournal,
    private readonly onFire: (record: FreezeRecord | undefined, err?: unknown) => void = () => {},
  ) {}

  arm(record: FreezeRecord): void {
    const key = `${record.snapshotId}\0${record.domain}`;
    clearTimeout(this.timers.get(key));
    const timer = setTimeout(
      () => {
        this.timers.delete(key);
        resumeFromJournal(this.hypervisor, this.journal, record.snapshotId, record.domain, 'resumed-by-timer').then(
          (r) => this.onFire(r),
          (err) => this.onFire(undefined, err),
        );
      },
      Math.max(0, record.deadlineMs - Date.now()),
    );
    this.timers.set(key, timer);
  }

  disarm(snapshotId: string, domain: string): void {
    const key = `${snapshotId}\0${domain}`;
    clearTimeout(this.timers.get(key));
    this.timers.delete(key);
  }

  disarmAll(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}

/**
 * Finishes freezes interrupted by a crash: resumes VMs whose deadline passed, re-arms timers for the others.
 * Returns the records it closed.
 */
export async function recoverFreezes(
  hypervisor: Hypervisor,
  journal: FreezeJournal,
  timers: DeadlineTimers | undefined,
  by: ClosedBy,
  graceMs = 0,
): Promise<FreezeRecord[]> {
  const closed: FreezeRecord[] = [];
  for (const rec of journal.listOpen()) {
    if (rec.deadlineMs + graceMs <= Date.now()) {
      const r = await resumeFromJournal(hypervisor, journal, rec.snapshotId, rec.domain, by);
      if (r) closed.push(r);
    } else {
      timers?.arm(rec);
    }
  }
  return closed;
}

import { DomainNotFoundError, InvalidStateError } from '../hypervisor/errors';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { nowMs } from './clock';
import {
  needsClosing,
  OPEN_STATES,
  type FreezeJournal,
  type FreezeRecord,
  type FreezeRecordState,
} from './freeze-journal';

type ClosedBy = Exclude<FreezeRecordState, 'pausing' | 'paused'>;

const inFlight = new Map<string, Promise<FreezeRecord>>();

/** How long after a failed thaw the guard tries again. */
const THAW_RETRY_MS = 2_000;

/** How long after its deadline a thaw that keeps failing is given up. */
const THAW_GIVE_UP_MS = 3600_000;

/**
 * Thaws the guest filesystems of a closed record that froze them, once, and records it. A VM that is gone, or whose
 * agent says nothing is frozen, counts as thawed; any other failure is recorded and left for a later attempt.
 */
export async function thawRecord(
  hypervisor: Hypervisor,
  journal: FreezeJournal,
  rec: FreezeRecord,
): Promise<FreezeRecord> {
  if (!rec.fsFrozen || rec.fsThawed) return rec;
  let thawed: FreezeRecord;
  try {
    await hypervisor.fsThaw(rec.domain);
    thawed = { ...rec, fsThawed: true };
  } catch (err) {
    // Gone: nothing left to thaw. Anything else (an agent not answering yet, libvirtd restarting) is tried again,
    // for an hour; after that the record stops asking (the agent thaws by itself when it restarts).
    const gaveUp = nowMs() - rec.deadlineMs > THAW_GIVE_UP_MS;
    thawed =
      err instanceof DomainNotFoundError || gaveUp
        ? { ...rec, fsThawed: true, ...(gaveUp ? { fsThawFailedAtMs: nowMs() } : {}) }
        : { ...rec, fsThawFailedAtMs: nowMs() };
  }
  journal.write(thawed);
  return thawed;
}

/**
 * Resumes the VM of an open freeze record and closes the record, once: concurrent callers in this process
 * (the workflow's thaw, the deadline timer) share one attempt, and a record already closed (by another process,
 * e.g. the host guard) is returned as it is. A VM found running or gone counts as resumed. When the record froze the
 * guest's filesystems, they are thawed right after the resume (a failed thaw is recorded for a later attempt).
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
  if (!current || !needsClosing(current)) return Promise.resolve(current);
  const attempt = (async (): Promise<FreezeRecord> => {
    let closed = current;
    if (OPEN_STATES.includes(current.state)) {
      try {
        await hypervisor.resume(domain);
      } catch (err) {
        if (!(err instanceof InvalidStateError || err instanceof DomainNotFoundError)) throw err;
        const now = journal.read(snapshotId, domain);
        if (now && !OPEN_STATES.includes(now.state)) return now; // someone else closed it meanwhile
      }
      closed = { ...current, state: by, resumedAtMs: nowMs() };
      journal.write(closed);
    }
    return thawRecord(hypervisor, journal, closed);
  })();
  inFlight.set(key, attempt);
  return attempt.finally(() => inFlight.delete(key));
}

/**
 * In-process deadline timers: resume a paused VM at its record's deadline if nobody did before. A resume that fails
 * (libvirtd restarting, a connection lost) is retried with backoff until the record is closed or the timer disarmed.
 */
export class DeadlineTimers {
  private readonly timers = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly hypervisor: Hypervisor,
    private readonly journal: FreezeJournal,
    private readonly onFire: (record: FreezeRecord | undefined, err?: unknown) => void = () => {},
    private readonly retryMs: { initial: number; max: number } = { initial: 100, max: 2_000 },
  ) {}

  arm(record: FreezeRecord): void {
    this.schedule(record, Math.max(0, record.deadlineMs - Date.now()), this.retryMs.initial);
  }

  private schedule(record: FreezeRecord, delayMs: number, nextRetryMs: number): void {
    const key = `${record.snapshotId}\0${record.domain}`;
    clearTimeout(this.timers.get(key));
    const timer = setTimeout(() => {
      if (this.timers.get(key) !== timer) return;
      this.timers.delete(key);
      resumeFromJournal(this.hypervisor, this.journal, record.snapshotId, record.domain, 'resumed-by-timer').then(
        (r) => {
          this.onFire(r);
          // A thaw that failed is tried again, like a failed resume.
          if (r && needsClosing(r) && !this.timers.has(key))
            this.schedule(record, nextRetryMs, Math.min(nextRetryMs * 2, this.retryMs.max));
        },
        (err) => {
          this.onFire(undefined, err);
          const now = this.journal.read(record.snapshotId, record.domain);
          if (now && needsClosing(now) && !this.timers.has(key))
            this.schedule(record, nextRetryMs, Math.min(nextRetryMs * 2, this.retryMs.max));
        },
      );
    }, delayMs);
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

/** What {@link recoverFreezes} did: the records it closed, and those it could not (each with its error). */
export interface RecoveryOutcome {
  closed: FreezeRecord[];
  failed: { record: FreezeRecord; error: unknown }[];
}

/**
 * Finishes freezes interrupted by a crash: resumes VMs whose deadline passed (and thaws their guests' filesystems),
 * re-arms timers for the others. One record that cannot be closed (any libvirt error) never stops the others: it is
 * reported in `failed` and tried again at the next call.
 */
export async function recoverFreezes(
  hypervisor: Hypervisor,
  journal: FreezeJournal,
  timers: DeadlineTimers | undefined,
  by: ClosedBy,
  graceMs = 0,
): Promise<RecoveryOutcome> {
  const outcome: RecoveryOutcome = { closed: [], failed: [] };
  for (const rec of journal.listOpen()) {
    const due = rec.deadlineMs + graceMs <= Date.now();
    if (!due) {
      timers?.arm(rec);
      continue;
    }
    // A thaw that failed a moment ago is not hammered every scan.
    if (!OPEN_STATES.includes(rec.state) && rec.fsThawFailedAtMs && Date.now() - rec.fsThawFailedAtMs < THAW_RETRY_MS)
      continue;
    try {
      const r = await resumeFromJournal(hypervisor, journal, rec.snapshotId, rec.domain, by);
      if (r) outcome.closed.push(r);
    } catch (error) {
      outcome.failed.push({ record: rec, error });
    }
  }
  return outcome;
}

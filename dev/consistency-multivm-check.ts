/**
 * The invariants of a restored cut of the replicated PostgreSQL application (docs/consistency.md, part 3; guests
 * of scripts/build-guest-pgrep.sh, driven by bench/consistency-multivm.ts). Each restored clone prints one
 * `GSMV-RESULT key=value ...` line on its console (scripts/guest-pgrep-init.sh): the client the id n of its newest
 * durably logged acknowledged commit (`acked`; it logs n only after 1..n-1, so all of 1..n were acknowledged), the
 * primary (after its crash recovery) and the standby (after its crash recovery and promotion) what they hold.
 *
 * A consistent cut of the group (all three VMs losing power at the same instant) must satisfy, on each database:
 * - `start`: it mounts its disks, starts and finishes crash recovery (the standby: is promoted);
 * - `amcheck`: `pg_amcheck --all --heapallindexed` passes;
 * - `balance`: pgbench's invariant, sum(abalance) = sum(tbalance) = sum(bbalance) = sum(history.delta);
 * - `contiguous`: its gs_commits holds exactly the ids 1..maxid (no transaction half there, none lost in between);
 * - `acked`: maxid >= the client's acknowledged n: every commit the client logged as acknowledged is present
 *   (synchronous_commit = on: the primary flushed it, and so did the standby before the primary acknowledged it).
 */

/** One `GSMV-RESULT` line's fields, from a console log; undefined when there is none (or it is cut short). */
export function parseMultiVmResult(consoleText: string): Record<string, string> | undefined {
  const m = /GSMV-RESULT((?: +[\w]+=\S*)+)\r?\n/.exec(consoleText);
  if (!m) return undefined;
  return Object.fromEntries(
    m[1]
      .trim()
      .split(/ +/)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
}

export const DB_ROLES = ['primary', 'standby'] as const;
export type DbRole = (typeof DB_ROLES)[number];
export const DB_INVARIANTS = ['start', 'amcheck', 'balance', 'contiguous', 'acked'] as const;
export type DbInvariant = (typeof DB_INVARIANTS)[number];

export interface MultiVmViolation {
  role: DbRole | 'client';
  invariant: DbInvariant | 'result';
  detail: string;
}

export interface MultiVmCutReport {
  /** The client's newest acknowledged commit id (NaN: its clone reported none). */
  acked: number;
  /** Each database's newest commit id (NaN when it did not get that far). */
  maxid: Record<DbRole, number>;
  /** Acknowledged commits missing on each database (0 when none or unknown). */
  lost: Record<DbRole, number>;
  violations: MultiVmViolation[];
  ok: boolean;
}

const num = (v: string | undefined): number => (v !== undefined && /^-?\d+$/.test(v) ? Number(v) : NaN);

/** Evaluates the invariants on the three clones' result lines (undefined: that clone printed none). */
export function evaluateMultiVmCut(results: {
  client?: Record<string, string>;
  primary?: Record<string, string>;
  standby?: Record<string, string>;
}): MultiVmCutReport {
  const violations: MultiVmViolation[] = [];
  const acked = num(results.client?.acked);
  if (!results.client || Number.isNaN(acked))
    violations.push({ role: 'client', invariant: 'result', detail: 'the client clone reported no acknowledged id' });
  const maxid = { primary: NaN, standby: NaN };
  const lost = { primary: 0, standby: 0 };
  for (const role of DB_ROLES) {
    const f = results[role];
    if (!f) {
      violations.push({ role, invariant: 'result', detail: `the ${role} clone printed no result` });
      continue;
    }
    if (f.mount !== '1' || f.start !== '1' || f.promoted === '0') {
      const why = f.mount !== '1' ? 'cannot mount its disks' : f.start !== '1' ? 'does not start' : 'not promoted';
      violations.push({ role, invariant: 'start', detail: `${role} ${why}` });
      continue;
    }
    if (f.amcheck !== '1') violations.push({ role, invariant: 'amcheck', detail: `${role}: pg_amcheck failed` });
    if (f.invariant !== '1')
      violations.push({
        role,
        invariant: 'balance',
        detail: `${role}: abalance ${f.abal}, tbalance ${f.tbal}, bbalance ${f.bbal}, history delta ${f.delta}`,
      });
    const max = num(f.maxid);
    const count = num(f.commits);
    maxid[role] = max;
    if (f.contiguous !== '1' || Number.isNaN(max) || count !== max)
      violations.push({ role, invariant: 'contiguous', detail: `${role}: ${f.commits} commits, max id ${f.maxid}` });
    if (!Number.isNaN(acked) && !Number.isNaN(max) && max < acked) {
      lost[role] = acked - max;
      violations.push({
        role,
        invariant: 'acked',
        detail: `${role} has commits up to ${max}, the client had ${acked} acknowledged: ${acked - max} lost`,
      });
    }
  }
  return { acked, maxid, lost, violations, ok: violations.length === 0 };
}

/** `acked 120, primary 121, standby 121: ok` or `... VIOLATED acked (primary: ...)`. */
export function formatMultiVmCut(r: MultiVmCutReport): string {
  const head = `acked ${r.acked}, primary ${r.maxid.primary}, standby ${r.maxid.standby}`;
  return r.ok
    ? `${head}: ok`
    : `${head}: VIOLATED ${r.violations.map((v) => `${v.invariant} (${v.detail})`).join('; ')}`;
}

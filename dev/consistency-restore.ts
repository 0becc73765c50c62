/**
 * The crash-consistency check from inside restored guests (docs/consistency.md): a group snapshot of the workload
 * pair is restored as clones through groupsnap's real restore path (`restoreGroup` from client/dr.ts, mode `clone`;
 * a naive-vm cut, two one-VM snapshots, takes one call per snapshot), the clones boot, and the recovery step of
 * their /init (scripts/guest-init.sh) reads their own disks before the workload resumes and prints one line on the
 * console:
 *
 *   GROUPSNAP-RECOVERY role=<role> a=<A.n> b=<B.n> av=<A.v> bv=<B.v> arec=<0|1> brec=<0|1> alabel=<0|1>
 *     blabel=<0|1> ok=<0|1>
 *
 * (one line). The lines of both clones are turned into disk states and evaluated with the offline checker's
 * {@link evaluateCut} (the cross-VM invariants need both); the result must hold, agree with each guest's own `ok`,
 * and match the offline check of the same snapshot number for number. The clones are then removed through the
 * host's `removeClone` activity (a clone blocks deleting its snapshot).
 */
import { readFileSync } from 'node:fs';
import type { Client } from '@temporalio/client';
import { createHostActivities } from '../activities/host-activities';
import type { RestoreResult } from '../common/groups';
import { restoreGroup } from '../client/restore';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { evaluateCut, formatCut, type CutReport, type DiskState, type VmState } from './consistency-check';
import type { CheckedCut } from './consistency-run';

/** What a guest's recovery step found on its own disks. */
export interface GuestRecovery {
  role: string;
  /** Header step of disk A (vda) and B (vdb); NaN when the guest could not parse the header. */
  a: number;
  b: number;
  av: number;
  bv: number;
  arec: boolean;
  brec: boolean;
  alabel: boolean;
  blabel: boolean;
  ok: boolean;
}

const RECOVERY_LINE = /GROUPSNAP-RECOVERY((?: +\w+=\S*)+)/;

/** The first recovery line in a console log, parsed; undefined when there is none (yet). */
export function parseRecoveryLine(consoleText: string): { line: string; recovery: GuestRecovery } | undefined {
  const m = RECOVERY_LINE.exec(consoleText);
  if (!m) return undefined;
  const f = Object.fromEntries(
    m[1]
      .trim()
      .split(/ +/)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
  const keys = ['role', 'a', 'b', 'av', 'bv', 'arec', 'brec', 'alabel', 'blabel', 'ok'];
  // A line cut short (the console file read while QEMU writes it) is read again later.
  if (
    keys.some((k) => f[k] === undefined) ||
    !/\r?\n/.test(consoleText.slice(m.index + m[0].length, m.index + m[0].length + 2))
  )
    return undefined;
  const num = (k: string) => (/^\d+$/.test(f[k]) ? Number(f[k]) : NaN);
  return {
    line: m[0],
    recovery: {
      role: f.role,
      a: num('a'),
      b: num('b'),
      av: num('av'),
      bv: num('bv'),
      arec: f.arec === '1',
      brec: f.brec === '1',
      alabel: f.alabel === '1',
      blabel: f.blabel === '1',
      ok: f.ok === '1',
    },
  };
}

/** The disk states the guest reported, shaped as the offline checker's (for {@link evaluateCut}). */
export function recoveryToVmState(domain: string, r: GuestRecovery, source: string): VmState {
  const disk = (target: string, label: string, n: number, v: number, rec: boolean, labelOk: boolean): DiskState => ({
    target,
    image: `${source} (${target}, read by the guest)`,
    // As the checker reads a never written disk: no label, no role.
    label: n === 0 ? undefined : labelOk ? label : `not ${label}`,
    role: n === 0 ? undefined : r.role,
    n,
    v,
    recordOk: rec,
    header: `reported by the guest: ${target === 'vda' ? 'a' : 'b'}=${n}`,
  });
  return {
    domain,
    role: r.role,
    disks: [disk('vda', 'A', r.a, r.av, r.arec, r.alabel), disk('vdb', 'B', r.b, r.bv, r.brec, r.blabel)],
  };
}

/** The file the domain's first file-backed serial port (the guest's ttyS0) writes to, from its XML. */
export function serialLogOf(xml: string): string | undefined {
  for (const m of xml.matchAll(/<serial\b[^>]*\btype=(['"])file\1[^>]*>([\s\S]*?)<\/serial>/g)) {
    const path = /<source\b[^>]*\bpath=(['"])([^'"]*)\1/.exec(m[2])?.[2];
    const port = /<target\b[^>]*\bport=(['"])(\d+)\1/.exec(m[2])?.[2];
    if (path && (port === undefined || port === '0'))
      return path
        .replace(/&lt;/g, '<')
        .replace(/&gt;/g, '>')
        .replace(/&apos;/g, "'")
        .replace(/&quot;/g, '"')
        .replace(/&amp;/g, '&');
  }
  return undefined;
}

/** A host worker's hypervisor and state dir, to remove the clones with that host's own `removeClone` activity. */
export interface RestoreHost {
  hypervisor: Hypervisor;
  stateDir: string;
}

export interface RestoredVm {
  host: string;
  domain: string;
  clone: string;
  consoleLog: string;
  line: string;
  recovery: GuestRecovery;
}

export interface RestoreCheck {
  mode: CheckedCut['mode'];
  index: number;
  snapshotIds: string[];
  /** The invariants evaluated on what the guests reported from inside. */
  inside: CutReport;
  /** Where the inside view differs from the offline check of the same snapshot (empty: they agree). */
  mismatches: string[];
  vms: RestoredVm[];
  /** `restoreGroup` call(s); restore done to the last recovery line; removal of all clones restored with it. */
  restoreMs: number;
  bootMs: number;
  removeMs: number;
}

export interface RestoreCheckOptions {
  client: Client;
  /** A checked cut of groupsnap snapshots (`group` or `naive-vm` mode), with its offline report. */
  cut: CheckedCut;
  /** Clone names are `<domain><suffix>`. */
  suffix: string;
  /** By host id: every host the snapshot has VMs on. */
  hosts: Record<string, RestoreHost>;
  /** For the recovery lines, from the end of the restore. @default 120000 */
  bootTimeoutMs?: number;
}

/** The differences between the offline check of a snapshot and what its restored guests reported. */
export function compareReports(offline: CutReport, inside: CutReport, guests: RestoredVm[]): string[] {
  const out: string[] = [];
  for (const vm of offline.vms) {
    const guest = guests.find((g) => g.domain === vm.domain);
    const seen = inside.vms.find((v) => v.domain === vm.domain);
    if (!guest || !seen) {
      out.push(`${vm.domain}: no clone reported`);
      continue;
    }
    if (guest.recovery.role !== vm.role) out.push(`${vm.domain}: role ${guest.recovery.role}, offline ${vm.role}`);
    for (const d of vm.disks) {
      const g = seen.disks.find((x) => x.target === d.target)!;
      for (const k of ['n', 'v', 'recordOk'] as const)
        if (!Object.is(g[k], d[k])) out.push(`${vm.domain}/${d.target}: ${k} ${g[k]} inside, ${d[k]} offline`);
    }
    // The guest's own verdict on its two disks equals the checker's per-VM verdict.
    const perVm = inside.violations.some(
      (x) => !x.invariant.startsWith('cross-vm') && /^[^/:]+/.exec(x.detail)?.[0] === vm.domain,
    );
    if (guest.recovery.ok === perVm) out.push(`${vm.domain}: guest says ok=${guest.recovery.ok ? 1 : 0}`);
  }
  if (inside.written !== offline.written) out.push(`written ${inside.written} inside, ${offline.written} offline`);
  if (inside.acked !== offline.acked) out.push(`acked ${inside.acked} inside, ${offline.acked} offline`);
  const names = (r: CutReport) => [...new Set(r.violations.map((v) => v.invariant))].sort().join(',');
  if (names(inside) !== names(offline)) out.push(`violations [${names(inside)}] inside, [${names(offline)}] offline`);
  return out;
}

/**
 * Restores checked cuts as clones (one `restoreGroup` per snapshot of a cut, one after the other), waits for every
 * clone's recovery line (the clones boot side by side), evaluates the invariants on what each cut's guests reported
 * and compares them with the offline check; then removes every clone, also on failure.
 * @throws Error when a restore fails or a clone prints no recovery line in time (after removing what was made)
 */
export async function restoreAndCheckAll(
  o: Omit<RestoreCheckOptions, 'cut' | 'suffix'> & { cuts: CheckedCut[]; suffix: (cut: CheckedCut) => string },
): Promise<RestoreCheck[]> {
  for (const cut of o.cuts)
    if (!cut.snapshots?.length || !cut.report)
      throw new Error(`cut #${cut.index} has no groupsnap snapshot to restore`);
  const made: RestoreResult['vms'] = [];
  const read = (file: string) => {
    try {
      return readFileSync(file, 'latin1');
    } catch {
      return '';
    }
  };
  /** Waits for the recovery lines of one cut's clones. */
  const recovered = async (clones: RestoreResult['vms'], restoredAt: number): Promise<RestoredVm[]> => {
    const deadline = restoredAt + (o.bootTimeoutMs ?? 120_000);
    return Promise.all(
      clones.map(async (v) => {
        const log = serialLogOf(await o.hosts[v.host].hypervisor.domainXml(v.clone!));
        if (!log) throw new Error(`clone ${v.clone} has no file-backed serial port`);
        let found = parseRecoveryLine(read(log));
        while (!found) {
          if (Date.now() > deadline)
            throw new Error(`clone ${v.clone} printed no recovery line; its console:\n${read(log).slice(-2000)}`);
          await new Promise((r) => setTimeout(r, 200));
          found = parseRecoveryLine(read(log));
        }
        return { host: v.host, domain: v.domain, clone: v.clone!, consoleLog: log, ...found };
      }),
    );
  };
  try {
    const waiting: Promise<RestoreCheck>[] = [];
    for (const cut of o.cuts) {
      const t0 = performance.now();
      const clones: RestoreResult['vms'] = [];
      for (const s of cut.snapshots!) {
        const result = await restoreGroup(o.client, { ...s, mode: 'clone', suffix: o.suffix(cut) });
        const ours = result.vms.filter((v) => v.clone);
        made.push(...ours);
        clones.push(...ours);
        if (result.status !== 'restored') throw new Error(`restore of ${s.snapshotId} failed: ${result.error}`);
      }
      const t1 = performance.now();
      const check = recovered(clones, Date.now()).then((vms): RestoreCheck => {
        const inside = evaluateCut(vms.map((v) => recoveryToVmState(v.domain, v.recovery, v.clone)));
        return {
          mode: cut.mode,
          index: cut.index,
          snapshotIds: cut.snapshots!.map((x) => x.snapshotId),
          inside,
          mismatches: compareReports(cut.report!, inside, vms),
          vms,
          restoreMs: t1 - t0,
          bootMs: performance.now() - t1,
          removeMs: 0,
        };
      });
      check.catch(() => undefined); // awaited below; a failure meanwhile must not go unhandled
      waiting.push(check);
    }
    const checks = await Promise.all(waiting);
    const t2 = performance.now();
    await removeClones(o.hosts, made);
    for (const c of checks) c.removeMs = performance.now() - t2;
    return checks;
  } catch (err) {
    await removeClones(o.hosts, made).catch(() => undefined);
    throw err;
  }
}

/** {@link restoreAndCheckAll} for one cut. */
export async function restoreAndCheck(o: RestoreCheckOptions): Promise<RestoreCheck> {
  const [check] = await restoreAndCheckAll({ ...o, cuts: [o.cut], suffix: () => o.suffix });
  return check;
}

/**
 * Removes clones with their hosts' `removeClone` activity (idempotent: a clone already gone is a no-op), one
 * activity set per host as in its worker: it serializes the updates of each source VM's clone records.
 */
export async function removeClones(
  hosts: Record<string, RestoreHost>,
  clones: { host: string; domain: string; clone?: string }[],
): Promise<void> {
  const activities = new Map<string, ReturnType<typeof createHostActivities>>();
  const of = (host: string) => {
    let a = activities.get(host);
    if (!a) {
      const h = hosts[host];
      a = createHostActivities({ hypervisor: h.hypervisor, hostId: host, stateDir: h.stateDir });
      activities.set(host, a);
    }
    return a;
  };
  await Promise.all(
    clones.filter((c) => c.clone).map((c) => of(c.host).removeClone({ domain: c.domain, clone: c.clone! })),
  );
}

/**
 * Which checked cuts to restore: cuts with violations first (a naive mode's: the inside check must find them too),
 * then the newest cut caught between a VM's two disks and the oldest with the writer ahead of the acker (the states
 * a wrong restore would break), then evenly spread over the rest.
 */
export function pickRestoreSample(cuts: CheckedCut[], count: number): CheckedCut[] {
  const ok = cuts.filter((c) => c.completed && c.snapshots?.length && c.report);
  const picked: CheckedCut[] = [];
  const add = (c: CheckedCut | undefined) => {
    if (c && !picked.includes(c) && picked.length < count) picked.push(c);
  };
  const n = (r: CutReport, i: number, t: string) => r.vms[i]?.disks.find((d) => d.target === t)?.n;
  for (const c of ok) if (c.report!.violations.length > 0) add(c);
  add([...ok].reverse().find((c) => c.report!.vms.some((_, i) => n(c.report!, i, 'vda') !== n(c.report!, i, 'vdb'))));
  add(ok.find((c) => !picked.includes(c) && c.report!.written !== c.report!.acked));
  const rest = ok.filter((c) => !picked.includes(c));
  const want = count - picked.length;
  for (let k = 0; k < want && rest.length > 0; k++) add(rest[Math.floor(((k + 1) * rest.length) / (want + 1))]);
  for (const c of rest) add(c);
  return picked.sort((a, b) => a.index - b.index);
}

/** `restored group #3 (gs-...) as ...: writer A=12 B=11, acker A=11 B=11: ok, agrees with the offline check (...)` */
export function formatRestoreCheck(r: RestoreCheck): string {
  return (
    `restored ${r.mode} #${r.index + 1} (${r.snapshotIds.join(' + ')}) as ${r.vms.map((v) => v.clone).join(', ')}: ` +
    `${formatCut(r.inside)}, ` +
    (r.mismatches.length
      ? `DIFFERS from the offline check: ${r.mismatches.join('; ')}`
      : 'agrees with the offline check') +
    ` (restore ${(r.restoreMs / 1000).toFixed(1)} s, boot to recovery ${(r.bootMs / 1000).toFixed(1)} s)`
  );
}

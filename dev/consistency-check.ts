/**
 * Offline crash-consistency check of snapshot images written by the workload guests of dev/guest.ts (the format
 * is scripts/guest-init.sh's). Reads only, through `qemu-io -r -U` (a frozen snapshot image is stable to read,
 * also while its overlay is in use), and reports the invariants per snapshot:
 *
 * - `label`: a disk's header names the disk (vda = A, vdb = B) and the role it is expected to have;
 * - `record`: the record of the header's step is present (each disk writes record n before header n);
 * - `cross-disk`: per VM, `B.n <= A.n <= B.n + 1` (A is written before B, step after step);
 * - `cross-vm`: `ack <= written`: the acker's newest acknowledgement (its disk A) is at most the writer's
 *   oldest fully written step (its disk B);
 * - `cross-vm-lockstep`: `written <= ack + 1`: the writer starts step n + 1 only after the acker wrote ack n on
 *   both its disks.
 *
 * A cut passes when no invariant is violated. Any state reachable by a simultaneous power loss of every VM passes.
 *
 * Command line: `node dist/dev/consistency-check.js <cut.json>...` where each file holds
 * `{ "vms": [{ "domain", "role"?: "writer" | "acker" | "solo", "disks": [{ "target", "image", "format"? }] }] }`
 * (a `groupsnap snapshot --json` result has this shape; roles are read from the disk headers when absent).
 * Prints one line per cut; exit status 1 when any cut has a violation.
 *
 * The same check from inside restored clones is dev/consistency-restore.ts: the guests' recovery step reports
 * their disks' headers and records, and {@link evaluateCut} evaluates them as it does the states read here.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { DEFAULT_RING, type WorkloadRole } from './workload';

const run = promisify(execFile);

export interface CutDisk {
  target: string;
  image: string;
  /** @default 'qcow2' */
  format?: string;
}

export interface CutVm {
  domain: string;
  /** Expected role; read from the headers when absent. */
  role?: WorkloadRole;
  disks: CutDisk[];
}

export interface DiskState {
  target: string;
  image: string;
  /** A (vda) or B (vdb), from the header; undefined when the disk was never written. */
  label?: string;
  role?: string;
  /** Steps completed on this disk (the header's counter); 0 when never written. */
  n: number;
  /** The step's value (the writer's step, or the step the acker acknowledged). */
  v: number;
  /** The header's step has its record. */
  recordOk: boolean;
  header: string;
}

export interface VmState {
  domain: string;
  role?: string;
  disks: DiskState[];
}

export interface Violation {
  invariant: 'label' | 'record' | 'cross-disk' | 'cross-vm' | 'cross-vm-lockstep' | 'unreadable';
  detail: string;
}

export interface CutReport {
  vms: VmState[];
  violations: Violation[];
  /** Writer's step on disk B and acker's acknowledgement on disk A, when the cut has both VMs. */
  written?: number;
  acked?: number;
}

const TARGET_LABEL: Record<string, string> = { vda: 'A', vdb: 'B' };

/** Reads 512-byte sectors of an image (its whole backing chain) without writing or locking it. */
export async function readSectors(image: string, sectors: number[], format = 'qcow2'): Promise<Buffer[]> {
  const cmds = sectors.flatMap((s) => ['-c', `read -v ${s * 512} 512`]);
  const { stdout } = await run('qemu-io', ['-r', '-U', '-f', format, ...cmds, image], { maxBuffer: 16 << 20 });
  const bytes = new Map<number, number>();
  for (const line of stdout.split('\n')) {
    const m = /^([0-9a-f]{8}):((?: +[0-9a-f]{2})+)/.exec(line);
    if (!m) continue;
    const base = parseInt(m[1], 16);
    m[2]
      .trim()
      .split(/ +/)
      .slice(0, 16)
      .forEach((h, i) => bytes.set(base + i, parseInt(h, 16)));
  }
  return sectors.map((s) => {
    const buf = Buffer.alloc(512);
    for (let i = 0; i < 512; i++) {
      const b = bytes.get(s * 512 + i);
      if (b === undefined) throw new Error(`qemu-io returned no byte ${s * 512 + i} of ${image}`);
      buf[i] = b;
    }
    return buf;
  });
}

export interface Header {
  role: string;
  label: string;
  n: number;
  v: number;
}

/** Parses a header or record sector (`GSHDR|GSREC <role> <disk> <n> <v>`, space padded); undefined when blank. */
export function parseHeader(text: string, kind: 'GSHDR' | 'GSREC' = 'GSHDR'): Header | undefined {
  const m = new RegExp(`^${kind} (\\w+) ([AB]) (\\d+) (\\d+) *\\n?\\0*$`).exec(text);
  return m ? { role: m[1], label: m[2], n: Number(m[3]), v: Number(m[4]) } : undefined;
}

function isBlank(buf: Buffer): boolean {
  return buf.every((b) => b === 0);
}

/** A disk's header and the record it points at. */
export async function readDiskState(disk: CutDisk, ring = DEFAULT_RING): Promise<DiskState> {
  const [hdr] = await readSectors(disk.image, [0], disk.format);
  const base = { target: disk.target, image: disk.image, header: hdr.toString('latin1').trimEnd() };
  if (isBlank(hdr)) return { ...base, n: 0, v: 0, recordOk: true };
  const h = parseHeader(hdr.toString('latin1'));
  if (!h) return { ...base, n: NaN, v: NaN, recordOk: false };
  const [rec] = await readSectors(disk.image, [1 + ((h.n - 1) % ring)], disk.format);
  const r = parseHeader(rec.toString('latin1'), 'GSREC');
  const recordOk = !!r && r.role === h.role && r.label === h.label && r.n === h.n && r.v === h.v;
  return { ...base, label: h.label, role: h.role, n: h.n, v: h.v, recordOk };
}

/**
 * Evaluates the invariants on disk states already read (offline by {@link checkCut}; from inside restored guests by
 * dev/consistency-restore.ts).
 */
export function evaluateCut(vms: VmState[]): CutReport {
  const violations: Violation[] = [];
  for (const vm of vms) {
    const role = vm.role ?? vm.disks.find((d) => d.role)?.role;
    vm.role = role;
    for (const d of vm.disks) {
      if (Number.isNaN(d.n)) {
        violations.push({ invariant: 'unreadable', detail: `${vm.domain}/${d.target}: header "${d.header}"` });
        continue;
      }
      if (d.n > 0 && (d.label !== TARGET_LABEL[d.target] || (role && d.role !== role)))
        violations.push({
          invariant: 'label',
          detail: `${vm.domain}/${d.target}: header says ${d.role} disk ${d.label}, expected ${role} disk ${TARGET_LABEL[d.target]}`,
        });
      if (!d.recordOk) violations.push({ invariant: 'record', detail: `${vm.domain}/${d.target}: no record ${d.n}` });
    }
    const a = vm.disks.find((d) => d.target === 'vda');
    const b = vm.disks.find((d) => d.target === 'vdb');
    if (a && b && !(b.n <= a.n && a.n <= b.n + 1))
      violations.push({ invariant: 'cross-disk', detail: `${vm.domain}: A.n=${a.n} B.n=${b.n}` });
  }
  const writer = vms.find((v) => v.role === 'writer');
  const acker = vms.find((v) => v.role === 'acker');
  // A VM whose disks were never written has no role in its headers: it is the pair's other member.
  if (vms.length === 2 && (!writer || !acker)) {
    const other = vms.find((v) => !v.role);
    if (other && (writer || acker)) other.role = writer ? 'acker' : 'writer';
  }
  const w = vms.find((v) => v.role === 'writer');
  const k = vms.find((v) => v.role === 'acker');
  const report: CutReport = { vms, violations };
  if (w && k) {
    const written = w.disks.find((d) => d.target === 'vdb')?.n ?? 0;
    const writerA = w.disks.find((d) => d.target === 'vda')?.n ?? 0;
    const acked = k.disks.find((d) => d.target === 'vda')?.v ?? 0;
    const ackedB = k.disks.find((d) => d.target === 'vdb')?.v ?? 0;
    report.written = written;
    report.acked = acked;
    if (acked > written)
      violations.push({
        invariant: 'cross-vm',
        detail: `${k.domain} acknowledged ${acked} but ${w.domain} wrote only ${written}`,
      });
    if (writerA > ackedB + 1)
      violations.push({
        invariant: 'cross-vm-lockstep',
        detail: `${w.domain} started step ${writerA} but ${k.domain} acknowledged only ${ackedB}`,
      });
  }
  return report;
}

/** Reads every disk of a cut (in parallel) and evaluates it. */
export async function checkCut(vms: CutVm[], ring = DEFAULT_RING): Promise<CutReport> {
  const states = await Promise.all(
    vms.map(async (vm) => ({
      domain: vm.domain,
      role: vm.role,
      disks: await Promise.all(vm.disks.map((d) => readDiskState(d, ring))),
    })),
  );
  return evaluateCut(states);
}

/** One line: the steps per VM and disk, and the violations. */
export function formatCut(report: CutReport): string {
  const vms = report.vms
    .map((v) => `${v.role ?? v.domain} ${v.disks.map((d) => `${TARGET_LABEL[d.target] ?? d.target}=${d.n}`).join(' ')}`)
    .join(', ');
  const verdict = report.violations.length
    ? `VIOLATED ${report.violations.map((x) => `${x.invariant}: ${x.detail}`).join('; ')}`
    : 'ok';
  return `${vms}: ${verdict}`;
}

async function main(): Promise<void> {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error('usage: consistency-check <cut.json>...  (each: { "vms": [{ "domain", "role"?, "disks": [...] }] })');
    process.exit(2);
  }
  let bad = 0;
  for (const f of files) {
    const cut = JSON.parse(readFileSync(f, 'utf8')) as { vms: CutVm[] };
    const report = await checkCut(cut.vms);
    if (report.violations.length) bad++;
    console.log(`${f}: ${formatCut(report)}`);
  }
  console.log(`${files.length} cut(s) checked, ${bad} with violations`);
  process.exit(bad ? 1 : 0);
}

if (require.main === module) {
  main().catch((err: Error) => {
    console.error(err.message);
    process.exit(2);
  });
}

/**
 * Instant restore on the target host (docs/adr/0013-instant-restore.md): the point's disks served from the repository
 * as NBD exports by a detached serving process, a local qcow2 overlay per disk over its export, and hydration (a
 * block pull per disk) in steps the workflow repeats until no disk reads from its export any more. A step is
 * idempotent: it finds the pulls QEMU is running, restarts the serving process if it died, re-opens the disks of
 * VMs whose QEMU still holds a dead connection (managed save and restore: QEMU opens the chain afresh and virtio-blk
 * retries the requests the stop error policy held), and resumes VMs QEMU paused on an I/O error once the store is
 * reachable again.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type {
  HydrationDisk,
  HydrationReport,
  InstantExport,
  InstantFinishRequest,
  InstantHydrateRequest,
  InstantServeRequest,
  InstantStopRequest,
} from '../../common/repo-restore';
import { zeroRanges, type DiskManifest } from '../../backup/manifest';
import { failure } from '../../common/failures';
import type { VmPowerState } from '../../common/types';
import { assertSafeName } from '../../common/validation';
import { withoutNbdBacking } from '../../hypervisor/domain-xml';
import { nbdUrl } from '../../hypervisor/images';
import { beating, cancelled, heartbeat } from '../heartbeat';
import { writePrivateFile, type RestoreRecord } from '../restore-records';
import { bad, REPO_KEY_FILE_ENV, type RepoRestoreContext } from './context';
import { privateFile } from './rebuild';
import { withRepo } from './repo';
import { defaultInstantServer } from './serve-default';
import type { InstantServer, ServeSpec } from './serve';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Consecutive failed pulls of a VM's disk, with the server up and the store reachable, before its disks re-open. */
const PULL_FAILURES_BEFORE_REOPEN = 3;

/** The directory of every instant restore's sockets on this host: the only place an NBD backing may be. */
export function instantSocketDir(ctx: RepoRestoreContext): string {
  return join(ctx.stateDir, 'instant');
}

/** One instant restore's directory: its sockets, the serving process's status, the point it serves. */
export function instantDir(ctx: RepoRestoreContext, restoreId: string): string {
  assertSafeName('restore id', restoreId);
  return join(instantSocketDir(ctx), restoreId);
}

/** The socket and export name of a restored disk (short names: a unix socket path has at most 107 bytes). */
export function exportOf(ctx: RepoRestoreContext, restoreId: string, domain: string, target: string) {
  const h = createHash('sha256').update(`${domain}\0${target}`).digest('hex').slice(0, 16);
  return { socket: join(instantDir(ctx, restoreId), `${h}.sock`), exportName: `disk-${h}` };
}

function server(ctx: RepoRestoreContext): InstantServer {
  return ctx.instantServer ?? defaultInstantServer(ctx);
}

function recordOf(ctx: RepoRestoreContext, restoreId: string): RestoreRecord {
  const rec = ctx.records.get(restoreId);
  if (!rec) throw bad(`no restore ${restoreId} was planned on ${ctx.hostId}`);
  return rec;
}

/** The serving process's spec of restore `rec` (the point from the restore's own file, written by instantServe). */
function specOf(ctx: RepoRestoreContext, rec: RestoreRecord, point?: InstantServeRequest): ServeSpec {
  const dir = instantDir(ctx, rec.restoreId);
  const p =
    point ??
    (JSON.parse(readFileSync(join(dir, 'point.json'), 'utf8')) as { repo: string; group: string; snapshotId: string });
  const keyFile = ctx.keyFile ?? process.env[REPO_KEY_FILE_ENV];
  if (!keyFile) throw bad(`host ${ctx.hostId} has no repository key: start its worker with --key-file`);
  return {
    repo: p.repo,
    keyFile,
    group: p.group,
    snapshotId: p.snapshotId,
    dir,
    exports: rec.vms.flatMap((v) =>
      v.disks.map((d) => ({ domain: v.source, target: d.target, ...exportOf(ctx, rec.restoreId, v.domain, d.target) })),
    ),
  };
}

/** Starts the serving process unless it runs, and waits until every socket is there. */
async function ensureServing(ctx: RepoRestoreContext, spec: ServeSpec): Promise<boolean> {
  const srv = server(ctx);
  let started = false;
  if (!(await srv.status(spec)).running) {
    // The default server's start resolves once every socket accepts (it polls every 50 ms): no wait below then.
    await srv.start(spec);
    started = true;
    ctx.log('instant restore: serving process started', { dir: spec.dir });
  }
  const deadline = Date.now() + 300_000;
  while (!(await srv.status(spec)).ready) {
    if (Date.now() > deadline) throw new Error(`the serving process of ${spec.dir} did not become ready`);
    heartbeat({ waiting: 'serving process' });
    await sleep(50);
  }
  return started;
}

/**
 * Starts serving the planned disks of restore `restoreId` and makes each disk's overlay (mode 0600) over its export.
 * The serving process starts first and its start (Node, the repository opened, the sockets) overlaps the overlays:
 * an overlay names its export without opening it (`qemu-img create -u`), so it needs no server yet; the call
 * returns once both are done. Idempotent: a running server is kept, an overlay over the right export too.
 * @throws BAD_INPUT when no restore was planned under that id, or a planned disk is not qcow2
 */
export async function instantServe(
  ctx: RepoRestoreContext,
  req: InstantServeRequest,
): Promise<{ exports: InstantExport[] }> {
  const rec = recordOf(ctx, req.restoreId);
  const raw = rec.vms.flatMap((v) => v.disks.filter((d) => d.format !== 'qcow2').map((d) => `${v.domain} ${d.target}`));
  if (raw.length) throw bad(`an instant restore needs qcow2 disks: ${raw.join(', ')}`);
  const dir = instantDir(ctx, req.restoreId);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writePrivateFile(
    join(dir, 'point.json'),
    JSON.stringify({ repo: req.repo, group: req.group, snapshotId: req.snapshotId }),
  );
  const spec = specOf(ctx, rec, req);
  const disks = rec.vms.flatMap((v) => v.disks.map((d) => ({ v, d })));
  const overlays = async (): Promise<InstantExport[]> => {
    const manifests = await withRepo(ctx, req.repo, (repo) =>
      Promise.all(disks.map(({ v, d }) => repo.readDiskManifest(req.group, req.snapshotId, v.source, d.target))),
    );
    return Promise.all(
      disks.map(async ({ v, d }, i) => {
        const e = exportOf(ctx, req.restoreId, v.domain, d.target);
        await overlayOnce(ctx, req.restoreId, d.file, e, manifests[i]);
        return { domain: v.domain, target: d.target, ...e };
      }),
    );
  };
  // Both end before the activity does: a compensation that stops serving never runs while a start is under way.
  const [served, made] = await Promise.allSettled([ensureServing(ctx, spec), overlays()]);
  if (served.status === 'rejected') throw served.reason;
  if (made.status === 'rejected') throw made.reason;
  return { exports: made.value };
}

/**
 * The overlay `file` over export `e`, made private before qemu-img writes it, with the point's zero chunks marked in
 * it (the guests' reads of them and the hydration never reach the repository); kept when it is already that.
 */
async function overlayOnce(
  ctx: RepoRestoreContext,
  restoreId: string,
  file: string,
  e: { socket: string; exportName: string },
  manifest: DiskManifest,
): Promise<void> {
  if (existsSync(file)) {
    const info = await ctx.hypervisor.imageInfo(file).catch(() => undefined);
    if (info?.backing === nbdUrl(e.socket, e.exportName)) return;
    // Only this restore's plan names the file (it was absent when planned) and no VM runs on it yet.
    rmSync(file, { force: true });
  }
  ctx.records.created(restoreId, file);
  privateFile(file);
  await ctx.hypervisor.createNbdOverlay(file, e, manifest.virtualSize, zeroRanges(manifest));
}

/** The VMs whose disks must be re-opened (their QEMU holds a connection to a serving process that died). */
class ReopenList {
  private readonly file: string;
  constructor(dir: string) {
    this.file = join(dir, 'reopen.json');
  }
  list(): string[] {
    try {
      return JSON.parse(readFileSync(this.file, 'utf8')) as string[];
    } catch {
      return [];
    }
  }
  add(domains: string[]): void {
    writePrivateFile(this.file, JSON.stringify([...new Set([...this.list(), ...domains])]));
  }
  remove(domain: string): void {
    writePrivateFile(this.file, JSON.stringify(this.list().filter((d) => d !== domain)));
  }
}

/**
 * Re-opens a VM's disks: managed save (QEMU stops; the requests the stop policy held are in the saved state), start
 * paused from it (a new QEMU opens the chain, connecting to the restarted server), resume (the held requests are
 * retried). Idempotent: a VM found shut off (a step died after the save) is started from its saved state.
 */
async function reopenVm(ctx: RepoRestoreContext, domain: string, targets: string[]): Promise<void> {
  const hv = ctx.hypervisor;
  let state = await hv.state(domain);
  if (state === 'running' || state === 'paused') {
    for (const t of targets) if (await hv.blockJob(domain, t)) await hv.endBlockJob(domain, t, 'abort');
    await hv.managedSave(domain);
    state = await hv.state(domain);
  }
  if (state === 'shutoff') await hv.start(domain, { paused: true });
  if ((await hv.state(domain)) === 'paused') await hv.resume(domain);
  ctx.log('instant restore: disks re-opened', { domain });
}

/**
 * One hydration step: restarts a dead serving process (and re-opens the disks of the VMs that used it), resumes VMs
 * paused on an I/O error once the store is reachable, keeps a block pull running on every disk still backed by its
 * export (at most `maxParallel` at once), and reports each disk's progress after `stepMs` or when all are hydrated.
 * @throws BAD_INPUT for a disk that is not one of the restore's
 */
export async function instantHydrate(ctx: RepoRestoreContext, req: InstantHydrateRequest): Promise<HydrationReport> {
  const rec = recordOf(ctx, req.restoreId);
  const foreign = req.disks.filter(
    (d) => !rec.vms.some((v) => v.domain === d.domain && v.disks.some((k) => k.target === d.target)),
  );
  if (foreign.length)
    throw bad(`not disks of restore ${req.restoreId}: ${foreign.map((d) => `${d.domain} ${d.target}`).join(', ')}`);
  const spec = specOf(ctx, rec);
  const reopen = new ReopenList(instantDir(ctx, req.restoreId));
  const domains = [...new Set(req.disks.map((d) => d.domain))];
  const targetsOf = (domain: string) => req.disks.filter((d) => d.domain === domain).map((d) => d.target);
  const report: HydrationReport = {
    disks: [],
    hydrated: false,
    storeReachable: false,
    resumed: [],
    reopened: [],
    serverRestarted: false,
  };
  const failures = new Map<string, number>();
  /** Disks whose pull ran at the last poll. */
  const pulling = new Set<string>();
  const deadline = Date.now() + req.stepMs;
  for (;;) {
    // An attempt Temporal gave up on (heartbeat timeout) stops here: its retry does the work.
    if (cancelled()) throw new Error('hydration step cancelled');
    const pending = await pendingDomains(ctx, rec, req, reopen);
    let status = await server(ctx).status(spec);
    if (pending.length && !status.running) {
      // QEMU does not reconnect to a new server (libvirt 9.0 / QEMU 7.2): every VM still reading from it re-opens.
      reopen.add(pending);
      report.serverRestarted = (await ensureServing(ctx, spec)) || report.serverRestarted;
      status = await server(ctx).status(spec);
    }
    report.storeReachable = status.storeReachable;
    if (status.running && status.storeReachable) {
      for (const d of reopen.list().filter((x) => domains.includes(x))) {
        await reopenVm(ctx, d, targetsOf(d));
        reopen.remove(d);
        report.reopened.push(d);
      }
      for (const d of domains) {
        if (!(await ctx.hypervisor.pausedByIoError(d))) continue;
        await ctx.hypervisor.resume(d);
        report.resumed.push(d);
        ctx.log('instant restore: VM resumed after an I/O error pause (the store is reachable)', { domain: d });
      }
    }
    const serving = status.running && status.storeReachable;
    report.disks = await pollPulls(ctx, rec, req, { failures, pulling, serving, reopen });
    report.hydrated = report.disks.every((d) => d.hydrated);
    heartbeat(report);
    if (report.hydrated || Date.now() >= deadline) return report;
    await sleep(Math.min(1000, Math.max(0, deadline - Date.now())));
  }
}

/** The restore's VMs that still read from their exports (or are shut off waiting to be re-opened). */
async function pendingDomains(
  ctx: RepoRestoreContext,
  rec: RestoreRecord,
  req: InstantHydrateRequest,
  reopen: ReopenList,
) {
  const out = new Set<string>();
  const toReopen = reopen.list();
  for (const d of req.disks) {
    if (out.has(d.domain)) continue;
    if (toReopen.includes(d.domain) || (await stillBacked(ctx, rec, d.domain, d.target))) out.add(d.domain);
  }
  return [...out];
}

/** The restored file of a disk of the restore. */
function fileOf(rec: RestoreRecord, domain: string, target: string): string {
  return rec.vms.find((v) => v.domain === domain)!.disks.find((k) => k.target === target)!.file;
}

/**
 * Whether a disk still reads from its export: for a running VM its live chain says so; for a shut-off one (the
 * persistent definition names the export until the end) the image's own header.
 */
async function stillBacked(ctx: RepoRestoreContext, rec: RestoreRecord, domain: string, target: string) {
  const state = await ctx.hypervisor.state(domain);
  if (state === 'running' || state === 'paused') return (await ctx.hypervisor.nbdBacking(domain, target)) !== undefined;
  const info = await ctx.hypervisor.imageInfo(fileOf(rec, domain, target)).catch(() => undefined);
  return info?.backing?.startsWith('nbd') ?? false;
}

/**
 * Each disk's progress; starts a pull on disks still backed by their export while fewer than `maxParallel` run, and
 * never on a VM that has a block job already: one pull per QEMU at a time. QEMU 7.2 keeps a finished pull's implicit
 * copy-on-read filter, without its child, until the job is dismissed, and a `query-named-block-nodes` in that window
 * (libvirt sends one as it processes the end of another pull of the same VM) segfaults QEMU (ADR 0013).
 * A VM whose pulls keep failing while the server runs and reaches the store holds a dead connection: re-opened.
 */
async function pollPulls(
  ctx: RepoRestoreContext,
  rec: RestoreRecord,
  req: InstantHydrateRequest,
  s: { failures: Map<string, number>; pulling: Set<string>; serving: boolean; reopen: ReopenList },
): Promise<HydrationDisk[]> {
  const { failures, pulling, serving, reopen } = s;
  const hv = ctx.hypervisor;
  const out: HydrationDisk[] = [];
  const todo: HydrationDisk[] = [];
  const offline: HydrationDisk[] = [];
  /** VMs with a block job: no second pull starts on them. */
  const busy = new Set<string>();
  let active = 0;
  for (const d of req.disks) {
    const disk = { domain: d.domain, target: d.target, done: 0, total: d.virtualSize, hydrated: false };
    out.push(disk);
    const state = await hv.state(d.domain);
    if (state !== 'running' && state !== 'paused') {
      // A VM shut off (by its guest, or its QEMU crashed) and not waiting to be re-opened: hydrated offline.
      if (reopen.list().includes(d.domain)) continue;
      if (await stillBacked(ctx, rec, d.domain, d.target)) offline.push(disk);
      else Object.assign(disk, { done: d.virtualSize, hydrated: true });
      continue;
    }
    const job = await hv.blockJob(d.domain, d.target);
    const key = `${d.domain}\0${d.target}`;
    if (job) busy.add(d.domain);
    if (job?.type === 'pull') {
      active++;
      pulling.add(key);
      Object.assign(disk, { done: job.cur, total: job.end || d.virtualSize });
    } else if (job) continue;
    else if (!(await hv.nbdBacking(d.domain, d.target))) Object.assign(disk, { done: d.virtualSize, hydrated: true });
    else if (pulling.delete(key)) {
      // The pull just ended: libvirt drops the backing from the live chain only once it has processed QEMU's
      // completion. A new pull is started only if the backing is still there at the next poll (the pull failed).
      Object.assign(disk, { done: d.virtualSize });
    } else todo.push(disk);
  }
  for (const disk of serving ? offline : []) {
    ctx.log('instant restore: hydrating the disk of a shut-off VM offline', { ...disk });
    await beating(() => hv.hydrateImage(fileOf(rec, disk.domain, disk.target)));
    Object.assign(disk, { done: disk.total, hydrated: true });
  }
  for (const disk of todo) {
    if (active >= req.maxParallel || !serving) break;
    if (busy.has(disk.domain)) continue;
    const key = `${disk.domain}\0${disk.target}`;
    try {
      await hv.blockPull(disk.domain, disk.target, req.bandwidthMiB ? { bandwidthMiB: req.bandwidthMiB } : {});
      busy.add(disk.domain);
      active++;
      failures.delete(key);
    } catch (err) {
      const n = (failures.get(key) ?? 0) + 1;
      failures.set(key, n);
      ctx.log('instant restore: block pull did not start', { ...disk, error: (err as Error).message, failures: n });
      if (n >= PULL_FAILURES_BEFORE_REOPEN) reopen.add([disk.domain]);
    }
  }
  return out;
}

/**
 * Ends an instant restore once every disk is hydrated: the persistent definitions lose the NBD backing and the stop
 * error policies, the serving process stops and the restore's sockets go.
 * @throws HydrationIncomplete (retried) while a disk still reads from its export
 */
export async function instantFinish(
  ctx: RepoRestoreContext,
  req: InstantFinishRequest,
): Promise<{ states: Record<string, VmPowerState> }> {
  const rec = recordOf(ctx, req.restoreId);
  const hv = ctx.hypervisor;
  for (const domain of req.domains) {
    const vm = rec.vms.find((v) => v.domain === domain);
    if (!vm) throw bad(`${domain} is not a VM of restore ${req.restoreId}`);
    for (const d of vm.disks)
      if (await stillBacked(ctx, rec, domain, d.target))
        throw failure('hydrationIncomplete', `${domain} ${d.target} still reads from its NBD export`);
    const xml = await hv.domainXml(domain);
    const clean = withoutNbdBacking(xml);
    if (clean !== xml) await hv.defineDomain(clean);
  }
  await stopServing(ctx, rec);
  ctx.log('instant restore hydrated', { restoreId: req.restoreId, vms: req.domains });
  const states: Record<string, VmPowerState> = {};
  for (const domain of req.domains) states[domain] = await hv.state(domain);
  return { states };
}

/** Compensation (before the VMs ran) and the end of hydration: stop the serving process, remove its directory. */
export async function instantStop(ctx: RepoRestoreContext, req: InstantStopRequest): Promise<void> {
  const rec = ctx.records.get(req.restoreId);
  if (rec) await stopServing(ctx, rec);
  else rmSync(instantDir(ctx, req.restoreId), { recursive: true, force: true });
}

async function stopServing(ctx: RepoRestoreContext, rec: RestoreRecord): Promise<void> {
  const dir = instantDir(ctx, rec.restoreId);
  if (existsSync(join(dir, 'point.json'))) await server(ctx).stop(specOf(ctx, rec));
  rmSync(dir, { recursive: true, force: true });
}

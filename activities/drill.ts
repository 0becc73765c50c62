import { execFile } from 'node:child_process';
import { lstatSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { userInfo } from 'node:os';
import { dirname, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Context } from '@temporalio/activity';
import { readKeyFile } from '../backup/crypto';
import { PERMANENT_REPOSITORY_ERRORS, RepositoryError } from '../backup/errors';
import { RepositoryLock } from '../backup/locks';
import { DRILL_RECORD, Repository } from '../backup/repository';
import type { CheckVmReadyRequest, DrillRecord, ReadyVerdict, WaitReadyRequest } from '../common/drill';
import { safeName } from '../common/host-requests';
import { failure } from '../common/failures';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { serialOutputs } from '../hypervisor/domain-xml';
import { REPO_KEY_FILE_ENV } from './repo-restore';
import { heartbeat } from './heartbeat';
import { RestoreRecords } from './restore-records';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface DrillDeps {
  hypervisor: Hypervisor;
  hostId: string;
  keyFile?: string;
  /** Whether this host runs drill check commands (`--allow-drill-checks`). @default false */
  allowChecks?: boolean;
  /** Where restored VMs' files are: the only serial outputs a readiness wait reads. Needed by `waitReady`. */
  imagesDir?: string;
  /** This host's state dir, with the records of the restores made here. Needed by `waitReady`. */
  stateDir?: string;
}

/** PATH of a drill's check command: fixed, not the worker's. */
export const CHECK_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Most lines, and bytes, of a check's output kept in a verdict (and so in workflow history). */
export const TAIL_LINES = 5;
export const TAIL_BYTES = 512;

/**
 * The environment of a drill's check command: a fixed PATH, the clones' names, and who and where the user is (so
 * e.g. `virsh` finds the user's libvirt); nothing else of the worker's (no key file path, no S3 credentials).
 */
export function checkEnvironment(domains: string[]): Record<string, string> {
  const user = userInfo();
  const env: Record<string, string> = {
    PATH: CHECK_PATH,
    HOME: user.homedir,
    USER: user.username,
    LOGNAME: user.username,
    LANG: 'C.UTF-8',
    GROUPSNAP_DRILL_VMS: domains.join(' '),
  };
  const runtimeDir = process.env.XDG_RUNTIME_DIR;
  if (runtimeDir && /^\/[\w./-]*$/.test(runtimeDir)) env.XDG_RUNTIME_DIR = runtimeDir;
  return env;
}

/** `text` made fit for history: printable ASCII only, its last {@link TAIL_LINES} lines, at most `max` bytes. */
export function boundedTail(text: string, max = TAIL_BYTES): string {
  const lines = text
    .replace(/[^\x20-\x7e\n]/g, '?')
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(-TAIL_LINES)
    .join(' | ');
  return lines.length > max ? `...${lines.slice(-(max - 3))}` : lines;
}

function cancelled(): boolean {
  try {
    return Context.current().cancellationSignal.aborted;
  } catch {
    return false;
  }
}

/** Reads what a listening serial socket says, appending to `into.text`, until `stop` resolves. */
function readSocket(path: string, into: { text: string }, stop: Promise<void>): void {
  const s = createConnection(path);
  s.on('data', (d: Buffer) => (into.text = (into.text + d.toString('latin1')).slice(-65536)));
  s.on('error', () => undefined);
  void stop.then(() => s.destroy());
}

/** A verdict whose reason is bounded and printable (it goes to workflow history). */
function verdict(ready: boolean, reason: string): ReadyVerdict {
  return { ready, reason: boundedTail(reason, 1024) };
}

/** The drill's steps on the target host: find the latest point, wait for readiness, record the outcome. */
export function createDrillActivities(deps: DrillDeps) {
  /**
   * The serial outputs of each VM in `req` (files and sockets directly in the images dir); every VM must be one a
   * restore made on this host. @throws BAD_INPUT naming the others
   */
  async function restoredConsoles(req: WaitReadyRequest) {
    if (!deps.stateDir || !deps.imagesDir)
      throw new Error(`host ${deps.hostId}: waitReady needs the host's state and images dirs`);
    const imagesDir = resolve(deps.imagesDir);
    const records = new RestoreRecords(deps.stateDir);
    const foreign = req.domains.filter((d) => !records.vmNamed(d));
    if (foreign.length)
      throw failure(
        'badInput',
        `not VMs a restore made on ${deps.hostId}: ${foreign.map((d) => JSON.stringify(d)).join(', ')}`,
      );
    const consoles = new Map<string, { text: string; files: string[]; sockets: string[] }>();
    for (const d of req.domains) {
      const outs = req.readiness === 'serial-line' ? serialOutputs(await deps.hypervisor.domainXml(d)) : [];
      const inside = (p: string) => dirname(resolve(p)) === imagesDir;
      consoles.set(d, {
        text: '',
        files: outs.flatMap((o) => (o.file && inside(o.file) ? [o.file] : [])),
        sockets: outs.flatMap((o) => (o.socket && inside(o.socket) ? [o.socket] : [])),
      });
    }
    return consoles;
  }

  const openRepo = async (url: string) => {
    const keyFile = deps.keyFile ?? process.env[REPO_KEY_FILE_ENV];
    if (!keyFile) throw failure('badInput', `host ${deps.hostId} has no repository key (--key-file)`);
    try {
      return await Repository.open(url, readKeyFile(keyFile));
    } catch (err) {
      // Bad input (key file, URL or endpoint, wrong key, no repository) is not retried; a store that is down is.
      if (err instanceof RepositoryError && (PERMANENT_REPOSITORY_ERRORS as readonly string[]).includes(err.name))
        throw failure('badInput', `on host ${deps.hostId}: ${err.message}`);
      throw err;
    }
  };
  const activities = {
    /** The newest point of `group` in the repository. */
    async repoLatestPoint(req: { repo: string; group: string }): Promise<string> {
      const repo = await openRepo(req.repo);
      try {
        // Damaged points are left out: the latest readable point is the one drilled.
        const points = await RepositoryLock.holdForReading(repo, () => repo.listPoints({ group: req.group }), {
          owner: deps.hostId,
        });
        const latest = points.at(-1);
        if (!latest) throw failure('badInput', `group ${req.group} has no point in ${req.repo}`);
        // Read from the repository, not trusted: it names the restore's point (and its files) next.
        const id = safeName('snapshot id').safeParse(latest.snapshotId);
        if (!id.success)
          throw failure('badInput', `the repository's newest point of ${req.group}: ${id.error.issues[0].message}`);
        return latest.snapshotId;
      } finally {
        repo.close();
      }
    },

    /**
     * Waits until the clones are ready: all running (and still running after 2 s), a line matching on every VM's
     * serial console, or a check command exiting 0. Returns a verdict with a short reason, never what a console or
     * command printed beyond a bounded, sanitised tail; `ready: false` once the timeout passed. Only VMs a restore
     * made on this host are watched, and only their serial outputs inside the images dir are read.
     */
    async waitReady(req: WaitReadyRequest): Promise<ReadyVerdict> {
      const deadline = Date.now() + req.timeoutMs;
      if (req.readiness === 'command' && !deps.allowChecks)
        throw failure(
          'badInput',
          `host ${deps.hostId} does not run drill check commands: start its worker with --allow-drill-checks`,
        );
      const consoles = await restoredConsoles(req);
      let stopReading!: () => void;
      const stop = new Promise<void>((r) => (stopReading = r));
      for (const c of consoles.values()) for (const sock of c.sockets) readSocket(sock, c, stop);
      const pattern = req.serialLine !== undefined ? new RegExp(req.serialLine) : undefined;
      let last = '';
      try {
        for (let i = 0; ; i++) {
          heartbeat({ waiting: req.readiness, i });
          if (cancelled()) throw new Error('cancelled');
          const states = await Promise.all(req.domains.map((d) => deps.hypervisor.state(d)));
          const down = req.domains.filter((_, k) => states[k] !== 'running');
          if (down.length) last = `not running: ${down.join(', ')}`;
          else if (req.readiness === 'running') {
            if (i > 0) return verdict(true, `${req.domains.length} VMs running`);
          } else if (req.readiness === 'serial-line') {
            const seen = req.domains.filter((d) => {
              const c = consoles.get(d)!;
              const text = c.text + c.files.map((f) => safeRead(f)).join('\n');
              return text.split(/\r?\n/).some((l) => pattern!.test(l));
            });
            last = `serial line /${req.serialLine}/ seen on ${seen.length}/${req.domains.length} VMs`;
            if (seen.length === req.domains.length) return verdict(true, last);
          } else {
            try {
              const r = await run('sh', ['-c', req.check!], {
                timeout: Math.max(1000, Math.min(60_000, deadline - Date.now())),
                env: checkEnvironment(req.domains),
              });
              return verdict(true, `check exited 0: ${boundedTail(r.stdout)}`);
            } catch (err) {
              const e = err as { code?: number; stdout?: string; stderr?: string };
              last = `check exited ${e.code ?? '?'}: ${boundedTail(`${e.stdout ?? ''}${e.stderr ?? ''}`)}`;
            }
          }
          if (Date.now() > deadline) return verdict(false, `not ready after ${req.timeoutMs} ms: ${last}`);
          await sleep(req.readiness === 'command' ? 2000 : 500);
        }
      } finally {
        stopReading();
      }
    },

    /** Stores the drill's outcome beside the point in the repository (`points/<G>/<id>/drill`). */
    async recordDrill(req: { repo: string; record: DrillRecord }): Promise<void> {
      const repo = await openRepo(req.repo);
      try {
        await RepositoryLock.holdForReading(
          repo,
          () =>
            repo.writeSealedJson(
              `${repo.pointPrefix(req.record.group, req.record.snapshotId)}${DRILL_RECORD}`,
              req.record,
            ),
          { owner: deps.hostId },
        );
      } finally {
        repo.close();
      }
    },
  };
  return {
    ...activities,
    checkVmReady: (req: CheckVmReadyRequest) => checkVmReady(deps, activities.waitReady, req),
  };
}

/**
 * One VM of a recovery plan checked on this host until ready or its timeout: running, a serial line, a check command
 * (as `waitReady`, `GROUPSNAP_DRILL_VMS` naming the VM), or its TCP port at the given address accepting a
 * connection from this host. Only VMs a restore made here. A verdict, `ready: false` after the timeout.
 */
async function checkVmReady(
  deps: DrillDeps,
  waitReady: (req: WaitReadyRequest) => Promise<ReadyVerdict>,
  req: CheckVmReadyRequest,
): Promise<ReadyVerdict> {
  const c = req.check;
  if (c.kind === 'tcp') return tcpReady(deps, req.domain, c);
  return waitReady({
    domains: [req.domain],
    readiness: c.kind === 'serial' ? 'serial-line' : c.kind,
    ...(c.kind === 'serial' ? { serialLine: c.pattern } : {}),
    ...(c.kind === 'command' ? { check: c.command } : {}),
    timeoutMs: c.timeoutMs,
  });
}

/** Connects to `address:port` once; resolves whether it was accepted within `ms`. */
function tcpAccepts(address: string, port: number, ms: number): Promise<boolean> {
  return new Promise((done) => {
    const s = createConnection({ host: address, port, timeout: ms });
    const end = (ok: boolean) => {
      s.destroy();
      done(ok);
    };
    s.once('connect', () => end(true));
    s.once('timeout', () => end(false));
    s.once('error', () => end(false));
  });
}

/** A recovery plan's TCP check: the VM (restored here) running and its port accepting, until the timeout. */
async function tcpReady(
  deps: DrillDeps,
  domain: string,
  c: { port: number; address: string; timeoutMs: number },
): Promise<ReadyVerdict> {
  if (!deps.stateDir) throw new Error(`host ${deps.hostId}: checkVmReady needs the host's state dir`);
  if (!new RestoreRecords(deps.stateDir).vmNamed(domain))
    throw failure('badInput', `not a VM a restore made on ${deps.hostId}: ${JSON.stringify(domain)}`);
  const deadline = Date.now() + c.timeoutMs;
  const target = c.address.includes(':') ? `[${c.address}]:${c.port}` : `${c.address}:${c.port}`;
  let last = '';
  for (let i = 0; ; i++) {
    heartbeat({ waiting: 'tcp', i });
    if (cancelled()) throw new Error('cancelled');
    const state = await deps.hypervisor.state(domain);
    if (state !== 'running') last = `${domain} is ${state}`;
    else if (await tcpAccepts(c.address, c.port, Math.max(200, Math.min(2000, deadline - Date.now()))))
      return verdict(true, `${target} accepts connections`);
    else last = `${target} does not accept connections`;
    if (Date.now() > deadline) return verdict(false, `not ready after ${c.timeoutMs} ms: ${last}`);
    await sleep(1000);
  }
}

function safeRead(file: string): string {
  try {
    // A console log libvirt wrote, not a link planted to another file.
    if (!lstatSync(file).isFile()) return '';
    return readFileSync(file, 'latin1').slice(-65536);
  } catch {
    return '';
  }
}

export type DrillActivities = ReturnType<typeof createDrillActivities>;

/** The last drill recorded beside a point, if any. */
export async function readDrillRecord(repo: Repository, group: string, snapshotId: string) {
  return repo.readSealedJson<DrillRecord>(`${repo.pointPrefix(group, snapshotId)}${DRILL_RECORD}`);
}

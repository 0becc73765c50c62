/**
 * The NBD server of a point (./serve.ts) as a process of its own, for the host side: started detached in its own
 * session (as the host guard is, worker/guard.ts) so it outlives a worker restart, found again by its pid file,
 * stopped by it. The server's directory (`spec.dir`, private) holds `spec.json`, `serve.pid`, `status.json` and
 * `serve.log`. The child gets this process's environment: the S3 endpoint and credentials of the host's own
 * configuration (`AWS_*`), never anything that came through Temporal; the key is read from the key file.
 */
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { socketAnswers } from './nbd-server';
import {
  parseServeSpec,
  runServe,
  serveFiles,
  ServeInputError,
  writeStatusFile,
  type ServeOptions,
  type ServeSpec,
  type ServeStatus,
} from './serve';

/** The CLI subcommand the process runs: `groupsnap repo serve-exports <spec file>`. */
export const SERVE_PROCESS_ARGS = ['repo', 'serve-exports'] as const;

/**
 * The built serving entry (`dist/backup/serve-main.js`: only the server's modules, not the whole CLI), from
 * dist/backup/ or from the source tree.
 */
export function defaultServeEntry(): string {
  const candidates = [resolve(__dirname, 'serve-main.js'), resolve(__dirname, '../dist/backup/serve-main.js')];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`cannot start the NBD server: no built ${candidates.join(' or ')} (run 'npm run build')`);
  return found;
}

/** Whether a process's arguments (`/proc/<pid>/cmdline`) are those of the server of exactly `dir`. */
export function isServeProcessOf(cmdline: string, dir: string): boolean {
  const args = cmdline.split('\0');
  const at = args.indexOf(SERVE_PROCESS_ARGS[1]);
  return at > 0 && args[at - 1] === SERVE_PROCESS_ARGS[0] && args[at + 1] === serveFiles(dir).spec;
}

/** The pid of the server of `dir`, if one is alive. */
export function runningServePid(dir: string): number | undefined {
  try {
    const pid = Number(readFileSync(serveFiles(dir).pid, 'utf8'));
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    return isServeProcessOf(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), dir) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** The status the server of `dir` last wrote, and whether it runs; `undefined` when it never wrote one. */
export function readServeStatus(dir: string): (ServeStatus & { running: boolean }) | undefined {
  let status: ServeStatus;
  try {
    status = JSON.parse(readFileSync(serveFiles(dir).status, 'utf8')) as ServeStatus;
  } catch {
    return undefined;
  }
  const pid = runningServePid(dir);
  return { ...status, running: pid !== undefined && pid === status.pid };
}

export interface StartServeOptions {
  /**
   * The script to run with `repo serve-exports <spec file>`: the CLI (`dist/cli/main.js`) or the lighter
   * `dist/backup/serve-main.js`. @default defaultServeEntry()
   */
  cliEntry?: string;
  /** How long to wait for every socket to accept. @default 120 s */
  timeoutMs?: number;
  /** The child's environment. @default process.env (the host's S3 settings) */
  env?: NodeJS.ProcessEnv;
}

export interface StartedServe {
  pid: number;
  /** False when a server of the same spec was already running (nothing was started). */
  started: boolean;
  status: ServeStatus;
}

/** The spec as written to its file (a canonical form: what a second start compares). */
const specText = (spec: ServeSpec) => JSON.stringify(spec, null, 2) + '\n';

/**
 * Starts the server of `spec` as a detached process (its own session) and resolves once every socket accepts
 * connections. Idempotent: when the server of `spec.dir` already runs with the same spec, it is returned as it is.
 * @throws ServeInputError for a bad spec, a server of another spec running in the same directory, or a server
 * that stopped at start with an error a retry cannot fix (no such point, VM or disk; a prune running); Error when
 * it did not serve within the timeout (it is stopped then)
 */
export async function startServeProcess(spec: ServeSpec, opts: StartServeOptions = {}): Promise<StartedServe> {
  spec = parseServeSpec(spec);
  const files = serveFiles(spec.dir);
  mkdirSync(spec.dir, { recursive: true, mode: 0o700 });
  chmodSync(spec.dir, 0o700);
  const running = runningServePid(spec.dir);
  let pid: number;
  let started = false;
  if (running !== undefined) {
    const current = existsSync(files.spec) ? readFileSync(files.spec, 'utf8') : '';
    if (current !== specText(spec))
      throw new ServeInputError(`another NBD server (pid ${running}) serves a different spec from ${spec.dir}`);
    pid = running;
  } else {
    const entry = opts.cliEntry ?? defaultServeEntry();
    writeFileSync(files.spec, specText(spec), { mode: 0o600 });
    chmodSync(files.spec, 0o600);
    rmSync(files.status, { force: true });
    const logFd = openSync(files.log, 'a', 0o600);
    const child = spawn(process.execPath, [entry, ...SERVE_PROCESS_ARGS, files.spec], {
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env: opts.env ?? process.env,
    });
    child.unref();
    pid = child.pid as number;
    // The child writes it too; written here first so a second start at once finds it.
    writeFileSync(files.pid, String(pid), { mode: 0o600 });
    started = true;
  }
  const status = await waitServing(spec, pid, opts.timeoutMs ?? 120_000);
  return { pid, started, status };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !existsSync(`/proc/${pid}/stat`) || !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
}

/** Waits until the server's status says serving and every socket accepts; fails when it exits or times out. */
async function waitServing(spec: ServeSpec, pid: number, timeoutMs: number): Promise<ServeStatus> {
  const files = serveFiles(spec.dir);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let status: ServeStatus | undefined;
    try {
      status = JSON.parse(readFileSync(files.status, 'utf8')) as ServeStatus;
    } catch {
      status = undefined;
    }
    if (status?.pid === pid && status.state === 'failed')
      throw new ServeInputError(`the NBD server of ${spec.dir} failed to start: ${status.error ?? 'unknown error'}`);
    if (!alive(pid)) {
      const tail = existsSync(files.log) ? readFileSync(files.log, 'utf8').slice(-2000).trim() : '';
      throw new Error(`the NBD server of ${spec.dir} exited at start${tail ? `: ${tail}` : ''}`);
    }
    if (status?.pid === pid && status.state === 'serving') {
      const answers = await Promise.all([...new Set(spec.exports.map((e) => e.socket))].map((s) => socketAnswers(s)));
      if (answers.every(Boolean)) return status;
    }
    if (Date.now() > deadline) {
      await stopServeProcess(spec.dir).catch(() => undefined);
      throw new Error(`the NBD server of ${spec.dir} did not serve within ${Math.round(timeoutMs / 1000)} s`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Stops the server of `dir` (SIGTERM, then SIGKILL after `waitMs`) and waits for it to exit. Returns the pid
 * stopped, or `undefined` when none was running.
 */
export async function stopServeProcess(dir: string, opts: { waitMs?: number } = {}): Promise<number | undefined> {
  const pid = runningServePid(dir);
  if (pid === undefined) return undefined;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return undefined;
  }
  const until = Date.now() + (opts.waitMs ?? 10_000);
  while (alive(pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    while (alive(pid)) await new Promise((r) => setTimeout(r, 50));
  }
  return pid;
}

/**
 * The server process itself (`groupsnap repo serve-exports <spec file>`): claims the pid file, serves until SIGTERM
 * or SIGINT, then stops cleanly. Returns the exit code: 0 stopped, 1 failed, 2 a bad spec.
 */
export async function runServeProcess(specFile: string, log: NonNullable<ServeOptions['log']>): Promise<number> {
  let spec: ServeSpec;
  try {
    spec = parseServeSpec(JSON.parse(readFileSync(specFile, 'utf8')));
    if (serveFiles(spec.dir).spec !== resolve(specFile))
      throw new ServeInputError(`the spec file must be ${serveFiles(spec.dir).spec}`);
  } catch (err) {
    log('bad serve spec', { error: (err as Error).message });
    return 2;
  }
  const files = serveFiles(spec.dir);
  const other = runningServePid(spec.dir);
  if (other !== undefined && other !== process.pid) {
    log('another server already serves this directory', { pid: other });
    return 1;
  }
  writeFileSync(files.pid, String(process.pid), { mode: 0o600 });
  const controller = new AbortController();
  const stop = new Promise<void>((r) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => (controller.abort(), r()));
  });
  // The worker that started it may go away: nothing of its terminal or session reaches this process.
  process.on('SIGHUP', () => undefined);
  process.on('SIGPIPE', () => undefined);
  let server;
  try {
    server = await runServe(spec, { log, signal: controller.signal });
  } catch (err) {
    log('the NBD server failed to start', { error: (err as Error).message });
    if (controller.signal.aborted) writeStopped(files.status);
    return controller.signal.aborted ? 0 : 1;
  }
  await stop;
  log('stopping');
  await server.close();
  return 0;
}

/** Marks a status file stopped (a start interrupted by SIGTERM). */
function writeStopped(file: string): void {
  try {
    const status = JSON.parse(readFileSync(file, 'utf8')) as ServeStatus;
    writeStatusFile(file, { ...status, state: 'stopped', updatedAt: new Date().toISOString() });
  } catch {
    // nothing written yet
  }
}

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FreezeJournal } from '../activities/freeze-journal';
import { recoverFreezes } from '../activities/resume';
import { GUARD_GRACE_MS } from '../common/names';
import type { Hypervisor } from '../hypervisor/hypervisor';

export interface GuardOptions {
  hypervisor: Hypervisor;
  stateDir: string;
  /** How often the journal is scanned. @default 100 */
  pollMs?: number;
  /** Head start given to the worker's own deadline timer before the guard steps in. @default GUARD_GRACE_MS */
  graceMs?: number;
  signal?: AbortSignal;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

/**
 * The host guard: resumes every VM whose freeze record is still open after its deadline. It runs in a process of
 * its own, so a VM paused by groupsnap is resumed even when the worker is killed or Temporal is unreachable.
 */
export async function runGuard(options: GuardOptions): Promise<void> {
  const { hypervisor, pollMs = 100, graceMs = GUARD_GRACE_MS, signal } = options;
  const log = options.log ?? (() => {});
  const journal = new FreezeJournal(options.stateDir);
  let lastPrune = 0;
  while (!signal?.aborted) {
    try {
      const { closed, failed } = await recoverFreezes(hypervisor, journal, undefined, 'resumed-by-guard', graceMs);
      for (const r of closed)
        log('guard resumed VM past its freeze deadline', { domain: r.domain, snapshotId: r.snapshotId });
      for (const f of failed)
        log('guard cannot resume VM yet, retrying', {
          domain: f.record.domain,
          snapshotId: f.record.snapshotId,
          error: (f.error as Error)?.message ?? String(f.error),
        });
      if (Date.now() - lastPrune > 60_000) {
        journal.prune(24 * 3600_000);
        lastPrune = Date.now();
      }
    } catch (err) {
      log('guard scan failed', { error: (err as Error).message });
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** What the guard's reconnecting loop needs of a hypervisor connection (LibvirtHypervisor has it). */
export interface GuardConnection extends Hypervisor {
  readonly connection: { isAlive(): Promise<boolean> };
  close(): Promise<void>;
}

/**
 * The guard process's loop: runs {@link runGuard} over a connection opened by `open`, and opens a new one whenever
 * it is lost (libvirtd restarted), until `signal` aborts. An abort that comes while a connection is being opened
 * still ends the loop (it once went unseen: the guard then ran on after SIGTERM).
 */
export async function runGuardReconnecting(options: {
  open: () => Promise<GuardConnection>;
  stateDir: string;
  signal: AbortSignal;
  log: (message: string, fields?: Record<string, unknown>) => void;
  aliveEveryMs?: number;
  retryMs?: number;
}): Promise<void> {
  const { open, stateDir, signal, log } = options;
  while (!signal.aborted) {
    let hypervisor: GuardConnection | undefined;
    try {
      hypervisor = await open();
      const conn = hypervisor.connection;
      const lost = new AbortController();
      const watch = setInterval(() => {
        conn.isAlive().then(
          (alive) => alive || lost.abort(),
          () => lost.abort(),
        );
      }, options.aliveEveryMs ?? 2000);
      try {
        await runGuard({ hypervisor, stateDir, signal: AbortSignal.any([signal, lost.signal]), log });
      } finally {
        clearInterval(watch);
      }
    } catch (err) {
      log('guard cannot reach libvirt, retrying', { error: (err as Error).message });
      await new Promise((r) => setTimeout(r, options.retryMs ?? 1000));
    } finally {
      await hypervisor?.close().catch(() => undefined);
    }
  }
}

function pidFile(stateDir: string): string {
  return join(stateDir, 'guard.pid');
}

/**
 * Whether a process's arguments (`/proc/<pid>/cmdline`, NUL-separated) are those of the guard of exactly `stateDir`:
 * the `guard` command with `--state-dir` equal to it (not a guard of `<stateDir>-2`, nor a process that merely
 * mentions the path).
 */
export function isGuardOf(cmdline: string, stateDir: string): boolean {
  const args = cmdline.split('\0');
  const at = args.indexOf('--state-dir');
  const dir = at >= 0 ? args[at + 1] : args.find((a) => a.startsWith('--state-dir='))?.slice('--state-dir='.length);
  return args.includes('guard') && dir !== undefined && resolve(dir) === resolve(stateDir);
}

/** The pid of the guard serving `stateDir`, if one is alive. */
export function runningGuardPid(stateDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(pidFile(stateDir), 'utf8'));
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    return isGuardOf(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), stateDir) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Keeps the host guard of `stateDir` running: checks every `everyMs` and starts a new one when it died (killed,
 * crashed). Returns a function that stops watching (the guard itself keeps running).
 */
export function superviseGuard(
  stateDir: string,
  libvirtUri: string,
  cliEntry: string,
  log: (message: string, fields?: Record<string, unknown>) => void = () => {},
  everyMs = 2_000,
): () => void {
  const timer = setInterval(() => {
    if (runningGuardPid(stateDir)) return;
    try {
      const pid = ensureGuard(stateDir, libvirtUri, cliEntry);
      log('host guard was not running: started it again', { pid, stateDir });
    } catch (err) {
      log('cannot restart the host guard', { stateDir, error: (err as Error).message });
    }
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** Records this process as the guard of `stateDir`. */
export function claimGuardPidFile(stateDir: string): void {
  writeFileSync(pidFile(stateDir), String(process.pid));
}

/**
 * Starts the host guard for `stateDir` as a detached process (its own session, so it outlives the worker and
 * its process group) unless one is already running. Returns its pid.
 */
export function ensureGuard(stateDir: string, libvirtUri: string, cliEntry: string): number {
  const running = runningGuardPid(stateDir);
  if (running) return running;
  if (!existsSync(cliEntry))
    throw new Error(`cannot start the host guard: ${cliEntry} not found (run 'npm run build')`);
  mkdirSync(stateDir, { recursive: true });
  const logFd = openSync(join(stateDir, 'guard.log'), 'a');
  const child = spawn(process.execPath, [cliEntry, 'guard', '--state-dir', stateDir, '--libvirt-uri', libvirtUri], {
    detached: true,
    stdio: ['ignore', logFd, logFd],
  });
  child.unref();
  return child.pid!;
}

/**
 * Ends the guard of `stateDir` when no freeze record is open, after a clean stop of the worker that started it
 * (there is nothing left for it to protect). With an open record the guard is left running: it resumes that VM at
 * its deadline. Waits up to `waitMs` for it to exit (20 s: on a loaded 2-core machine 5 s was once not enough). Returns the pid stopped, if any.
 */
export async function stopIdleGuard(stateDir: string, waitMs = 20_000): Promise<number | undefined> {
  const pid = runningGuardPid(stateDir);
  if (pid === undefined || new FreezeJournal(stateDir).listOpen().length > 0) return undefined;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return undefined; // gone meanwhile
  }
  const until = Date.now() + waitMs;
  while (runningGuardPid(stateDir) === pid && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  return pid;
}

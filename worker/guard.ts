import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FreezeJournal } from '../activities/freeze-journal';
import { recoverFreezes } from '../activities/resume';
import type { Hypervisor } from '../hypervisor/hypervisor';

export interface GuardOptions {
  hypervisor: Hypervisor;
  stateDir: string;
  /** How often the journal is scanned. @default 100 */
  pollMs?: number;
  /** Head start given to the worker's own deadline timer before the guard steps in. @default 250 */
  graceMs?: number;
  signal?: AbortSignal;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

/**
 * The host guard: resumes every VM whose freeze record is still open after its deadline. It runs in a process of
 * its own, so a VM paused by groupsnap is resumed even when the worker is killed or Temporal is unreachable.
 */
export async function runGuard(options: GuardOptions): Promise<void> {
  const { hypervisor, pollMs = 100, graceMs = 250, signal } = options;
  const log = options.log ?? (() => {});
  const journal = new FreezeJournal(options.stateDir);
  let lastPrune = 0;
  while (!signal?.aborted) {
    try {
      const closed = await recoverFreezes(hypervisor, journal, undefined, 'resumed-by-guard', graceMs);
      for (const r of closed)
        log('guard resumed VM past its freeze deadline', { domain: r.domain, snapshotId: r.snapshotId });
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

function pidFile(stateDir: string): string {
  return join(stateDir, 'guard.pid');
}

/** The pid of the guard serving `stateDir`, if one is alive. */
export function runningGuardPid(stateDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(pidFile(stateDir), 'utf8'));
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes('guard') && cmdline.includes(stateDir) ? pid : undefined;
  } catch {
    return undefined;
  }
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

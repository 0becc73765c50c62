/**
 * The process that serves an instant restore's disks from the repository, read-only, as NBD exports on unix sockets
 * of this host: started detached, so it outlives the worker (as the guard does), stopped when hydration is done.
 * The instant-restore room only talks to it through {@link InstantServer}.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { writePrivateFile } from '../restore-records';

/** One disk of the point served on a socket: the point's VM name and target, the socket and the export's name. */
export interface ServeExport {
  domain: string;
  target: string;
  socket: string;
  exportName: string;
}

/** What the serving process serves, and the status file it keeps. */
export interface ServeSpec {
  repo: string;
  keyFile: string;
  group: string;
  snapshotId: string;
  exports: ServeExport[];
  statusFile: string;
}

/** The serving process as its status file and the kernel tell it. */
export interface ServeState {
  /** The process is alive. */
  running: boolean;
  /** Every export's socket is there. */
  ready: boolean;
  /** The process reaches the store (when it does not, it holds requests rather than failing them). */
  storeReachable: boolean;
}

export interface InstantServer {
  /** Starts the serving process for `spec` (detached); the caller checks {@link status} first. */
  start(spec: ServeSpec): Promise<void>;
  status(spec: ServeSpec): Promise<ServeState>;
  /** Stops it (no error when it is not running). */
  stop(spec: ServeSpec): Promise<void>;
}

/** Whether process `pid` is alive (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

interface StandInStatus {
  pids: number[];
}

/**
 * A stand-in server for development: `qemu-nbd -r --persistent` per export over a raw image of the disk that
 * `prepare` writes first (the slow way: it copies the whole disk before serving). The real one serves the chunks.
 */
export function qemuNbdStandIn(
  prepare: (spec: ServeSpec, e: ServeExport, raw: string) => Promise<void>,
): InstantServer {
  const rawOf = (spec: ServeSpec, e: ServeExport) => join(dirname(spec.statusFile), `${e.exportName}.raw`);
  const read = (spec: ServeSpec): StandInStatus | undefined => {
    try {
      return JSON.parse(readFileSync(spec.statusFile, 'utf8')) as StandInStatus;
    } catch {
      return undefined;
    }
  };
  return {
    async start(spec) {
      const pids: number[] = [];
      for (const e of spec.exports) {
        const raw = rawOf(spec, e);
        if (!existsSync(raw)) await prepare(spec, e, raw);
        rmSync(e.socket, { force: true });
        const args = ['-r', '-f', 'raw', '-k', e.socket, '-x', e.exportName, '--persistent', '-t', raw];
        const child = spawn('qemu-nbd', args, { detached: true, stdio: 'ignore' });
        child.unref();
        pids.push(child.pid!);
      }
      writePrivateFile(spec.statusFile, JSON.stringify({ pids }));
    },
    async status(spec) {
      const s = read(spec);
      const running = !!s && s.pids.length > 0 && s.pids.every(alive);
      return { running, ready: running && spec.exports.every((e) => existsSync(e.socket)), storeReachable: running };
    },
    async stop(spec) {
      for (const pid of read(spec)?.pids ?? []) if (alive(pid)) process.kill(pid, 'SIGTERM');
      for (const e of spec.exports) rmSync(rawOf(spec, e), { force: true });
    },
  };
}

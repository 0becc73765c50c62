import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';

// The program runs under a small shell watchdog that stops it when the parent (this Node process) dies without
// calling stop(): a killed test run must not leave servers behind. The watchdog prints the program's pid first,
// so a test can SIGKILL the program itself (not the watchdog), as a crash would.
const WATCHDOG = `
parent=$1; sig=$2; shift 2
"$@" & prog=$!
echo "$prog"
trap 'kill -$sig $prog 2>/dev/null; wait $prog; exit $?' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 $prog 2>/dev/null; do sleep 1 & wait $!; done
kill -$sig $prog 2>/dev/null
wait $prog
`;

export interface SupervisedOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Signal for an orderly stop (also sent when the parent dies). @default 'TERM' */
  stopSignal?: 'TERM' | 'INT';
  /** Appends the program's stdout and stderr to this file. */
  logFile?: string;
}

/** A long-running program (a server) under a watchdog; see {@link startSupervised}. */
export interface SupervisedProcess {
  /** The program's own pid (not the watchdog's). */
  readonly pid: number;
  /** Resolves with the watchdog's exit code once the program has exited. */
  readonly exited: Promise<number | null>;
  /** The program has exited. */
  readonly done: boolean;
  /** The last 8 KiB of the program's output. */
  output(): string;
  /** Sends SIGKILL to the program (a crash) and waits for it to be gone. */
  kill9(): Promise<void>;
  /** Orderly stop (the stop signal, then SIGKILL after `graceMs`); safe to call twice. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts `command args` under the watchdog and resolves once its pid is known. */
export async function startSupervised(
  command: string,
  args: string[],
  options: SupervisedOptions = {},
): Promise<SupervisedProcess> {
  const sig = options.stopSignal ?? 'TERM';
  const child: ChildProcess = spawn(
    'bash',
    ['-c', WATCHDOG, 'supervised', String(process.pid), sig, command, ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: options.env ?? process.env,
      cwd: options.cwd,
    },
  );
  const log: WriteStream | undefined = options.logFile ? createWriteStream(options.logFile, { flags: 'a' }) : undefined;
  let tail = '';
  let pidLine = '';
  let pid: number | undefined;
  let resolvePid!: (pid: number) => void;
  const pidKnown = new Promise<number>((r) => (resolvePid = r));
  const onData = (d: Buffer, isStdout: boolean) => {
    let text = d.toString();
    if (isStdout && pid === undefined) {
      pidLine += text;
      const nl = pidLine.indexOf('\n');
      if (nl < 0) return;
      pid = Number(pidLine.slice(0, nl));
      resolvePid(pid);
      text = pidLine.slice(nl + 1);
    }
    tail = (tail + text).slice(-8192);
    log?.write(text);
  };
  child.stdout!.on('data', (d: Buffer) => onData(d, true));
  child.stderr!.on('data', (d: Buffer) => onData(d, false));
  let done = false;
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      done = true;
      log?.end();
      resolve(code);
    }),
  );
  const first = await Promise.race([pidKnown, exited.then(() => undefined)]);
  if (first === undefined) throw new Error(`${command} did not start:\n${tail}`);
  let stopping: Promise<void> | undefined;
  return {
    pid: first,
    exited,
    get done() {
      return done;
    },
    output: () => tail,
    async kill9() {
      if (done) return;
      try {
        process.kill(first, 'SIGKILL');
      } catch {
        // already gone
      }
      await exited;
    },
    stop(graceMs = 15_000) {
      stopping ??= (async () => {
        if (done) return;
        child.kill('SIGTERM'); // the watchdog forwards the stop signal
        const timer = setTimeout(() => {
          try {
            process.kill(first, 'SIGKILL');
          } catch {
            // gone
          }
        }, graceMs);
        await exited;
        clearTimeout(timer);
      })();
      return stopping;
    },
  };
}

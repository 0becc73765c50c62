import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import { SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { freePort } from './free-port';
import { temporalCliPath } from './tools';

const WATCHDOG = `
parent=$1; shift
"$@" & server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server; exit $?' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1 & wait $!; done
kill -TERM $server 2>/dev/null
wait $server
`;

export interface DevServerOptions {
  /** Serve the Web UI. @default false */
  ui?: boolean;
  /** Extra namespaces to create besides `default`. */
  namespaces?: string[];
  /** gRPC port. @default a free port */
  port?: number;
  /** Web UI port. @default a free port */
  uiPort?: number;
  /** SQLite file; kept across restarts when given. @default a file in a fresh temp dir */
  dbFilename?: string;
  /** How long to wait for the server to answer health checks. @default 60000 */
  startTimeoutMs?: number;
  /** Extra dynamic config values, e.g. `{ 'history.maxInFlightUpdates': 100 }`. */
  dynamicConfig?: Record<string, unknown>;
  /** Register groupsnap's search attributes at start. @default true */
  searchAttributes?: boolean;
  /** Server log level. @default 'warn' */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
}

export interface DevServer {
  /** host:port of the frontend gRPC service. */
  readonly address: string;
  readonly port: number;
  readonly uiUrl: string | undefined;
  readonly dbFilename: string;
  readonly pid: number;
  /** Stops the server (SIGTERM, then SIGKILL after 10 s) and removes its temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts `temporal server start-dev` on free ports with an SQLite file in a temp dir and groupsnap's search
 * attributes registered, and resolves once it answers gRPC health checks.
 */
export async function startDevServer(options: DevServerOptions = {}): Promise<DevServer> {
  const cli = temporalCliPath();
  const port = options.port ?? (await freePort());
  const uiPort = options.ui ? (options.uiPort ?? (await freePort())) : undefined;
  const tempDir = options.dbFilename ? undefined : await mkdtemp(join(tmpdir(), 'groupsnap-temporal-'));
  const dbFilename = options.dbFilename ?? join(tempDir!, 'temporal.db');
  const args = [
    'server',
    'start-dev',
    '--ip',
    '127.0.0.1',
    '--port',
    String(port),
    '--db-filename',
    dbFilename,
    '--log-level',
    options.logLevel ?? 'warn',
    '--sqlite-pragma',
    'journal_mode=WAL',
    '--sqlite-pragma',
    'synchronous=OFF',
    '--dynamic-config-value',
    'system.enableActivityEagerExecution=true',
    // As deploy/dynamicconfig/groupsnap.yaml (the production shape's file) says, and why.
    '--dynamic-config-value',
    'history.maximumBufferedEventsBatch=1000',
    ...Object.entries(options.dynamicConfig ?? {}).flatMap(([k, v]) => [
      '--dynamic-config-value',
      `${k}=${JSON.stringify(v)}`,
    ]),
    ...(uiPort ? ['--ui-port', String(uiPort)] : ['--headless']),
    ...(options.namespaces ?? []).flatMap((ns) => ['--namespace', ns]),
    ...(options.searchAttributes === false ? [] : Object.entries(SEARCH_ATTRIBUTES)).flatMap(([name, type]) => [
      '--search-attribute',
      `${name}=${type}`,
    ]),
  ];
  // The server runs under a small shell watchdog that stops it when this process dies without calling stop()
  // (a killed test run must not leave servers behind); stop() signals the watchdog, which stops the server.
  const child = spawn('bash', ['-c', WATCHDOG, 'temporal-dev-server', String(process.pid), cli, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-8192);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const address = `127.0.0.1:${port}`;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await terminate(child, exited);
    if (tempDir) await rm(tempDir, { recursive: true, force: true });
  };
  try {
    await waitHealthy(address, options.startTimeoutMs ?? 60_000, exited, () => stderr);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    address,
    port,
    uiUrl: uiPort ? `http://127.0.0.1:${uiPort}` : undefined,
    dbFilename,
    pid: child.pid!,
    stop,
  };
}

async function waitHealthy(
  address: string,
  timeoutMs: number,
  exited: Promise<number | null>,
  stderr: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exitCode: number | null | undefined;
  void exited.then((code) => (exitCode = code));
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (exitCode !== undefined) {
      throw new Error(`temporal dev server exited with code ${exitCode} before becoming healthy:\n${stderr()}`);
    }
    let connection: Connection | undefined;
    try {
      connection = await Connection.connect({ address, connectTimeout: 1000 });
      const res = await connection.healthService.check({});
      // 1 = SERVING
      if (res.status === 1) {
        // Health can report SERVING a moment before the namespace is usable.
        await connection.workflowService.describeNamespace({ namespace: 'default' });
        return;
      }
    } catch (err) {
      lastError = err;
    } finally {
      await connection?.close();
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`temporal dev server at ${address} not healthy after ${timeoutMs} ms: ${String(lastError)}`);
}

async function terminate(child: ChildProcess, exited: Promise<number | null>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

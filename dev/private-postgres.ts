import { execFile } from 'node:child_process';
import { chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './free-port';
import { startSupervised, type SupervisedProcess } from './supervised-process';
import { REPO_ROOT } from './tools';

const run = promisify(execFile);

export interface PrivatePostgresOptions {
  /** Directory for the data dir, socket and log (made owned by the `postgres` user; its parents must let that user through). */
  dir: string;
  /** Superuser created by initdb. @default 'temporal' */
  user?: string;
  /** @default 'temporal' */
  password?: string;
  /** @default a free port on 127.0.0.1 */
  port?: number;
}

/** A PostgreSQL cluster of its own (initdb'd in a temp dir, on 127.0.0.1 only), never the system's. */
export interface PrivatePostgres {
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly running: boolean;
  /** Fast shutdown (clients disconnected, as a restart by an operator does); resolves once it is down. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data; resolves once it accepts connections. */
  start(): Promise<void>;
}

/** Path of Debian's PostgreSQL server binaries, installed once by scripts/ensure-postgres.sh if missing. */
export async function postgresBinDir(): Promise<string> {
  const { stdout } = await run('bash', [join(REPO_ROOT, 'scripts/ensure-postgres.sh')]);
  return stdout.trim();
}

/**
 * initdb's a new cluster in `dir` as the unprivileged `postgres` user (the server refuses root), with password
 * (SCRAM) authentication over TCP on 127.0.0.1 only, and starts it.
 */
export async function startPrivatePostgres(options: PrivatePostgresOptions): Promise<PrivatePostgres> {
  const bin = await postgresBinDir();
  const user = options.user ?? 'temporal';
  const password = options.password ?? 'temporal';
  const port = options.port ?? (await freePort());
  const { stdout: ids } = await run('id', ['-u', 'postgres']);
  const { stdout: gids } = await run('id', ['-g', 'postgres']);
  const [uid, gid] = [Number(ids.trim()), Number(gids.trim())];
  const asPostgres = ['--reuid=postgres', '--regid=postgres', '--init-groups', '--'];
  mkdirSync(options.dir, { recursive: true });
  chownSync(options.dir, uid, gid);
  const data = join(options.dir, 'data');
  const pwfile = join(options.dir, 'pwfile');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  chownSync(pwfile, uid, gid);
  const env = { ...process.env, HOME: options.dir, LC_ALL: 'C.UTF-8' };
  await run(
    'setpriv',
    [
      ...asPostgres,
      join(bin, 'initdb'),
      ...['-D', data, '-U', user, `--pwfile=${pwfile}`, '--auth-host=scram-sha-256', '--auth-local=trust'],
      ...['-E', 'UTF8', '--no-instructions'],
    ],
    { cwd: options.dir, env },
  );
  let server: SupervisedProcess | undefined;
  const start = async () => {
    server = await startSupervised(
      'setpriv',
      [
        ...asPostgres,
        join(bin, 'postgres'),
        ...['-D', data, '-p', String(port), '-k', options.dir],
        // Two Temporal servers x 4 services each keep pools of up to 30 connections.
        ...['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=400'],
      ],
      { cwd: options.dir, env, stopSignal: 'INT', logFile: join(options.dir, 'postgres.log') },
    );
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (server.done) throw new Error(`postgres exited at start:\n${server.output()}`);
      try {
        await run(join(bin, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-U', user, '-t', '2']);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`postgres not ready after 60 s: ${String(err)}\n${server.output()}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  };
  await start();
  return {
    host: '127.0.0.1',
    port,
    user,
    password,
    get running() {
      return server !== undefined && !server.done;
    },
    stop: async () => {
      await server?.stop(30_000);
    },
    start: async () => {
      if (server && !server.done) return;
      await start();
    },
  };
}

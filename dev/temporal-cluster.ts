import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import { SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { freePortIn } from './free-port';
import { startPrivatePostgres, type PrivatePostgres } from './private-postgres';
import { startSupervised, type SupervisedProcess } from './supervised-process';
import { startTcpBalancer, type TcpBalancer } from './tcp-balancer';
import { REPO_ROOT, temporalCliPath } from './tools';

const run = promisify(execFile);

/** The files of the production set-up this cluster shares with docker-compose.yml (checked by its static test). */
export const CLUSTER_DEPLOY_FILES = {
  /** Dynamic config: mounted into temporalio/server by the compose file, given to every server process here. */
  dynamicConfig: 'deploy/dynamicconfig/groupsnap.yaml',
  /** Databases and schemas (the compose file's `temporal-schema` service). */
  schema: 'deploy/setup-postgres.sh',
  /** Namespace and groupsnap's search attributes (the compose file's `temporal-namespace` service). */
  namespace: 'deploy/create-namespace.sh',
} as const;

/** The namespace the cluster creates (the compose file's `${TEMPORAL_NAMESPACE:-default}`). */
export const CLUSTER_NAMESPACE = 'default';

/** One server process's ports on 127.0.0.1 (every service of Temporal runs in each process). */
export interface ServerPorts {
  frontendGrpc: number;
  frontendHttp: number;
  frontendMembership: number;
  historyGrpc: number;
  historyMembership: number;
  matchingGrpc: number;
  matchingMembership: number;
  workerGrpc: number;
  workerMembership: number;
}

/**
 * The environment `temporalio/server` renders its config template (`config/docker.yaml`) from, as
 * docker-compose.yml sets it, plus what differs for several processes on one machine: each its own ports, all
 * on 127.0.0.1.
 */
export function serverEnvironment(
  pg: { host: string; port: number; user: string; password: string },
  ports: ServerPorts,
  dynamicConfigFile: string,
): Record<string, string> {
  return {
    // The same as the compose file's `temporal` service:
    DB: 'postgres12',
    DB_PORT: String(pg.port),
    POSTGRES_SEEDS: pg.host,
    POSTGRES_USER: pg.user,
    POSTGRES_PWD: pg.password,
    DYNAMIC_CONFIG_FILE_PATH: dynamicConfigFile,
    // The template reads the visibility store's port from POSTGRES_PORT (default 5432), not DB_PORT.
    POSTGRES_PORT: String(pg.port),
    // Several processes on one machine: loopback only, own ports, the same broadcast address.
    BIND_ON_IP: '127.0.0.1',
    TEMPORAL_BROADCAST_ADDRESS: '127.0.0.1',
    FRONTEND_GRPC_PORT: String(ports.frontendGrpc),
    FRONTEND_HTTP_PORT: String(ports.frontendHttp),
    FRONTEND_MEMBERSHIP_PORT: String(ports.frontendMembership),
    HISTORY_GRPC_PORT: String(ports.historyGrpc),
    HISTORY_MEMBERSHIP_PORT: String(ports.historyMembership),
    MATCHING_GRPC_PORT: String(ports.matchingGrpc),
    MATCHING_MEMBERSHIP_PORT: String(ports.matchingMembership),
    WORKER_GRPC_PORT: String(ports.workerGrpc),
    WORKER_MEMBERSHIP_PORT: String(ports.workerMembership),
  };
}

export interface TemporalClusterOptions {
  /** Server processes, each running every service. @default 2 */
  servers?: number;
  /** The namespace created by deploy/create-namespace.sh. @default 'default' */
  namespace?: string;
  /** Values added to the dynamic config file (e.g. `{ 'history.maxInFlightUpdates': 1000 }` for a benchmark). */
  dynamicConfig?: Record<string, unknown>;
  /** Server log level. @default 'warn' */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** How long each server may take to answer health checks. @default 120000 */
  startTimeoutMs?: number;
}

export interface ClusterServer {
  readonly index: number;
  readonly ports: ServerPorts;
  /** 127.0.0.1:<frontend gRPC port> of this process. */
  readonly frontendAddress: string;
  /** 127.0.0.1:<history gRPC port>: how the cluster's membership names this process's history service. */
  readonly historyAddress: string;
  readonly running: boolean;
  /** The server process's pid while it runs. */
  readonly pid: number | undefined;
  /** Output of the current (or last) process, for failure messages. */
  output(): string;
}

/**
 * A production-shaped Temporal cluster on this machine: PostgreSQL of its own, N `temporal-server` processes
 * (every service in each, membership through the database), a TCP load balancer in front of their frontends,
 * and the namespace plus groupsnap's search attributes created by the compose file's script.
 */
export interface TemporalCluster {
  /** The load balancer's host:port: what clients and workers connect to. */
  readonly address: string;
  readonly namespace: string;
  readonly servers: readonly ClusterServer[];
  readonly postgres: PrivatePostgres;
  readonly balancer: TcpBalancer;
  /** Temp dir with the data, configs and logs (`server-<i>.log`, `pg/postgres.log`). */
  readonly dir: string;
  /** `kill -9` of one server process (a crash); resolves once it is gone. */
  killServer(index: number): Promise<void>;
  /** Orderly stop of one server process. */
  stopServer(index: number): Promise<void>;
  /** Starts a stopped or killed server process again on its ports; resolves once its frontend is healthy. */
  startServer(index: number): Promise<void>;
  /** Stops everything and removes the temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

/** Folder of the server build (bin/, config/docker.yaml, schema/), built once by scripts/ensure-temporal-server.sh. */
export async function temporalServerHome(): Promise<string> {
  const { stdout } = await run('bash', [join(REPO_ROOT, 'scripts/ensure-temporal-server.sh')], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return stdout.trim();
}

async function serverPorts(): Promise<ServerPorts> {
  const keys: (keyof ServerPorts)[] = [
    'frontendGrpc',
    'frontendHttp',
    'frontendMembership',
    'historyGrpc',
    'historyMembership',
    'matchingGrpc',
    'matchingMembership',
    'workerGrpc',
    'workerMembership',
  ];
  const ports = new Set<number>();
  // Below the kernel's ephemeral range: the SQL schema stores membership ports as smallint (at most 32767).
  while (ports.size < keys.length) ports.add(await freePortIn(20000, 32767));
  const list = [...ports];
  return Object.fromEntries(keys.map((k, i) => [k, list[i]])) as unknown as ServerPorts;
}

async function waitFrontend(address: string, timeoutMs: number, proc: SupervisedProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (proc.done) throw new Error(`temporal-server exited before becoming healthy:\n${proc.output()}`);
    let connection: Connection | undefined;
    try {
      connection = await Connection.connect({ address, connectTimeout: 1000 });
      const res = await connection.healthService.check({});
      if (res.status === 1) {
        await connection.workflowService.getSystemInfo({});
        return;
      }
    } catch (err) {
      lastError = err;
    } finally {
      await connection?.close();
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `temporal-server at ${address} not healthy after ${timeoutMs} ms: ${String(lastError)}\n${proc.output()}`,
  );
}

/** Waits until `namespace` answers and has every search attribute groupsnap uses, on the frontend at `address`. */
async function waitNamespaceReady(address: string, namespace: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const connection = await Connection.connect({ address });
  try {
    for (;;) {
      try {
        await connection.workflowService.describeNamespace({ namespace });
        const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
        const missing = Object.keys(SEARCH_ATTRIBUTES).filter((k) => !(k in (customAttributes ?? {})));
        if (missing.length === 0) return;
        if (Date.now() > deadline) throw new Error(`search attributes missing in ${namespace}: ${missing.join(', ')}`);
      } catch (err) {
        if (Date.now() > deadline) throw err;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    await connection.close();
  }
}

/**
 * Starts PostgreSQL, sets up Temporal's schemas with deploy/setup-postgres.sh, starts the server processes from
 * the release's config template with the compose file's settings, puts a load balancer in front of them and runs
 * deploy/create-namespace.sh through it.
 * @throws Error with the failing step's output (a server that exits, a script that fails).
 */
export async function startTemporalCluster(options: TemporalClusterOptions = {}): Promise<TemporalCluster> {
  const home = await temporalServerHome();
  const cli = temporalCliPath();
  const dir = await mkdtemp(join(tmpdir(), 'groupsnap-cluster-'));
  // PostgreSQL runs as the `postgres` user, in pg/ below: it must be able to pass through this folder.
  await chmod(dir, 0o711);
  const namespace = options.namespace ?? CLUSTER_NAMESPACE;
  const count = options.servers ?? 2;
  const startTimeoutMs = options.startTimeoutMs ?? 120_000;
  const processes: (SupervisedProcess | undefined)[] = [];
  let postgres: PrivatePostgres | undefined;
  let balancer: TcpBalancer | undefined;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await balancer?.close();
    await Promise.all(processes.map((p) => p?.stop()));
    await postgres?.stop();
    // PostgreSQL's last files can still be settling when its postmaster has just exited.
    await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
  };
  try {
    postgres = await startPrivatePostgres({ dir: join(dir, 'pg') });
    const pg = postgres;
    const path = `${join(home, 'bin')}:${dirname(cli)}:${process.env.PATH ?? ''}`;
    await run('sh', [join(REPO_ROOT, CLUSTER_DEPLOY_FILES.schema)], {
      env: {
        ...process.env,
        PATH: path,
        POSTGRES_SEEDS: pg.host,
        DB_PORT: String(pg.port),
        POSTGRES_USER: pg.user,
        POSTGRES_PWD: pg.password,
        TEMPORAL_SCHEMA_DIR: join(home, 'schema'),
      },
      maxBuffer: 64 * 1024 * 1024,
    }).catch((err: { stderr?: string; stdout?: string }) => {
      throw new Error(`${CLUSTER_DEPLOY_FILES.schema} failed:\n${err.stdout ?? ''}${err.stderr ?? String(err)}`);
    });
    let dynamicConfigFile = join(REPO_ROOT, CLUSTER_DEPLOY_FILES.dynamicConfig);
    if (options.dynamicConfig && Object.keys(options.dynamicConfig).length > 0) {
      const extra = Object.entries(options.dynamicConfig).map(([k, v]) => `${k}:\n  - value: ${JSON.stringify(v)}\n`);
      dynamicConfigFile = join(dir, 'dynamicconfig.yaml');
      writeFileSync(
        dynamicConfigFile,
        readFileSync(join(REPO_ROOT, CLUSTER_DEPLOY_FILES.dynamicConfig), 'utf8') + extra.join(''),
      );
    }
    const servers = await Promise.all(
      Array.from({ length: count }, async (_, index) => {
        const ports = await serverPorts();
        return { index, ports, env: serverEnvironment(pg, ports, dynamicConfigFile) };
      }),
    );
    const startServer = async (index: number) => {
      const s = servers[index];
      if (processes[index] && !processes[index]!.done) return;
      const proc = await startSupervised(
        join(home, 'bin', 'temporal-server'),
        ['--root', home, '--config', 'config', '--env', 'docker', '--allow-no-auth', 'start'],
        {
          env: { ...process.env, ...s.env, LOG_LEVEL: options.logLevel ?? 'warn' },
          cwd: dir,
          logFile: join(dir, `server-${index}.log`),
        },
      );
      processes[index] = proc;
      await waitFrontend(`127.0.0.1:${s.ports.frontendGrpc}`, startTimeoutMs, proc);
    };
    // The first process initialises the cluster's metadata in the database; the others join it.
    await startServer(0);
    await Promise.all(servers.slice(1).map((s) => startServer(s.index)));
    const live = () =>
      servers
        .filter((s) => processes[s.index] && !processes[s.index]!.done)
        .map((s) => `127.0.0.1:${s.ports.frontendGrpc}`);
    balancer = await startTcpBalancer(live);
    const address = balancer.address;
    const created = await run('sh', [join(REPO_ROOT, CLUSTER_DEPLOY_FILES.namespace)], {
      env: { ...process.env, PATH: path, TEMPORAL_ADDRESS: address, DEFAULT_NAMESPACE: namespace },
    }).catch((err: { stderr?: string; stdout?: string }) => {
      throw new Error(`${CLUSTER_DEPLOY_FILES.namespace} failed:\n${err.stdout ?? ''}${err.stderr ?? String(err)}`);
    });
    if (process.env.GROUPSNAP_CLUSTER_DEBUG) console.error(created.stderr);
    // Each frontend caches namespaces: wait until every one of them knows the new namespace and its attributes.
    for (const frontend of live()) await waitNamespaceReady(frontend, namespace, 60_000);
    return {
      address,
      namespace,
      postgres,
      balancer,
      dir,
      servers: servers.map((s) => ({
        index: s.index,
        ports: s.ports,
        frontendAddress: `127.0.0.1:${s.ports.frontendGrpc}`,
        historyAddress: `127.0.0.1:${s.ports.historyGrpc}`,
        get running() {
          return processes[s.index] !== undefined && !processes[s.index]!.done;
        },
        get pid() {
          const p = processes[s.index];
          return p && !p.done ? p.pid : undefined;
        },
        output: () => processes[s.index]?.output() ?? '',
      })),
      killServer: async (index) => {
        await processes[index]?.kill9();
      },
      stopServer: async (index) => {
        await processes[index]?.stop();
      },
      startServer,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

// `node dist/dev/temporal-cluster.js` runs the cluster until Ctrl-C (e.g. to try groupsnap against it by hand).
if (require.main === module) {
  void (async () => {
    const cluster = await startTemporalCluster();
    console.log(`Temporal cluster at ${cluster.address} (namespace ${cluster.namespace}); logs in ${cluster.dir}`);
    for (const s of cluster.servers) console.log(`  server ${s.index}: frontend ${s.frontendAddress}, pid ${s.pid}`);
    console.log(`  PostgreSQL on 127.0.0.1:${cluster.postgres.port}; Ctrl-C stops everything`);
    const stop = () => void cluster.stop().then(() => process.exit(0));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  })().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

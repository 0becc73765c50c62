import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, PutBucketPolicyCommand, S3Client } from '@aws-sdk/client-s3';
import { freePort } from './free-port';
import { REPO_ROOT } from './tools';

/** Path of versitygw: `$VERSITYGW`, one on PATH, or the pinned version built once into `.tools/`. */
export function versitygwPath(): string {
  try {
    return execFileSync('bash', [join(REPO_ROOT, 'scripts/ensure-versitygw.sh')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    }).trim();
  } catch {
    throw new Error('no versitygw available (scripts/ensure-versitygw.sh failed; see its message above)');
  }
}

// Stops the gateway when the parent process dies without calling stop() (as dev/temporal-dev-server.ts does).
const WATCHDOG = `
parent=$1; shift
"$@" & server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server; exit $?' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1 & wait $!; done
kill -TERM $server 2>/dev/null
wait $server
`;

export interface S3ServerOptions {
  /** Directory of the posix backend (buckets are its subdirectories). @default a new temp dir, removed by stop() */
  dir?: string;
  /** @default a free port */
  port?: number;
  /**
   * The address it listens on, e.g. the hypervisor hosts' bridge address, which the hosts' namespaces reach directly
   * (no forwarder in between, as a benchmark comparing clients of it wants). @default 127.0.0.1
   */
  host?: string;
  /**
   * Accounts besides root (versitygw's internal IAM, `--iam-dir`, in a temp dir of its own): {@link createUser},
   * and buckets owned by one ({@link createBucket} with an owner). A plain user reaches only its own buckets.
   */
  iam?: boolean;
  /**
   * Versioning and Object Lock (`--versioning-dir`, a directory beside `dir`, removed by stop()), with {@link iam}
   * (accounts whose rights bucket policies grant). @default false
   */
  objectLock?: boolean;
}

/**
 * A real S3 server for tests, the demo and benchmarks: versitygw with its posix backend, on 127.0.0.1, with
 * random root credentials. `env` holds the standard AWS variables pointing at it.
 */
export class S3Server {
  readonly accessKey = `gs${randomBytes(6).toString('hex')}`;
  readonly secretKey = randomBytes(18).toString('base64url');
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stderr = '';

  private iamDir: string | undefined;

  private constructor(
    readonly port: number,
    readonly host: string,
    readonly dir: string,
    private readonly ownsDir: boolean,
    private readonly objectLock = false,
  ) {}

  /** Where versions are kept (`--versioning-dir`) with {@link S3ServerOptions.objectLock}. */
  get versionsDir(): string {
    return `${this.dir}.versions`;
  }

  get endpoint(): string {
    return `http://${this.host}:${this.port}`;
  }

  /** `AWS_*` variables for a client of this server (path-style is implied by an explicit endpoint in groupsnap). */
  get env(): Record<string, string> {
    return {
      AWS_ACCESS_KEY_ID: this.accessKey,
      AWS_SECRET_ACCESS_KEY: this.secretKey,
      AWS_REGION: 'us-east-1',
      AWS_ENDPOINT_URL_S3: this.endpoint,
    };
  }

  static async start(options: S3ServerOptions = {}): Promise<S3Server> {
    const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'groupsnap-s3-')));
    const server = new S3Server(
      options.port ?? (await freePort()),
      options.host ?? '127.0.0.1',
      dir,
      options.dir === undefined,
      Boolean(options.objectLock),
    );
    if (options.iam || options.objectLock) server.iamDir = await mkdtemp(join(tmpdir(), 'groupsnap-s3-iam-'));
    if (options.objectLock) await mkdir(server.versionsDir, { recursive: true });
    try {
      await server.resume();
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  /** Starts the gateway again after {@link kill} (same port, credentials and data). */
  async resume(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) return;
    const bin = versitygwPath();
    const child = spawn(
      'bash',
      [
        '-c',
        WATCHDOG,
        'versitygw',
        String(process.pid),
        bin,
        '--port',
        `${this.host}:${this.port}`,
        ...(this.iamDir ? ['--iam-dir', this.iamDir] : []),
        'posix',
        ...(this.objectLock ? ['--versioning-dir', this.versionsDir] : []),
        this.dir,
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, ROOT_ACCESS_KEY: this.accessKey, ROOT_SECRET_KEY: this.secretKey },
      },
    );
    this.child = child;
    child.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-8192)));
    this.exited = new Promise((r) => child.once('exit', () => r()));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`versitygw exited (${child.exitCode}):\n${this.stderr}`);
      if (await listening(this.host, this.port)) return;
      if (Date.now() > deadline) throw new Error(`versitygw not listening on ${this.port} after 30 s:\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Stops the gateway abruptly (an S3 outage); {@link resume} brings it back with its data. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }

  /** A client of this server (path-style), as root or with another account's keys. */
  client(credentials = { accessKeyId: this.accessKey, secretAccessKey: this.secretKey }): S3Client {
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    return new S3Client({ endpoint: this.endpoint, region: 'us-east-1', forcePathStyle: true, credentials });
  }

  async putBucketPolicy(bucket: string, policy: unknown): Promise<void> {
    const c = this.client();
    try {
      await c.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
    } finally {
      c.destroy();
    }
  }

  /** A new account (role `user`: its own buckets only) with random keys; needs `iam`. */
  async createUser(): Promise<{ accessKeyId: string; secretAccessKey: string }> {
    const user = {
      accessKeyId: `gu${randomBytes(6).toString('hex')}`,
      secretAccessKey: randomBytes(18).toString('base64url'),
    };
    this.admin(['create-user', '--access', user.accessKeyId, '--secret', user.secretAccessKey, '--role', 'user']);
    return user;
  }

  /** `versitygw admin <args>` with root's credentials against this server. */
  private admin(args: string[]): void {
    if (!this.iamDir) throw new Error('S3Server: accounts need { iam: true }');
    execFileSync(
      versitygwPath(),
      ['admin', '--access', this.accessKey, '--secret', this.secretKey, '--endpoint-url', this.endpoint, ...args],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
  }

  /** Creates a bucket, owned by root or by `owner` (an access key id of {@link createUser}). */
  async createBucket(name: string, owner?: string): Promise<void> {
    if (owner) {
      this.admin(['create-bucket', '--owner', owner, '--bucket', name]);
      return;
    }
    const c = this.client();
    try {
      await c.send(new CreateBucketCommand({ Bucket: name }));
    } finally {
      c.destroy();
    }
  }

  /** Stops the gateway and removes its data (when the dir was its own). */
  async stop(): Promise<void> {
    await this.kill();
    if (this.ownsDir) await rm(this.dir, { recursive: true, force: true });
    if (this.iamDir) await rm(this.iamDir, { recursive: true, force: true });
    if (this.objectLock) await rm(this.versionsDir, { recursive: true, force: true });
  }
}

function listening(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, host, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

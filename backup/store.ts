import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import {
  CopyObjectCommand,
  CreateBucketCommand,
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  ListObjectVersionsCommand,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  S3ServiceException,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import {
  BucketNotFoundError,
  DamagedObjectError,
  ObjectLockedError,
  RepositoryError,
  RepositoryInputError,
  StoreAccessDeniedError,
  TransientStoreError,
} from './errors';
import { s3ConfigFor } from './credentials';
import { ThreadNetworkError, type SignedGet, type ThreadGetReply } from './seal-pool';

/** One object of a listing. */
export interface StoredObject {
  /** Key relative to the repository's root (no leading slash). */
  key: string;
  size: number;
  lastModified: Date;
}

/**
 * The few calls the repository makes on object storage, relative to the repository's root. Implementations map
 * "not found" to `undefined`/`false` and other failures to {@link RepositoryError}s (or rethrow transient ones).
 */
export interface ObjectStore {
  /** The repository URL, for messages. */
  readonly url: string;
  /** Fails with a clear error when the bucket/directory that should hold the repository does not exist. */
  checkLocation(): Promise<void>;
  /**
   * The whole object, or `undefined` when absent. With `maxBytes`, an object larger than that is refused
   * ({@link ObjectTooLargeError}) from its size (stat, Content-Length) before its body is read, and a body that
   * turns out longer while it streams is cut off there.
   */
  get(key: string, opts?: GetOptions): Promise<Buffer | undefined>;
  /**
   * Writes the whole object at once: readers see the old object, no object, or the new one, never part. `digests`
   * of `body`, when the caller has them, save the store computing them again.
   */
  put(key: string, body: Buffer, digests?: BodyDigests): Promise<void>;
  exists(key: string): Promise<boolean>;
  /**
   * Creates the object only if no object has the key (S3 `If-None-Match: *`, O_EXCL on a file system): `false`
   * when one exists. Stores that cannot do it atomically leave it out (callers then check and put, racily).
   */
  putIfAbsent?(key: string, body: Buffer): Promise<boolean>;
  /** Every object whose key starts with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<StoredObject>;
  /** Removes an object; no error when it is already gone. */
  delete(key: string): Promise<void>;
  close(): void;
  /** Object Lock and versions: only on stores that can lock objects (S3 with Object Lock; never a directory). */
  readonly locking?: LockingStore;
}

/** Object Lock retention modes (S3 `COMPLIANCE`: nobody shortens it; `GOVERNANCE`: only with bypass rights). */
export type LockMode = 'compliance' | 'governance';

/** An object version's retention. */
export interface ObjectRetention {
  mode: LockMode;
  until: Date;
}

/** One version of an object (or a delete marker) in a versioned bucket. */
export interface ObjectVersion {
  key: string;
  versionId: string;
  latest: boolean;
  deleteMarker: boolean;
  lastModified: Date;
  size: number;
  etag?: string;
}

/**
 * What a repository with Object Lock needs of its store (docs/repository-format.md, "Object Lock"): locked,
 * write-once puts, retention extension, and (admin side) versions: listing, reading, bringing one back, deleting.
 */
export interface LockingStore {
  /** Whether the bucket has Object Lock and versioning enabled. */
  bucketLock(): Promise<{ objectLock: boolean; versioning: boolean }>;
  /** Creates the bucket with Object Lock (and so versioning) enabled. */
  createLockedBucket(): Promise<void>;
  /** PutObject with `If-None-Match: *` and the retention: `false` when the key exists (nothing written). */
  putLocked(key: string, body: Buffer, retention: ObjectRetention, digests?: BodyDigests): Promise<boolean>;
  /** PutObjectRetention of the current version (or `versionId`). */
  setRetention(key: string, retention: ObjectRetention, versionId?: string): Promise<void>;
  /** GetObjectRetention: `undefined` when the version has none (or the object is gone). */
  retention(key: string, versionId?: string): Promise<ObjectRetention | undefined>;
  /** Every version and delete marker under `prefix` (ListObjectVersions). */
  listVersions(prefix: string): AsyncIterable<ObjectVersion>;
  getVersion(key: string, versionId: string, opts?: GetOptions): Promise<Buffer | undefined>;
  /** Makes a copy of an old version the current one (server-side CopyObject), locked with `retention` if given. */
  restoreVersion(key: string, versionId: string, retention?: ObjectRetention): Promise<void>;
  /** Deletes one version for good. @throws ObjectLockedError while its lock holds */
  deleteVersion(key: string, versionId: string): Promise<void>;
}

/** Options of {@link ObjectStore.get}. */
export interface GetOptions {
  /** Largest object accepted, in bytes. */
  maxBytes?: number;
}

/** An object is larger than any legitimate object of its kind: it is refused unread. */
export class ObjectTooLargeError extends DamagedObjectError {
  override readonly name: string = 'ObjectTooLargeError';
  constructor(key: string, size: number | undefined, maxBytes: number) {
    super(
      key,
      'corrupt',
      `${size === undefined ? 'more than' : `${size} bytes,`} larger than the ${maxBytes} bytes an object of its kind can be`,
    );
  }
}

/** Digests of an object's body computed off the main thread (./seal-pool.ts). */
export interface BodyDigests {
  /** SHA-256, hex: the SigV4 payload hash. */
  sha256?: string;
  /** CRC32, base64 of the big-endian value: the S3 flexible checksum. */
  crc32?: string;
}

/** A repository URL taken apart. */
export type RepositoryLocation =
  | { kind: 's3'; url: string; bucket: string; prefix: string; endpoint?: string }
  | { kind: 'file'; url: string; path: string };

/**
 * Parses `s3://bucket[/prefix]` or `file:///absolute/path`. An `?endpoint=` is returned as given; {@link openStore}
 * accepts it only when it is the host's own endpoint.
 * @throws RepositoryInputError on anything else
 */
export function parseRepositoryUrl(url: string): RepositoryLocation {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RepositoryInputError(`repository URL '${url}' is not a URL (use s3://bucket/prefix or file:///path)`);
  }
  if (u.protocol === 's3:') {
    const bucket = u.hostname;
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      throw new RepositoryInputError(`repository URL '${url}': '${bucket}' is not a valid bucket name`);
    }
    let path: string;
    try {
      path = decodeURIComponent(u.pathname);
    } catch {
      throw new RepositoryInputError(`repository URL '${url}': its path is not validly %-encoded`);
    }
    const prefix = path.replace(/^\/+|\/+$/g, '');
    const endpoint = u.searchParams.get('endpoint') ?? undefined;
    return { kind: 's3', url, bucket, prefix: prefix ? `${prefix}/` : '', ...(endpoint ? { endpoint } : {}) };
  }
  if (u.protocol === 'file:') {
    if (u.host !== '' && u.host !== 'localhost') {
      throw new RepositoryInputError(`repository URL '${url}': a file URL names a local path (file:///path)`);
    }
    let path: string;
    try {
      path = fileURLToPath(u).replace(/\/+$/, '') || '/';
    } catch {
      throw new RepositoryInputError(`repository URL '${url}': its path is not validly %-encoded`);
    }
    return { kind: 'file', url, path };
  }
  throw new RepositoryInputError(`repository URL '${url}': use s3://bucket/prefix or file:///path`);
}

/**
 * The S3 endpoint of this host's own configuration: `s3Config.endpoint` (set by code on the host), else
 * `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; `undefined` for AWS itself.
 */
export function hostS3Endpoint(s3Config: S3ClientConfig = {}): string | undefined {
  const e = s3Config.endpoint;
  if (typeof e === 'string') return e;
  if (e && typeof e === 'object' && 'href' in e) return String((e as unknown as URL).href);
  return process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL ?? undefined;
}

function sameEndpoint(a: string, b: string): boolean {
  try {
    return new URL(a).href.replace(/\/+$/, '') === new URL(b).href.replace(/\/+$/, '');
  } catch {
    return false;
  }
}

/**
 * Opens the object store of a repository URL. Nothing is contacted yet. The S3 endpoint comes only from this
 * host's configuration ({@link hostS3Endpoint}): a URL's `?endpoint=` (from a workflow's or a Nexus caller's
 * input) would make the host sign requests to any server, so one that differs from the host's is refused.
 * @throws RepositoryInputError on a bad URL or a foreign endpoint
 */
export function openStore(url: string, config: S3ClientConfig = {}): ObjectStore {
  const loc = parseRepositoryUrl(url);
  if (loc.kind === 'file') return new FileStore(loc.url, loc.path);
  // This machine's settings for this very repository (another bucket's own credentials, ./credentials.ts) first.
  const s3Config = { ...s3ConfigFor(url), ...config };
  const own = hostS3Endpoint(s3Config);
  if (loc.endpoint !== undefined && (own === undefined || !sameEndpoint(loc.endpoint, own))) {
    throw new RepositoryInputError(
      `repository URL '${url}': endpoint ${loc.endpoint} is not this host's S3 endpoint ` +
        `(${own ?? 'AWS'}); endpoints come from the host's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, not the URL`,
    );
  }
  const { endpoint: _ignored, ...rest } = loc;
  void _ignored;
  return new S3Store(rest, s3Config);
}

// ---------------------------------------------------------------------------------------------------------------

/** A repository in a directory (local disk, NFS): one file per object, written to a temporary name then renamed. */
export class FileStore implements ObjectStore {
  constructor(
    readonly url: string,
    readonly root: string,
  ) {}

  private path(key: string): string {
    return join(this.root, ...key.split('/'));
  }

  async checkLocation(): Promise<void> {
    try {
      await stat(dirname(this.root));
    } catch (err) {
      throw this.translate(err, 'parent directory');
    }
  }

  async get(key: string, opts: GetOptions = {}): Promise<Buffer | undefined> {
    let fh;
    try {
      fh = await open(this.path(key), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw this.translate(err, key);
    }
    try {
      const max = opts.maxBytes ?? Number.MAX_SAFE_INTEGER;
      const size = (await fh.stat()).size;
      if (size > max) throw new ObjectTooLargeError(key, size, max);
      // Read at most one byte past the size seen: a file growing meanwhile is refused, not read on.
      const out = Buffer.allocUnsafe(Math.min(size + 1, max + 1));
      let pos = 0;
      for (;;) {
        const { bytesRead } = await fh.read(out, pos, out.length - pos, pos);
        if (bytesRead === 0) break;
        pos += bytesRead;
        if (pos === out.length) break;
      }
      if (pos > max) throw new ObjectTooLargeError(key, undefined, max);
      return pos === out.length ? out : out.subarray(0, pos);
    } catch (err) {
      if (err instanceof RepositoryError) throw err;
      throw this.translate(err, key);
    } finally {
      await fh.close();
    }
  }

  async put(key: string, body: Buffer): Promise<void> {
    const file = this.path(key);
    const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      await mkdir(dirname(file), { recursive: true });
      const fh = await open(tmp, 'w');
      try {
        await fh.writeFile(body);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw this.translate(err, key);
    }
  }

  /** Writes a temporary file, then hard-links it to the key's name: `link` fails if the name exists (atomic). */
  async putIfAbsent(key: string, body: Buffer): Promise<boolean> {
    const file = this.path(key);
    const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      await mkdir(dirname(file), { recursive: true });
      const fh = await open(tmp, 'wx');
      try {
        await fh.writeFile(body);
        await fh.sync();
      } finally {
        await fh.close();
      }
      try {
        await link(tmp, file);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
        throw err;
      }
    } catch (err) {
      throw this.translate(err, key);
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }

  async exists(key: string): Promise<boolean> {
    try {
      await stat(this.path(key));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw this.translate(err, key);
    }
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    // Walk the directory the prefix names (or its parent, when the prefix ends inside a name).
    const slash = prefix.lastIndexOf('/');
    const dirKey = slash < 0 ? '' : prefix.slice(0, slash);
    const start = dirKey ? this.path(dirKey) : this.root;
    const stack = [start];
    while (stack.length > 0) {
      const dir = stack.pop() as string;
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw this.translate(err, dir);
      }
      for (const e of entries) {
        const full = join(dir, e.name);
        if (e.isDirectory()) {
          stack.push(full);
          continue;
        }
        if (!e.isFile() || e.name.includes('.tmp-')) continue;
        const key = full
          .slice(this.root.length + 1)
          .split(sep)
          .join('/');
        if (!key.startsWith(prefix)) continue;
        try {
          const st = await stat(full);
          yield { key, size: st.size, lastModified: st.mtime };
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw this.translate(err, key);
        }
      }
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await rm(this.path(key), { force: true });
    } catch (err) {
      throw this.translate(err, key);
    }
  }

  close(): void {}

  private translate(err: unknown, what: string): Error {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EACCES' || e.code === 'EPERM') return new StoreAccessDeniedError(this.url, `${what}: ${e.message}`);
    if (e.code === 'ENOENT') return new BucketNotFoundError(this.url, `${what}: ${e.message}`);
    // EIO, ESTALE (NFS), ENOSPC, ...: a retry may succeed.
    return new TransientStoreError(`${this.url} ${what}: ${e.code ?? ''} ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * A repository under a prefix of an S3 bucket, through `@aws-sdk/client-s3` with the standard AWS settings
 * (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, profiles).
 * With an explicit endpoint (an S3 gateway), path-style addressing is used.
 */
export class S3Store implements ObjectStore {
  readonly url: string;
  readonly client: S3Client;
  private readonly clientConfig: S3ClientConfig;
  private readonly bucket: string;
  private readonly prefix: string;

  readonly locking: LockingStore;

  constructor(loc: Extract<RepositoryLocation, { kind: 's3' }>, config: S3ClientConfig = {}) {
    this.locking = new S3Locking(this, (key) => this.prefix + key, loc.bucket);
    this.url = loc.url;
    this.bucket = loc.bucket;
    this.prefix = loc.prefix;
    // groupsnap supports Node >= 20 and pins the SDK: its notice about future SDK releases needing Node 22 is noise.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const endpoint = loc.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
    this.clientConfig = {
      region: process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      ...(endpoint ? { endpoint, forcePathStyle: true } : {}),
      maxAttempts: 4,
      ...config,
    };
    this.client = new S3Client(this.clientConfig);
  }

  async checkLocation(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      throw this.translate(err, `bucket ${this.bucket}`);
    }
  }

  async get(key: string, opts: GetOptions = {}): Promise<Buffer | undefined> {
    // Chunks are authenticated end to end (AES-GCM, then their keyed hash; Repository.readChunk re-reads one that
    // fails once), so their reads skip the SDK's CRC32 of the response, a main-thread pass over every byte that
    // catches nothing those checks miss. Everything else (config, manifests, locks) keeps it.
    const chunk = key.startsWith('chunks/');
    const client = chunk ? this.chunkClient() : this.client;
    const max = opts.maxBytes ?? Number.MAX_SAFE_INTEGER;
    for (let attempt = 1; ; attempt++) {
      try {
        const out = await client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
        if (out.ContentLength !== undefined && out.ContentLength > max) {
          // Refused from its length: the body is dropped unread (the connection closes instead of draining it).
          discardBody(out.Body);
          throw new ObjectTooLargeError(key, out.ContentLength, max);
        }
        return await collectBody(out.Body, out.ContentLength, max, key);
      } catch (err) {
        if (err instanceof RepositoryError) throw err;
        if (isNotFound(err)) return undefined;
        // The SDK checks the object's stored checksum: a mismatch twice over is damage at rest, not transit.
        if (err instanceof Error && /checksum mismatch/i.test(err.message)) {
          if (attempt < 2) continue;
          throw new DamagedObjectError(key, 'corrupt', err.message);
        }
        throw this.translate(err, key);
      }
    }
  }

  private chunkReads?: S3Client;

  /** The client chunk reads use: the same settings without response checksum validation. */
  private chunkClient(): S3Client {
    return (this.chunkReads ??= new S3Client({ ...this.clientConfig, responseChecksumValidation: 'WHEN_REQUIRED' }));
  }

  private threadReads?: S3Client;

  /** Whether {@link getOnThread} can be used: not with a request handler of the caller's (tests' fault injection). */
  get threadGets(): boolean {
    return this.clientConfig.requestHandler === undefined;
  }

  /**
   * A chunk object read and opened on a thread (the repository's seal pool): this store's client builds and signs
   * the GET (credentials, endpoint, retries, error parsing: all the SDK's, as {@link get}), and its request handler
   * hands the signed request to `send`, which sends it from a thread that also opens the body. Without response
   * checksum validation, as {@link chunkClient}.
   * @returns the opened chunk, or `undefined` when the object does not exist
   * @throws ObjectTooLargeError for an object larger than `maxBytes` (from its Content-Length, unread); what `send`
   * throws on opening (damage); the errors of {@link get}
   */
  async getOnThread(key: string, maxBytes: number, send: ThreadSend): Promise<Buffer | undefined> {
    const client = (this.threadReads ??= new S3Client({
      ...this.clientConfig,
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: new ThreadRequestHandler(),
    }));
    const ctx: ThreadGetContext = { send };
    try {
      const out = await client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }), {
        [THREAD_GET]: ctx,
      } as HandlerOptions);
      discardBody(out.Body);
    } catch (err) {
      if (ctx.failure !== undefined) throw ctx.failure;
      if (err instanceof RepositoryError) throw err;
      if (isNotFound(err)) return undefined;
      throw this.translate(err, key);
    }
    if (ctx.failure !== undefined) throw ctx.failure;
    const got = ctx.reply;
    if (got?.tooLarge !== undefined)
      throw new ObjectTooLargeError(key, got.tooLarge < 0 ? undefined : got.tooLarge, maxBytes);
    if (!got?.plain) throw new TransientStoreError(`S3 response for ${key} brought no content`);
    return got.plain;
  }

  async put(key: string, body: Buffer, digests: BodyDigests = {}): Promise<void> {
    try {
      await this.putObject(key, body, digests);
    } catch (err) {
      throw this.translate(err, key);
    }
  }

  /**
   * PutObject with the digests computed elsewhere (and the extra fields: a condition, a lock). Errors are the SDK's.
   */
  async putObject(
    key: string,
    body: Buffer,
    digests: BodyDigests,
    extra: Partial<ConstructorParameters<typeof PutObjectCommand>[0]> = {},
  ): Promise<void> {
    const command = new PutObjectCommand({
      Bucket: this.bucket,
      Key: this.prefix + key,
      Body: body,
      // A checksum given is sent as is (the SDK computes CRC32 itself otherwise).
      ...(digests.crc32 ? { ChecksumCRC32: digests.crc32 } : {}),
      ...extra,
    });
    const sha256 = digests.sha256;
    if (sha256) {
      // The signer takes the payload hash from this header instead of hashing the body again.
      command.middlewareStack.add(
        (next) => async (args) => {
          const req = args.request as { headers?: Record<string, string> };
          if (req.headers) req.headers['x-amz-content-sha256'] = sha256;
          return next(args);
        },
        { step: 'build', name: 'groupsnapPayloadHash' },
      );
    }
    await this.client.send(command);
  }

  /** PutObject with `If-None-Match: *`: S3 (and versitygw) refuse it with 412 when the key exists. */
  async putIfAbsent(key: string, body: Buffer): Promise<boolean> {
    try {
      await this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: this.prefix + key, Body: body, IfNoneMatch: '*' }),
      );
      return true;
    } catch (err) {
      const status = err instanceof S3ServiceException ? err.$metadata?.httpStatusCode : undefined;
      // 412: the object exists; 409: a concurrent conditional write to the same key won.
      if (status === 412 || status === 409 || (err as Error).name === 'PreconditionFailed') return false;
      throw this.translate(err, key);
    }
  }

  async exists(key: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw this.translate(err, key);
    }
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    let token: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ContinuationToken: token }),
        );
      } catch (err) {
        throw this.translate(err, `list ${prefix}`);
      }
      for (const o of out.Contents ?? []) {
        if (!o.Key) continue;
        yield { key: o.Key.slice(this.prefix.length), size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0) };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
    } catch (err) {
      if (isNotFound(err)) return;
      throw this.translate(err, key);
    }
  }

  close(): void {
    this.client.destroy();
    this.chunkReads?.destroy();
    this.threadReads?.destroy();
  }

  /** Maps an SDK error to a {@link RepositoryError} (for {@link S3Locking} too). */
  translate(err: unknown, what: string): Error {
    if (err instanceof S3ServiceException) {
      const status = err.$metadata?.httpStatusCode;
      if (status === 403 && /object lock/i.test(err.message)) return new ObjectLockedError(what, err.message);
      if (err.name === 'NoSuchBucket' || (status === 404 && what.startsWith('bucket '))) {
        return new BucketNotFoundError(this.url, `bucket ${this.bucket} does not exist`);
      }
      if (status === 403 || err.name === 'AccessDenied' || err.name === 'InvalidAccessKeyId') {
        return new StoreAccessDeniedError(this.url, `${what}: ${err.name} ${err.message}`);
      }
      if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) {
        // A request the service refuses for good (bad bucket name, invalid argument): not a passing fault.
        return new RepositoryError(`S3 ${what}: ${err.name} (HTTP ${status}) ${err.message}`);
      }
      // 5xx, throttling, timeouts: transient, the caller's retry policy decides.
      return new TransientStoreError(`S3 ${what}: ${err.name} (HTTP ${status ?? '?'}) ${err.message}`);
    }
    if (err instanceof RepositoryError) return err;
    // Network failures (connection refused, reset, timeouts): transient.
    const e = err as NodeJS.ErrnoException;
    return new TransientStoreError(`S3 ${what}: ${e?.code ?? e?.name ?? 'error'} ${e?.message ?? String(err)}`);
  }
}

/** Object Lock over S3 (see {@link LockingStore}). */
class S3Locking implements LockingStore {
  constructor(
    private readonly s3: S3Store,
    private readonly full: (key: string) => string,
    private readonly bucket: string,
  ) {}

  private wrap<T>(what: string, p: Promise<T>): Promise<T> {
    return p.catch((err: unknown) => {
      throw this.s3.translate(err, what);
    });
  }

  async bucketLock(): Promise<{ objectLock: boolean; versioning: boolean }> {
    let objectLock = false;
    try {
      const out = await this.s3.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }));
      objectLock = out.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled';
    } catch (err) {
      const e = this.s3.translate(err, `bucket ${this.bucket}`);
      if (!/ObjectLockConfigurationNotFound/.test((err as Error).name) || !(e instanceof RepositoryError)) throw e;
    }
    const v = await this.wrap(
      `bucket ${this.bucket}`,
      this.s3.client.send(new GetBucketVersioningCommand({ Bucket: this.bucket })),
    );
    return { objectLock, versioning: v.Status === 'Enabled' };
  }

  async createLockedBucket(): Promise<void> {
    await this.wrap(
      `bucket ${this.bucket}`,
      this.s3.client.send(new CreateBucketCommand({ Bucket: this.bucket, ObjectLockEnabledForBucket: true })),
    );
  }

  async putLocked(key: string, body: Buffer, retention: ObjectRetention, digests: BodyDigests = {}): Promise<boolean> {
    try {
      await this.s3.putObject(key, body, digests, {
        IfNoneMatch: '*',
        ObjectLockMode: s3Mode(retention.mode),
        ObjectLockRetainUntilDate: retention.until,
      });
      return true;
    } catch (err) {
      const status = err instanceof S3ServiceException ? err.$metadata?.httpStatusCode : undefined;
      if (status === 412 || status === 409 || (err as Error).name === 'PreconditionFailed') return false;
      throw this.s3.translate(err, key);
    }
  }

  async setRetention(key: string, retention: ObjectRetention, versionId?: string): Promise<void> {
    await this.wrap(
      key,
      this.s3.client.send(
        new PutObjectRetentionCommand({
          Bucket: this.bucket,
          Key: this.full(key),
          ...(versionId ? { VersionId: versionId } : {}),
          Retention: { Mode: s3Mode(retention.mode), RetainUntilDate: retention.until },
        }),
      ),
    );
  }

  async retention(key: string, versionId?: string): Promise<ObjectRetention | undefined> {
    try {
      const out = await this.s3.client.send(
        new GetObjectRetentionCommand({
          Bucket: this.bucket,
          Key: this.full(key),
          ...(versionId ? { VersionId: versionId } : {}),
        }),
      );
      const r = out.Retention;
      if (!r?.Mode || !r.RetainUntilDate) return undefined;
      return { mode: r.Mode === 'COMPLIANCE' ? 'compliance' : 'governance', until: new Date(r.RetainUntilDate) };
    } catch (err) {
      if (isNotFound(err) || /NoSuchObjectLockConfiguration|MethodNotAllowed/.test((err as Error).name))
        return undefined;
      throw this.s3.translate(err, key);
    }
  }

  async *listVersions(prefix: string): AsyncIterable<ObjectVersion> {
    const root = this.full('');
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      const out = await this.wrap(
        `list versions ${prefix}`,
        this.s3.client.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: this.full(prefix),
            ...(keyMarker ? { KeyMarker: keyMarker } : {}),
            ...(versionMarker ? { VersionIdMarker: versionMarker } : {}),
          }),
        ),
      );
      for (const v of out.Versions ?? []) {
        if (!v.Key || !v.VersionId) continue;
        yield {
          key: v.Key.slice(root.length),
          versionId: v.VersionId,
          latest: Boolean(v.IsLatest),
          deleteMarker: false,
          lastModified: v.LastModified ?? new Date(0),
          size: v.Size ?? 0,
          ...(v.ETag ? { etag: v.ETag } : {}),
        };
      }
      for (const m of out.DeleteMarkers ?? []) {
        if (!m.Key || !m.VersionId) continue;
        yield {
          key: m.Key.slice(root.length),
          versionId: m.VersionId,
          latest: Boolean(m.IsLatest),
          deleteMarker: true,
          lastModified: m.LastModified ?? new Date(0),
          size: 0,
        };
      }
      if (!out.IsTruncated) return;
      keyMarker = out.NextKeyMarker;
      versionMarker = out.NextVersionIdMarker;
    }
  }

  async getVersion(key: string, versionId: string, opts: GetOptions = {}): Promise<Buffer | undefined> {
    const max = opts.maxBytes ?? Number.MAX_SAFE_INTEGER;
    try {
      const out = await this.s3.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.full(key), VersionId: versionId }),
      );
      if (out.ContentLength !== undefined && out.ContentLength > max) {
        discardBody(out.Body);
        throw new ObjectTooLargeError(key, out.ContentLength, max);
      }
      return await collectBody(out.Body, out.ContentLength, max, key);
    } catch (err) {
      if (err instanceof RepositoryError) throw err;
      if (isNotFound(err)) return undefined;
      throw this.s3.translate(err, key);
    }
  }

  async restoreVersion(key: string, versionId: string, retention?: ObjectRetention): Promise<void> {
    const source = `${this.bucket}/${this.full(key)}`.split('/').map(encodeURIComponent).join('/');
    await this.wrap(
      key,
      this.s3.client.send(
        new CopyObjectCommand({
          Bucket: this.bucket,
          Key: this.full(key),
          CopySource: `${source}?versionId=${encodeURIComponent(versionId)}`,
          ...(retention ? { ObjectLockMode: s3Mode(retention.mode), ObjectLockRetainUntilDate: retention.until } : {}),
        }),
      ),
    );
  }

  async deleteVersion(key: string, versionId: string): Promise<void> {
    try {
      await this.s3.client.send(
        new DeleteObjectCommand({ Bucket: this.bucket, Key: this.full(key), VersionId: versionId }),
      );
    } catch (err) {
      if (isNotFound(err)) return;
      throw this.s3.translate(err, key);
    }
  }
}

function s3Mode(mode: LockMode): 'COMPLIANCE' | 'GOVERNANCE' {
  return mode === 'compliance' ? 'COMPLIANCE' : 'GOVERNANCE';
}

/** Drops a response body unread: destroying the stream closes the connection instead of reading the rest. */
function discardBody(body: unknown): void {
  const b = body as { destroy?: (err?: Error) => void } | undefined;
  try {
    b?.destroy?.();
  } catch {
    // nothing to release
  }
}

/**
 * A GetObject body as one Buffer: copied once into a buffer of the announced length as it streams in (the SDK's
 * `transformToByteArray` gathers the pieces, then concatenates them, then the caller copied again). Without a
 * length, pieces are gathered up to `max` bytes; either way a body longer than allowed is cut off there.
 */
async function collectBody(body: unknown, length: number | undefined, max: number, key: string): Promise<Buffer> {
  const stream = body as AsyncIterable<Uint8Array>;
  if (typeof stream?.[Symbol.asyncIterator] !== 'function') {
    throw new TransientStoreError(`S3 response for ${key} has no readable body`);
  }
  const limit = length ?? max;
  const out = length !== undefined ? Buffer.allocUnsafeSlow(length) : undefined;
  const pieces: Uint8Array[] = [];
  let pos = 0;
  try {
    for await (const piece of stream) {
      if (pos + piece.length > limit) {
        discardBody(body);
        if (length === undefined) throw new ObjectTooLargeError(key, undefined, max);
        throw new TransientStoreError(`S3 response for ${key} longer than its Content-Length (${length})`);
      }
      if (out) out.set(piece, pos);
      else pieces.push(piece);
      pos += piece.length;
    }
  } catch (err) {
    if (err instanceof RepositoryError) throw err;
    throw new TransientStoreError(`S3 response for ${key} failed after ${pos} bytes: ${(err as Error).message}`);
  }
  if (out) {
    if (pos !== length) throw new TransientStoreError(`S3 response for ${key} ended after ${pos} of ${length} bytes`);
    return out;
  }
  return Buffer.concat(pieces, pos);
}

/** Sends a signed chunk GET from a thread and opens what it brings (./seal-pool.ts `getAndOpen`). */
export type ThreadSend = (req: SignedGet) => Promise<ThreadGetReply>;

/** Where a thread GET's caller and the request handler meet: the send, and what came back. */
interface ThreadGetContext {
  send: ThreadSend;
  reply?: ThreadGetReply;
  /** Opening failed (damage): kept here so the SDK neither retries it nor rewrites it. */
  failure?: unknown;
}

const THREAD_GET = 'groupsnapThreadGet';
type HandlerOptions = Parameters<S3Client['send']>[1];

/**
 * The request handler of {@link S3Store.getOnThread}'s client: the SDK passes `send`'s options to its handler, so
 * each GET carries its context there. A 200 is answered with an empty body (the content was opened on the thread and
 * waits in the context); any other answer is given back whole for the SDK to parse (errors, retries).
 */
class ThreadRequestHandler {
  readonly metadata = { handlerProtocol: 'http/1.1' };

  async handle(
    request: {
      protocol: string;
      hostname: string;
      port?: number;
      method: string;
      path: string;
      query?: Record<string, string | string[] | null>;
      headers: Record<string, string>;
    },
    options: object = {},
  ): Promise<{ response: { statusCode: number; headers: Record<string, string>; body: Readable } }> {
    const ctx = (options as Record<string, unknown>)[THREAD_GET] as ThreadGetContext | undefined;
    if (!ctx) throw new Error('a thread GET without its context');
    const query = queryString(request.query ?? {});
    const signed: SignedGet = {
      protocol: request.protocol,
      hostname: request.hostname.replace(/^\[(.*)\]$/, '$1'),
      ...(request.port !== undefined ? { port: request.port } : {}),
      method: request.method,
      path: query ? `${request.path}?${query}` : request.path,
      headers: request.headers,
    };
    let reply: ThreadGetReply;
    try {
      reply = await ctx.send(signed);
    } catch (err) {
      // In transit (the SDK's retry policy decides), or opening failed: damage, which is the caller's to judge.
      if (err instanceof ThreadNetworkError) throw err;
      ctx.failure = err;
      reply = { status: 200, headers: {} };
    }
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(reply.headers)) {
      if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    if (reply.status === 200) ctx.reply = reply;
    return {
      response: { statusCode: reply.status, headers, body: Readable.from(reply.body ? [reply.body] : []) },
    };
  }

  updateHttpClientConfig(): void {}

  httpHandlerConfigs(): Record<string, never> {
    return {};
  }

  destroy(): void {}
}

/** A request's query as the SDK's node handler sends it (keys sorted, RFC 3986 escaping). */
function queryString(query: Record<string, string | string[] | null>): string {
  const escape = (s: string) =>
    encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  const parts: string[] = [];
  for (const name of Object.keys(query).sort()) {
    const value = query[name];
    if (value === null) parts.push(escape(name));
    else for (const v of Array.isArray(value) ? value : [value]) parts.push(`${escape(name)}=${escape(v)}`);
  }
  return parts.join('&');
}

function isNotFound(err: unknown): boolean {
  if (!(err instanceof S3ServiceException)) return false;
  if (err.name === 'NoSuchBucket') return false;
  return err.name === 'NoSuchKey' || err.name === 'NotFound' || err.$metadata?.httpStatusCode === 404;
}

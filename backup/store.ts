import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import {
  BucketNotFoundError,
  DamagedObjectError,
  RepositoryError,
  RepositoryInputError,
  StoreAccessDeniedError,
} from './errors';

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
  get(key: string): Promise<Buffer | undefined>;
  /**
   * Writes the whole object at once: readers see the old object, no object, or the new one, never part. `digests`
   * of `body`, when the caller has them, save the store computing them again.
   */
  put(key: string, body: Buffer, digests?: BodyDigests): Promise<void>;
  exists(key: string): Promise<boolean>;
  /** Every object whose key starts with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<StoredObject>;
  /** Removes an object; no error when it is already gone. */
  delete(key: string): Promise<void>;
  close(): void;
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
 * Parses `s3://bucket[/prefix]` (endpoint from `?endpoint=` or the AWS environment) or `file:///absolute/path`.
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
    const prefix = decodeURIComponent(u.pathname).replace(/^\/+|\/+$/g, '');
    const endpoint = u.searchParams.get('endpoint') ?? undefined;
    return { kind: 's3', url, bucket, prefix: prefix ? `${prefix}/` : '', ...(endpoint ? { endpoint } : {}) };
  }
  if (u.protocol === 'file:') {
    if (u.host !== '' && u.host !== 'localhost') {
      throw new RepositoryInputError(`repository URL '${url}': a file URL names a local path (file:///path)`);
    }
    const path = fileURLToPath(u).replace(/\/+$/, '') || '/';
    return { kind: 'file', url, path };
  }
  throw new RepositoryInputError(`repository URL '${url}': use s3://bucket/prefix or file:///path`);
}

/** Opens the object store of a repository URL. Nothing is contacted yet. */
export function openStore(url: string, s3Config: S3ClientConfig = {}): ObjectStore {
  const loc = parseRepositoryUrl(url);
  return loc.kind === 's3' ? new S3Store(loc, s3Config) : new FileStore(loc.url, loc.path);
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

  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.path(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw this.translate(err, key);
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
    return e;
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

  constructor(loc: Extract<RepositoryLocation, { kind: 's3' }>, config: S3ClientConfig = {}) {
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

  async get(key: string): Promise<Buffer | undefined> {
    // Chunks are authenticated end to end (AES-GCM, then their keyed hash; Repository.readChunk re-reads one that
    // fails once), so their reads skip the SDK's CRC32 of the response, a main-thread pass over every byte that
    // catches nothing those checks miss. Everything else (config, manifests, locks) keeps it.
    const chunk = key.startsWith('chunks/');
    const client = chunk ? this.chunkClient() : this.client;
    for (let attempt = 1; ; attempt++) {
      try {
        const out = await client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
        return await collectBody(out.Body, out.ContentLength);
      } catch (err) {
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

  async put(key: string, body: Buffer, digests: BodyDigests = {}): Promise<void> {
    try {
      const command = new PutObjectCommand({
        Bucket: this.bucket,
        Key: this.prefix + key,
        Body: body,
        // A checksum given is sent as is (the SDK computes CRC32 itself otherwise).
        ...(digests.crc32 ? { ChecksumCRC32: digests.crc32 } : {}),
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
    } catch (err) {
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
  }

  private translate(err: unknown, what: string): Error {
    if (err instanceof S3ServiceException) {
      const status = err.$metadata?.httpStatusCode;
      if (err.name === 'NoSuchBucket' || (status === 404 && what.startsWith('bucket '))) {
        return new BucketNotFoundError(this.url, `bucket ${this.bucket} does not exist`);
      }
      if (status === 403 || err.name === 'AccessDenied' || err.name === 'InvalidAccessKeyId') {
        return new StoreAccessDeniedError(this.url, `${what}: ${err.name} ${err.message}`);
      }
      // Other service errors (5xx, throttling) are transient: the caller's retry policy decides.
      return new RepositoryError(`S3 ${what}: ${err.name} (HTTP ${status ?? '?'}) ${err.message}`);
    }
    // Network failures (connection refused, reset, timeouts) stay as they are: retryable.
    return err as Error;
  }
}

/**
 * A GetObject body as one Buffer: copied once into a buffer of the announced length as it streams in (the SDK's
 * `transformToByteArray` gathers the pieces, then concatenates them, then the caller copied again).
 */
async function collectBody(body: unknown, length: number | undefined): Promise<Buffer> {
  const stream = body as AsyncIterable<Uint8Array> & { transformToByteArray?: () => Promise<Uint8Array> };
  if (length === undefined || typeof stream?.[Symbol.asyncIterator] !== 'function') {
    const bytes = await (body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray();
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  const out = Buffer.allocUnsafeSlow(length);
  let pos = 0;
  for await (const piece of stream) {
    if (pos + piece.length > length)
      throw new RepositoryError(`S3 response longer than its Content-Length (${length})`);
    out.set(piece, pos);
    pos += piece.length;
  }
  if (pos !== length) throw new RepositoryError(`S3 response ended after ${pos} of ${length} bytes`);
  return out;
}

function isNotFound(err: unknown): boolean {
  if (!(err instanceof S3ServiceException)) return false;
  if (err.name === 'NoSuchBucket') return false;
  return err.name === 'NoSuchKey' || err.name === 'NotFound' || err.$metadata?.httpStatusCode === 404;
}

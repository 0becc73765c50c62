/**
 * Per-repository S3 settings: a second repository (a copy target, `repo copy`) lives in another bucket, often on
 * another server, with credentials of its own. They come from a file of this machine (never from a URL, a
 * workflow's input or a Nexus request): `GROUPSNAP_S3_CREDENTIALS_FILE`, JSON, mode 0600, mapping repository URLs
 * (`s3://bucket[/prefix]`) to an endpoint, a region and keys. A repository URL takes the entry of the longest URL
 * that is its bucket or a parent prefix of it; a repository without an entry uses the standard AWS settings of the
 * process (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL_S3`, ...), as before.
 *
 * ```json
 * { "s3://dr-copy/shop": { "endpoint": "https://s3.other.example", "region": "eu-west-1",
 *                         "accessKeyId": "AKIA...", "secretAccessKey": "..." } }
 * ```
 */
import { readFileSync, statSync } from 'node:fs';
import type { S3ClientConfig } from '@aws-sdk/client-s3';
import { z } from 'zod';
import { RepositoryInputError } from './errors';

/** Environment variable naming the per-repository credentials file. */
export const S3_CREDENTIALS_FILE_ENV = 'GROUPSNAP_S3_CREDENTIALS_FILE';

const EntrySchema = z.strictObject({
  endpoint: z.url().optional(),
  region: z.string().min(1).max(64).optional(),
  accessKeyId: z.string().min(1).max(256),
  secretAccessKey: z.string().min(1).max(1024),
  sessionToken: z.string().min(1).max(8192).optional(),
});

const FileSchema = z.record(z.string().regex(/^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/.*)?$/), EntrySchema);

export type S3CredentialsEntry = z.infer<typeof EntrySchema>;

/**
 * Reads and checks a credentials file (mode 0600 like a key file: a file group or others may read is refused).
 * @throws RepositoryInputError naming the problem (never a secret)
 */
export function readS3CredentialsFile(file: string): Record<string, S3CredentialsEntry> {
  let text: string;
  try {
    const mode = statSync(file).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new RepositoryInputError(
        `credentials file ${file} is accessible by group or others (mode 0${mode.toString(8)}): run 'chmod 600 ${file}'`,
      );
    }
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof RepositoryInputError) throw err;
    throw new RepositoryInputError(`cannot read credentials file ${file}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new RepositoryInputError(`credentials file ${file} is not JSON`);
  }
  const parsed = FileSchema.safeParse(doc);
  if (!parsed.success) {
    const where = parsed.error.issues
      .slice(0, 3)
      .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
      .join('; ');
    throw new RepositoryInputError(`credentials file ${file}: ${where}`);
  }
  return parsed.data;
}

/** `bucket/prefix/` of an s3 URL (no query), for prefix matching on whole path segments. */
function bucketPath(url: string): string | undefined {
  const m = /^s3:\/\/([^/?#]+)(\/[^?#]*)?/.exec(url);
  if (!m) return undefined;
  const path = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  return `${m[1]}/${path ? `${path}/` : ''}`;
}

/** The entry of `entries` for a repository URL: the longest URL that is its bucket or a parent prefix of it. */
export function s3EntryFor(entries: Record<string, S3CredentialsEntry>, url: string): S3CredentialsEntry | undefined {
  const target = bucketPath(url);
  if (target === undefined) return undefined;
  let best: { len: number; entry: S3CredentialsEntry } | undefined;
  for (const [u, entry] of Object.entries(entries)) {
    const p = bucketPath(u);
    if (p !== undefined && target.startsWith(p) && (!best || p.length > best.len)) best = { len: p.length, entry };
  }
  return best?.entry;
}

/**
 * `S3Client` settings of a repository URL from the credentials file named by `GROUPSNAP_S3_CREDENTIALS_FILE`
 * (or `file`), or `{}` when there is no file or no entry for it (the process's AWS settings apply).
 * @throws RepositoryInputError when the file is named but unreadable or invalid
 */
export function s3ConfigFor(url: string, file = process.env[S3_CREDENTIALS_FILE_ENV]): S3ClientConfig {
  if (!file || !url.startsWith('s3://')) return {};
  const entry = s3EntryFor(readS3CredentialsFile(file), url);
  if (!entry) return {};
  return {
    ...(entry.endpoint ? { endpoint: entry.endpoint, forcePathStyle: true } : {}),
    ...(entry.region ? { region: entry.region } : {}),
    credentials: {
      accessKeyId: entry.accessKeyId,
      secretAccessKey: entry.secretAccessKey,
      ...(entry.sessionToken ? { sessionToken: entry.sessionToken } : {}),
    },
  };
}

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { promisify } from 'node:util';
import { deflateRaw, deflateRawSync, inflateRaw } from 'node:zlib';
import { RepositoryInputError } from './errors';

/** Length of the user's key and of every derived key, in bytes. */
export const KEY_BYTES = 32;

/**
 * Reads a repository key file: 32 bytes raw, or their base64 (`head -c 32 /dev/urandom | base64`) or hex, with
 * surrounding white space. Like ssh with a private key, a file that group or others may access (any of mode 077)
 * is refused with the `chmod` to run. The key stays in memory only; callers must never log it or pass it to a
 * workflow.
 * @throws RepositoryInputError when the file is missing, unreadable, open to others or does not hold a key
 */
export function readKeyFile(file: string): Buffer {
  let raw: Buffer;
  try {
    const mode = statSync(file).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new RepositoryInputError(
        `key file ${file} is accessible by group or others (mode 0${mode.toString(8)}): ` +
          `run 'chmod 600 ${file}' (a repository key must be readable by its owner only)`,
      );
    }
    raw = readFileSync(file);
  } catch (err) {
    if (err instanceof RepositoryInputError) throw err;
    throw new RepositoryInputError(`cannot read key file ${file}: ${(err as Error).message}`);
  }
  return parseKey(raw, file);
}

/**
 * Whether bytes read as text: valid UTF-8 without control characters other than tab, CR and LF. A raw key is
 * random bytes; 32 bytes of text (a typed 32-character passphrase) would be a weak key taken as raw. Random bytes
 * pass this test about once in 10^9.
 */
export function looksLikeText(raw: Buffer): boolean {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    return false;
  }
  return !/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/.test(text);
}

/**
 * {@link readKeyFile} on bytes already read. Formats: exactly 32 bytes that do not read as text (raw); else text:
 * 64 hex digits, or base64 / base64url of 32 bytes, with surrounding white space.
 */
export function parseKey(raw: Buffer, what = 'key'): Buffer {
  if (raw.length === KEY_BYTES && !looksLikeText(raw)) return Buffer.from(raw);
  const text = raw.length <= 1024 ? raw.toString('utf8').trim() : '';
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text) || /^[A-Za-z0-9_-]{43}=?$/.test(text)) {
    const key = Buffer.from(text, text.includes('-') || text.includes('_') ? 'base64url' : 'base64');
    if (key.length === KEY_BYTES) return key;
  }
  throw new RepositoryInputError(
    `${what} must hold ${KEY_BYTES} random bytes, raw (not text) or as 64 hex digits or base64 ` +
      `(e.g. 'umask 077; head -c 32 /dev/urandom | base64 > key'); a passphrase is not a key`,
  );
}

/** Keys derived from the user's key with HKDF-SHA256, salted by the repository id: one per purpose. */
export interface RepositoryKeys {
  /** AES-256-GCM key of every chunk and manifest. */
  readonly encryption: Buffer;
  /** HMAC-SHA256 key naming chunks by content. */
  readonly chunkId: Buffer;
  /** HMAC-SHA256 key naming groups and VMs in object keys. */
  readonly names: Buffer;
  /** HMAC-SHA256 key of the key check stored in `config`. */
  readonly check: Buffer;
  /** HMAC-SHA256 key authenticating `config` (its `mac`). */
  readonly config: Buffer;
}

export function deriveKeys(key: Buffer, repositoryId: string): RepositoryKeys {
  const derive = (info: string): Buffer =>
    Buffer.from(hkdfSync('sha256', key, Buffer.from(repositoryId, 'utf8'), `groupsnap repository ${info}`, KEY_BYTES));
  return {
    encryption: derive('encryption'),
    chunkId: derive('chunk id'),
    names: derive('names'),
    check: derive('key check'),
    config: derive('config mac'),
  };
}

/** The key check stored in the repository's config: an HMAC of a constant, which reveals nothing of the key. */
export function keyCheck(keys: RepositoryKeys): string {
  return createHmac('sha256', keys.check).update('groupsnap key check v1').digest('hex');
}

export function keyCheckMatches(keys: RepositoryKeys, stored: string): boolean {
  const mine = Buffer.from(keyCheck(keys), 'hex');
  const theirs = Buffer.from(stored, 'hex');
  return mine.length === theirs.length && timingSafeEqual(mine, theirs);
}

/**
 * The MAC of a repository config: HMAC-SHA256 under the `config mac` key of the JSON array of its fields in a
 * fixed order (every field but `mac`), hex.
 */
export function configMac(keys: RepositoryKeys, fields: readonly unknown[]): string {
  return createHmac('sha256', keys.config)
    .update(`groupsnap config v1\0${JSON.stringify(fields)}`)
    .digest('hex');
}

/** Compares two hex digests in constant time. */
export function hexEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** Keyed hash (HMAC-SHA256, hex) of a chunk's plaintext: its name in the store. */
export function chunkIdOf(keys: RepositoryKeys, data: Buffer): string {
  return createHmac('sha256', keys.chunkId).update(data).digest('hex');
}

/** Short keyed hash of a name (group, VM, disk target) for object keys: stable, and opaque to the store. */
export function nameTag(keys: RepositoryKeys, kind: string, name: string): string {
  return createHmac('sha256', keys.names).update(`${kind}\0${name}`).digest('hex').slice(0, 32);
}

/** Magic of a sealed object, then one byte of algorithm (1: AES-256-GCM) and one of compression. */
const MAGIC = Buffer.from('GSN1', 'ascii');
const ALG_AES_256_GCM = 1;
export const COMPRESSION = { none: 0, deflateRaw: 1 } as const;
const HEADER_BYTES = MAGIC.length + 2;
const NONCE_BYTES = 12;
const deflate = promisify(deflateRaw);
const inflate = promisify(inflateRaw);
const TAG_BYTES = 16;
/** Bytes a sealed object adds to its (compressed or not) plaintext: header, nonce and tag. */
export const SEAL_OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES;
/** Default bound of {@link unseal}'s plaintext. */
const DEFAULT_MAX_PLAIN = 64 * 1024 * 1024;

/**
 * Whether deflating `data` is worth it, judged on a 64 KiB sample from its middle: random or already compressed
 * data (encrypted guests, media) costs deflate time for nothing.
 */
function looksCompressible(data: Buffer): boolean {
  if (data.length <= 128 * 1024) return true;
  const start = Math.floor(data.length / 2) - 32 * 1024;
  const sample = data.subarray(start, start + 64 * 1024);
  return deflateRawSync(sample, { level: 1 }).length < sample.length * 0.9;
}

/** A sealed object could not be opened: wrong key, damaged bytes, or an object moved to another name. */
export class SealError extends Error {
  override readonly name = 'SealError';
}

/**
 * Compresses (raw deflate, level 1; kept uncompressed when that does not save space) and encrypts `plain` with
 * AES-256-GCM under a random 96-bit nonce. `context` (the chunk id, or the manifest's object key) is authenticated
 * with it, so an object copied under another name does not open.
 *
 * Layout: `GSN1` | alg (1) | compression (0 none, 1 raw deflate) | nonce (12) | ciphertext | GCM tag (16).
 */
export async function seal(keys: RepositoryKeys, plain: Buffer, context: string, compress = true): Promise<Buffer> {
  let body = plain;
  let compression: number = COMPRESSION.none;
  if (compress && plain.length > 0 && looksCompressible(plain)) {
    // zlib runs on libuv's thread pool: compression of several chunks proceeds in parallel.
    const packed = await deflate(plain, { level: 1 });
    if (packed.length < plain.length) {
      body = packed;
      compression = COMPRESSION.deflateRaw;
    }
  }
  const header = Buffer.concat([MAGIC, Buffer.from([ALG_AES_256_GCM, compression])]);
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', keys.encryption, nonce);
  cipher.setAAD(Buffer.concat([header, Buffer.from(context, 'utf8')]));
  const out = Buffer.concat([cipher.update(body), cipher.final()]);
  return Buffer.concat([header, nonce, out, cipher.getAuthTag()]);
}

/**
 * Opens an object made by {@link seal} under the same `context`; its plaintext may not exceed `maxPlainBytes`
 * (inflate stops there: a small object cannot expand without bound).
 * @throws SealError when it does not open
 */
export async function unseal(
  keys: RepositoryKeys,
  sealed: Buffer,
  context: string,
  maxPlainBytes = DEFAULT_MAX_PLAIN,
): Promise<Buffer> {
  if (sealed.length < HEADER_BYTES + NONCE_BYTES + TAG_BYTES || !sealed.subarray(0, 4).equals(MAGIC)) {
    throw new SealError('not a groupsnap object (bad header)');
  }
  const header = sealed.subarray(0, HEADER_BYTES);
  if (header[4] !== ALG_AES_256_GCM) throw new SealError(`unknown algorithm ${header[4]}`);
  const compression = header[5];
  const nonce = sealed.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', keys.encryption, nonce);
  decipher.setAAD(Buffer.concat([header, Buffer.from(context, 'utf8')]));
  decipher.setAuthTag(tag);
  let body: Buffer;
  try {
    body = Buffer.concat([
      decipher.update(sealed.subarray(HEADER_BYTES + NONCE_BYTES, sealed.length - TAG_BYTES)),
      decipher.final(),
    ]);
  } catch {
    throw new SealError('authentication failed (damaged, or sealed under another key or name)');
  }
  if (compression === COMPRESSION.none) {
    if (body.length > maxPlainBytes) throw new SealError(`content larger than ${maxPlainBytes} bytes`);
    return body;
  }
  if (compression === COMPRESSION.deflateRaw) {
    try {
      return await inflate(body, { maxOutputLength: maxPlainBytes });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE')
        throw new SealError(`content inflates beyond ${maxPlainBytes} bytes`);
      throw new SealError('compressed body does not inflate');
    }
  }
  throw new SealError(`unknown compression ${compression}`);
}

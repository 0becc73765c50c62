import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { SealError, type RepositoryKeys } from './crypto';
import { TransientStoreError } from './errors';

/**
 * Chunk work off the main thread: the keyed hash that names a chunk, sealing (deflate when worth it, AES-256-GCM)
 * and the two digests the S3 request needs of the sealed body (SHA-256 for the SigV4 payload hash, CRC32 for the
 * flexible checksum), which the SDK would otherwise compute on the main thread; and the reverse for reads
 * (open, inflate, check the name). An export's main thread is left with the NBD reads and the HTTP writes, so on
 * a machine with a spare core the crypto runs beside them instead of in turn. A chunk read from S3 is also fetched
 * here (`getAndOpen`): the main thread's S3 client builds and signs the GET, a thread sends it and receives the
 * body into a buffer it reuses, so HTTP parsing and 4 MiB body buffers stay off the main thread too.
 *
 * The sealed layout is the one of `seal`/`unseal` in ./crypto.ts (docs/repository-format.md); test/unit/seal-pool.test.ts
 * checks the two against each other both ways. The worker's source is inline (node built-ins only) so the same
 * code runs from dist/ and under ts-jest.
 */
const WORKER_SOURCE = String.raw`
const { parentPort, workerData } = require('node:worker_threads');
const { createHmac, createCipheriv, createDecipheriv, createHash, randomBytes } = require('node:crypto');
const zlib = require('node:zlib');
const encKey = Buffer.from(workerData.encryption);
const idKey = Buffer.from(workerData.chunkId);
const MAGIC = Buffer.from('GSN1', 'ascii');
const held = new Map();
const own = (b) => (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? [b.buffer] : []);
const asBuffer = (u) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
const chunkId = (data) => createHmac('sha256', idKey).update(data).digest('hex');
function compressible(data) {
  if (data.length <= 128 * 1024) return true;
  const start = Math.floor(data.length / 2) - 8 * 1024;
  const sample = data.subarray(start, start + 16 * 1024);
  return zlib.deflateRawSync(sample, { level: 1 }).length < sample.length * 0.9;
}
function seal(plain, context, compress) {
  let body = plain;
  let compression = 0;
  if (compress && plain.length > 0 && compressible(plain)) {
    const packed = zlib.deflateRawSync(plain, { level: 1 });
    if (packed.length < plain.length) { body = packed; compression = 1; }
  }
  const header = Buffer.concat([MAGIC, Buffer.from([1, compression])]);
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', encKey, nonce);
  cipher.setAAD(Buffer.concat([header, Buffer.from(context, 'utf8')]));
  const out = Buffer.allocUnsafeSlow(header.length + nonce.length + body.length + 16);
  header.copy(out, 0);
  nonce.copy(out, header.length);
  let pos = header.length + nonce.length;
  pos += cipher.update(body).copy(out, pos);
  pos += cipher.final().copy(out, pos);
  cipher.getAuthTag().copy(out, pos);
  return out;
}
function open(sealed, context, maxPlain) {
  if (sealed.length < 6 + 12 + 16 || !sealed.subarray(0, 4).equals(MAGIC)) throw { kind: 'seal', message: 'not a groupsnap object (bad header)' };
  const header = sealed.subarray(0, 6);
  if (header[4] !== 1) throw { kind: 'seal', message: 'unknown algorithm ' + header[4] };
  const compression = header[5];
  if (compression !== 0 && compression !== 1) throw { kind: 'seal', message: 'unknown compression ' + compression };
  const decipher = createDecipheriv('aes-256-gcm', encKey, sealed.subarray(6, 18));
  decipher.setAAD(Buffer.concat([header, Buffer.from(context, 'utf8')]));
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  let body;
  try {
    body = decipher.update(sealed.subarray(18, sealed.length - 16));
    const rest = decipher.final();
    if (rest.length) body = Buffer.concat([body, rest]);
  } catch {
    throw { kind: 'seal', message: 'authentication failed (damaged, or sealed under another key or name)' };
  }
  if (compression === 0) {
    if (body.length > maxPlain) throw { kind: 'seal', message: 'content larger than ' + maxPlain + ' bytes' };
    return body;
  }
  try {
    return zlib.inflateRawSync(body, { maxOutputLength: maxPlain });
  } catch (err) {
    if (err && err.code === 'ERR_BUFFER_TOO_LARGE') throw { kind: 'seal', message: 'content inflates beyond ' + maxPlain + ' bytes' };
    throw { kind: 'seal', message: 'compressed body does not inflate' };
  }
}
// Chunk reads (getAndOpen): the GET the main thread's S3 client built and signed, sent from here with node:http, its
// body gathered into a receive buffer this thread reuses, then opened and checked; the main thread gets the
// plaintext, or the status, headers and (small) body of any other answer for its client to read.
const http = require('node:http');
const https = require('node:https');
const agents = {
  'http:': new http.Agent({ keepAlive: true, maxSockets: 64 }),
  'https:': new https.Agent({ keepAlive: true, maxSockets: 64 }),
};
const spare = [];
const netError = (err) => ({ kind: 'http', code: err && err.code, name: err && err.name, message: String((err && err.message) || err) });
function httpGet(m) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (fn, v) => { if (!settled) { settled = true; fn(v); } };
    const r = m.req;
    const mod = r.protocol === 'https:' ? https : http;
    const req = mod.request({ protocol: r.protocol, hostname: r.hostname, port: r.port, method: r.method, path: r.path, headers: r.headers, agent: agents[r.protocol] }, (res) => {
      const headers = res.headers;
      const status = res.statusCode;
      res.on('error', (err) => done(reject, netError(err)));
      if (status !== 200) {
        const parts = [];
        let n = 0;
        res.on('data', (d) => { if (n < 1048576) { parts.push(d); n += d.length; } });
        res.on('end', () => done(resolve, { status, headers, body: Buffer.concat(parts) }));
        return;
      }
      const cl = headers['content-length'];
      const length = cl === undefined ? undefined : Number(cl);
      if (length !== undefined && length > m.maxSealed) {
        // Refused from its length: the connection is closed instead of reading the body.
        res.destroy();
        return done(resolve, { status, headers, tooLarge: length });
      }
      const limit = length === undefined ? m.maxSealed : length;
      let buf = spare.pop();
      if (!buf || buf.length < limit) buf = Buffer.allocUnsafeSlow(m.maxSealed);
      let pos = 0;
      const fail = (v, how) => { if (!settled) spare.push(buf); res.destroy(); done(how, v); };
      res.on('data', (d) => {
        if (settled) return;
        if (pos + d.length > limit) {
          if (length === undefined) return fail({ status, headers, tooLarge: -1 }, resolve);
          return fail({ kind: 'transient', message: 'S3 response for ' + m.key + ' longer than its Content-Length (' + length + ')' }, reject);
        }
        d.copy(buf, pos);
        pos += d.length;
      });
      res.on('aborted', () => fail({ kind: 'transient', message: 'S3 response for ' + m.key + ' failed after ' + pos + ' bytes: aborted' }, reject));
      res.on('end', () => {
        if (settled) return;
        if (length !== undefined && pos !== length)
          return fail({ kind: 'transient', message: 'S3 response for ' + m.key + ' ended after ' + pos + ' of ' + length + ' bytes' }, reject);
        done(resolve, { status, headers, buf, length: pos });
      });
    });
    req.on('error', (err) => done(reject, netError(err)));
    req.end();
  });
}
async function getAndOpen(m) {
  const got = await httpGet(m);
  if (!got.buf) return got;
  let plain;
  try {
    plain = open(got.buf.subarray(0, got.length), m.id, m.maxPlain);
  } finally {
    // open copied what it keeps (the decipher's output): the receive buffer serves the next GET.
    if (spare.length < 8) spare.push(got.buf);
  }
  if (chunkId(plain) !== m.id) throw { kind: 'id', message: 'content does not match its id' };
  return { status: got.status, headers: got.headers, plain: own(plain).length ? plain : Buffer.from(plain) };
}
parentPort.on('message', (m) => {
  if (m.op === 'get') {
    getAndOpen(m).then(
      (r) => parentPort.postMessage({ job: m.job, ...r }, r.plain ? own(r.plain) : []),
      (err) => parentPort.postMessage({ job: m.job, error: { ...err, kind: err.kind || 'other', message: String(err.message || err) } }),
    );
    return;
  }
  try {
    if (m.op === 'hash') {
      const data = asBuffer(m.data);
      held.set(m.job, data);
      parentPort.postMessage({ job: m.job, id: chunkId(data) });
    } else if (m.op === 'seal') {
      const data = held.get(m.job);
      held.delete(m.job);
      const sealed = seal(data, m.context, m.compress);
      const sha256 = createHash('sha256').update(sealed).digest('hex');
      let crc32;
      if (typeof zlib.crc32 === 'function') {
        const c = Buffer.alloc(4);
        c.writeUInt32BE(zlib.crc32(sealed) >>> 0);
        crc32 = c.toString('base64');
      }
      parentPort.postMessage({ job: m.job, sealed, sha256, crc32 }, own(sealed));
    } else if (m.op === 'drop') {
      held.delete(m.job);
    } else if (m.op === 'open') {
      const plain = open(asBuffer(m.sealed), m.id, m.maxPlain);
      if (chunkId(plain) !== m.id) throw { kind: 'id', message: 'content does not match its id' };
      const out = own(plain).length ? plain : Buffer.from(plain);
      parentPort.postMessage({ job: m.job, plain: out }, own(out));
    }
  } catch (err) {
    held.delete(m.job);
    parentPort.postMessage({ job: m.job, error: { kind: err.kind || 'other', message: String(err.message || err) } });
  }
});
`;

/** A chunk sealed by the pool, with the digests an S3 PUT of it needs. */
export interface SealedChunk {
  sealed: Buffer;
  /** SHA-256 of `sealed`, hex (SigV4 payload hash). */
  sha256: string;
  /** CRC32 of `sealed`, base64 of the big-endian value (S3 flexible checksum); absent on Node without zlib.crc32. */
  crc32?: string;
}

/** A chunk whose content did not match its id when opened. */
export class ChunkIdMismatchError extends Error {
  override readonly name = 'ChunkIdMismatchError';
}

/** An HTTP GET built and signed by an S3 client, for a pool thread to send ({@link SealPool.getAndOpen}). */
export interface SignedGet {
  protocol: string;
  hostname: string;
  port?: number;
  method: string;
  /** Path and query string. */
  path: string;
  headers: Record<string, string>;
}

/** What a thread's GET brought back: the opened plaintext of a 200, or another answer for the S3 client to read. */
export interface ThreadGetReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The opened, checked chunk (status 200). */
  plain?: Buffer;
  /** The body of any other answer (at most 1 MiB kept). */
  body?: Buffer;
  /** A 200 refused unread: its Content-Length (or -1: it streamed past the bound without one). */
  tooLarge?: number;
}

/** A pool thread's GET failed in transit: the code and name of node's error, for the S3 client's retry policy. */
export class ThreadNetworkError extends Error {
  constructor(
    message: string,
    readonly code?: string,
    name = 'Error',
  ) {
    super(message);
    this.name = name;
  }
}

type Reply = {
  job: number;
  id?: string;
  sealed?: Uint8Array;
  sha256?: string;
  crc32?: string;
  plain?: Uint8Array;
  status?: number;
  headers?: Record<string, string | string[] | undefined>;
  body?: Uint8Array;
  tooLarge?: number;
  error?: { kind: 'seal' | 'id' | 'http' | 'transient' | 'other'; message: string; code?: string; name?: string };
};

interface Slot {
  worker: Worker;
  busy: number;
  /** Jobs sent to this worker and not answered yet. */
  jobs: Set<number>;
  dead: boolean;
}

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
/** Whether `b` is the whole of its ArrayBuffer (then it can be moved to another thread instead of copied). */
const ownsMemory = (b: Buffer): boolean => b.byteOffset === 0 && b.byteLength === b.buffer.byteLength;

/** Threads for chunk crypto, started on first use; `close` stops them. */
export class SealPool {
  private slots: Slot[] = [];
  private nextJob = 1;
  private readonly waiting = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  private closed = false;

  constructor(
    private readonly keys: RepositoryKeys,
    /** @default one thread per core beyond the first, from 2 to 4 */
    readonly threads = Math.max(2, Math.min(4, availableParallelism() - 1)),
  ) {}

  private slot(): Slot {
    if (this.closed) throw new Error('seal pool closed');
    if (this.slots.length < this.threads) {
      const worker = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: { encryption: this.keys.encryption, chunkId: this.keys.chunkId },
      });
      worker.unref();
      const slot: Slot = { worker, busy: 0, jobs: new Set(), dead: false };
      worker.on('message', (r: Reply) => this.settle(slot, r));
      worker.on('error', (err) => this.lose(slot, err));
      worker.on('exit', (code) => this.lose(slot, new Error(`seal worker exited (${code})`)));
      this.slots.push(slot);
      return slot;
    }
    return this.slots.reduce((a, b) => (b.busy < a.busy ? b : a));
  }

  private settle(slot: Slot, r: Reply): void {
    const w = this.waiting.get(r.job);
    if (!w) return;
    this.waiting.delete(r.job);
    slot.jobs.delete(r.job);
    if (--slot.busy === 0) slot.worker.unref();
    w.resolve(r);
  }

  /**
   * A worker died (crashed, ran out of memory, was terminated): its calls in flight fail, and it leaves the pool so
   * the next call starts a new one instead of waiting forever on a thread that will never answer.
   */
  private lose(slot: Slot, err: Error): void {
    if (slot.dead) return;
    slot.dead = true;
    this.slots = this.slots.filter((s) => s !== slot);
    const reason = this.closed ? new Error('seal pool closed') : err;
    for (const job of slot.jobs) {
      const w = this.waiting.get(job);
      this.waiting.delete(job);
      w?.reject(reason);
    }
    slot.jobs.clear();
    slot.busy = 0;
    if (!this.closed) void slot.worker.terminate().catch(() => undefined);
  }

  private failAll(err: Error): void {
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
    for (const s of this.slots) {
      s.busy = 0;
      s.jobs.clear();
    }
  }

  private call(slot: Slot, msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<Reply> {
    const job = msg.job as number;
    return new Promise<Reply>((resolve, reject) => {
      if (slot.dead) {
        reject(new Error('seal worker exited'));
        return;
      }
      this.waiting.set(job, { resolve, reject });
      slot.jobs.add(job);
      if (slot.busy++ === 0) slot.worker.ref();
      slot.worker.postMessage(msg, transfer);
    }).then((r) => {
      if (r.error) {
        if (r.error.kind === 'http') throw new ThreadNetworkError(r.error.message, r.error.code, r.error.name);
        if (r.error.kind === 'transient') throw new TransientStoreError(r.error.message);
        if (r.error.kind === 'seal') throw new SealError(r.error.message);
        if (r.error.kind === 'id') throw new ChunkIdMismatchError(r.error.message);
        throw new Error(r.error.message);
      }
      return r;
    });
  }

  /**
   * Names `data` by its keyed hash, then seals it if `wanted(id)` says so (else drops it). With `detach`, `data`'s
   * memory moves to the worker (the caller must not use it afterwards) instead of being copied.
   */
  async hashAndSeal(
    data: Buffer,
    wanted: (id: string) => boolean | Promise<boolean>,
    opts: { detach?: boolean; compress?: boolean } = {},
  ): Promise<{ id: string; sealed?: SealedChunk }> {
    const slot = this.slot();
    const job = this.nextJob++;
    const transfer = opts.detach && ownsMemory(data) ? [data.buffer as ArrayBuffer] : [];
    const { id } = (await this.call(slot, { op: 'hash', job, data }, transfer)) as { id: string };
    let want: boolean;
    try {
      want = await wanted(id);
    } catch (err) {
      slot.worker.postMessage({ op: 'drop', job });
      throw err;
    }
    if (!want) {
      slot.worker.postMessage({ op: 'drop', job });
      return { id };
    }
    const r = await this.call(slot, { op: 'seal', job, context: id, compress: opts.compress ?? true });
    return { id, sealed: { sealed: asBuffer(r.sealed as Uint8Array), sha256: r.sha256 as string, crc32: r.crc32 } };
  }

  /**
   * Opens a sealed chunk named `id` and checks its content against the name; its plaintext may not exceed
   * `maxPlain` bytes (inflate stops there).
   * @throws SealError when it does not open; ChunkIdMismatchError when its content is not what `id` names
   */
  async open(sealed: Buffer, id: string, maxPlain = 64 * 1024 * 1024): Promise<Buffer> {
    const slot = this.slot();
    const job = this.nextJob++;
    const transfer = ownsMemory(sealed) ? [sealed.buffer as ArrayBuffer] : [];
    const r = await this.call(slot, { op: 'open', job, sealed, id, maxPlain }, transfer);
    return asBuffer(r.plain as Uint8Array);
  }

  /**
   * Sends `req` (a GET of the sealed chunk `id`, signed by the caller's S3 client) from a thread, gathers a 200's body
   * there into a buffer the thread reuses, opens it and checks its content against `id`, as {@link open} does: this
   * thread only receives the plaintext. A 200 longer than `maxSealed` is refused from its Content-Length unread;
   * any other answer comes back as it is (status, headers, body) for the S3 client to read.
   * @throws SealError, ChunkIdMismatchError as {@link open}; ThreadNetworkError when the request fails in transit;
   * TransientStoreError when the body is cut short
   */
  async getAndOpen(
    req: SignedGet,
    key: string,
    id: string,
    maxSealed: number,
    maxPlain: number,
  ): Promise<ThreadGetReply> {
    const slot = this.slot();
    const job = this.nextJob++;
    const r = await this.call(slot, { op: 'get', job, req, key, id, maxSealed, maxPlain });
    return {
      status: r.status as number,
      headers: r.headers ?? {},
      ...(r.plain ? { plain: asBuffer(r.plain) } : {}),
      ...(r.body ? { body: asBuffer(r.body) } : {}),
      ...(r.tooLarge !== undefined ? { tooLarge: r.tooLarge } : {}),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    const slots = this.slots;
    this.slots = [];
    this.failAll(new Error('seal pool closed'));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }
}

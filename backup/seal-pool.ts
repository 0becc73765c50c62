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
 * here (`getAndOpen`): the main thread's S3 client builds and signs the GET, a thread sends it on a keep-alive
 * connection of its own and the kernel writes the body straight into a buffer the thread reuses (a minimal HTTP/1.1
 * receiver on node:net / node:tls: node:http's parser, per-read buffers and copy cost about 1 CPU second per GiB),
 * so HTTP parsing and 4 MiB body buffers stay off the main thread too.
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
// Chunk reads (getAndOpen): the GET the main thread's S3 client built and signed, sent from here on a keep-alive
// connection of this thread's own (node:net / node:tls with onread: the kernel writes a 200's body straight into a
// receive buffer this thread reuses, no per-read buffers, no node:http), then opened and checked; the main thread
// gets the plaintext, or the status, headers and (small) body of any other answer for its client to read.
// Only what an S3 GET answer needs is parsed: the status line, headers, a body by Content-Length, chunked or up to
// the end of the connection. Why not a library (undici, node:http): both read through node's socket streams, which
// allocate a fresh buffer on every read; undici in this place cost ~45% more CPU per GiB restored, most of it GC in
// these threads (measured side by side, BENCHMARKS.md "Where a restore's time goes").
const net = require('node:net');
const tls = require('node:tls');
const HEAD_MAX = 64 * 1024;
const KEEP_ERROR_BODY = 1048576;
const IDLE_PER_ORIGIN = 16;
const IDLE_MS = 30000;
const idle = new Map();
const spare = [];
const netError = (err) => ({ kind: 'http', code: err && err.code, name: err && err.name, message: String((err && err.message) || err) });
const hangUp = () => ({ kind: 'http', code: 'ECONNRESET', name: 'Error', message: 'socket hang up' });
const badAnswer = (m, what) => ({ kind: 'http', code: 'EPROTO', name: 'Error', message: 'bad HTTP answer to the GET of ' + m.key + ': ' + what });
const originOf = (r) => r.protocol + '//' + r.hostname + ':' + (r.port || (r.protocol === 'https:' ? 443 : 80));
function requestHead(r) {
  let head = r.method + ' ' + r.path + ' HTTP/1.1\r\n';
  let host = false;
  for (const name of Object.keys(r.headers)) {
    const value = String(r.headers[name]);
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw { kind: 'other', message: 'a header of the signed GET holds a line break' };
    if (name.toLowerCase() === 'host') host = true;
    head += name + ': ' + value + '\r\n';
  }
  if (!host) head += 'host: ' + (r.hostname.includes(':') ? '[' + r.hostname + ']' : r.hostname) + (r.port ? ':' + r.port : '') + '\r\n';
  if (/[\r\n ]/.test(r.path)) throw { kind: 'other', message: 'the path of the signed GET holds a space or line break' };
  return head + '\r\n';
}
// Parses a response head (latin1 text without its final empty line): status, lower-case headers.
function parseHead(text, m) {
  const lines = text.split('\r\n');
  const sm = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0]);
  if (!sm) throw badAnswer(m, 'status line ' + JSON.stringify(lines[0].slice(0, 80)));
  const headers = {};
  for (let i = 1; i < lines.length; i++) {
    const c = lines[i].indexOf(':');
    if (c <= 0) throw badAnswer(m, 'header line ' + JSON.stringify(lines[i].slice(0, 80)));
    const name = lines[i].slice(0, c).trim().toLowerCase();
    const value = lines[i].slice(c + 1).trim();
    headers[name] = headers[name] === undefined ? value : headers[name] + ', ' + value;
  }
  return { minor: Number(sm[1]), status: Number(sm[2]), headers };
}
// A chunked body's decoder, fed the raw bytes as they come; keeps the decoded body in pieces (copies).
class Dechunker {
  constructor(limit) { this.state = 'size'; this.line = ''; this.left = 0; this.pieces = []; this.size = 0; this.limit = limit; this.done = false; }
  // Returns the number of bytes of data it used (the rest, after the end, is not its own).
  feed(data) {
    let i = 0;
    while (i < data.length && !this.done) {
      if (this.state === 'data') {
        const n = Math.min(this.left, data.length - i);
        if (this.size + n <= this.limit) this.pieces.push(Buffer.from(data.subarray(i, i + n)));
        this.size += n; this.left -= n; i += n;
        if (this.left === 0) { this.state = 'crlf'; this.line = ''; }
        continue;
      }
      const nl = data.indexOf(10, i);
      const end = nl < 0 ? data.length : nl + 1;
      this.line += data.toString('latin1', i, end);
      i = end;
      if (this.line.length > 4096) throw new Error('a chunk line longer than 4096 bytes');
      if (nl < 0) continue;
      const line = this.line.replace(/\r?\n$/, '');
      this.line = '';
      if (this.state === 'crlf') {
        if (line !== '') throw new Error('no line break after chunk data');
        this.state = 'size';
      } else if (this.state === 'size') {
        const hex = line.split(';')[0].trim();
        if (!/^[0-9a-fA-F]{1,12}$/.test(hex)) throw new Error('bad chunk size ' + JSON.stringify(line.slice(0, 40)));
        this.left = parseInt(hex, 16);
        this.state = this.left === 0 ? 'trailer' : 'data';
      } else if (line === '') this.done = true;
    }
    return i;
  }
}
// One keep-alive connection of this thread, carrying one GET at a time.
class Conn {
  constructor(origin, r) {
    this.origin = origin;
    this.job = null;
    this.used = 0;
    this.closed = false;
    this.scratch = Buffer.allocUnsafe(16384);
    const onread = { buffer: () => this.target(), callback: (n, buf) => this.onData(buf.subarray(0, n)) };
    const port = Number(r.port || (r.protocol === 'https:' ? 443 : 80));
    this.sock = r.protocol === 'https:'
      ? tls.connect({ host: r.hostname, port, servername: net.isIP(r.hostname) ? undefined : r.hostname, ALPNProtocols: ['http/1.1'], onread })
      : net.connect({ host: r.hostname, port, onread });
    this.sock.setNoDelay(true);
    // Where onread is not honoured (it is for both today), the same bytes come as 'data' events.
    this.sock.on('data', (d) => this.onData(d));
    this.sock.on('error', (err) => this.end(err));
    this.sock.on('close', () => this.end(null));
    this.sock.on('timeout', () => { if (!this.job) this.sock.destroy(); });
  }
  // Where the next read lands: a 200's body goes straight into the job's receive buffer, anything else to scratch.
  target() {
    const j = this.job;
    if (j && j.phase === 'head') return j.buf.subarray(j.pos);
    if (j && j.phase === 'fixed') return j.buf.subarray(j.pos, j.length);
    return this.scratch;
  }
  send(job) {
    this.job = job;
    this.used++;
    this.sock.setTimeout(0);
    this.sock.ref();
    this.sock.write(job.head, 'latin1');
  }
  // Bytes arrived: in place when they landed where target() said (a 200's body), else copied there.
  onData(data) {
    const j = this.job;
    if (!j) { this.sock.destroy(); return; } // bytes nobody asked for: not a connection to reuse
    j.got = true;
    try {
      if (j.phase === 'gather') return this.onGathered(j, data);
      const n = data.length;
      const end = j.phase === 'fixed' ? j.length : j.buf.length;
      const inPlace = data.buffer === j.buf.buffer && data.byteOffset === j.buf.byteOffset + j.pos;
      if (!inPlace) {
        if (j.pos + n > end) throw badAnswer(j.m, j.phase === 'fixed' ? 'more bytes than its content-length' : 'a response head too long');
        data.copy(j.buf, j.pos);
      }
      j.pos += n;
      if (j.phase === 'head') this.onHead(j);
      else if (j.pos === j.length) this.finish(j, { buf: j.buf, length: j.length });
    } catch (err) {
      this.fail(j, err && err.kind ? err : badAnswer(j.m, String((err && err.message) || err)));
    }
  }
  onHead(j) {
    const at = j.buf.indexOf('\r\n\r\n', Math.max(0, j.scanned - 3), 'latin1');
    if (at < 0) {
      j.scanned = j.pos;
      if (j.pos >= HEAD_MAX) throw badAnswer(j.m, 'a response head longer than ' + HEAD_MAX + ' bytes');
      return;
    }
    const head = parseHead(j.buf.toString('latin1', 0, at), j.m);
    const rest = j.buf.subarray(at + 4, j.pos);
    if (head.status >= 100 && head.status < 200) {
      // An interim answer: the real one follows.
      j.buf.copyWithin(0, at + 4, j.pos);
      j.pos = rest.length; j.scanned = 0;
      if (j.pos) this.onHead(j);
      return;
    }
    j.status = head.status; j.headers = head.headers;
    const te = head.headers['transfer-encoding'];
    const cl = head.headers['content-length'];
    j.keep = head.minor === 1 && !/\bclose\b/i.test(head.headers.connection || '');
    if (te !== undefined && !/^chunked$/i.test(te.trim())) throw badAnswer(j.m, 'transfer-encoding ' + te);
    if (te === undefined && cl !== undefined && !/^\d{1,15}$/.test(cl)) throw badAnswer(j.m, 'content-length ' + JSON.stringify(cl));
    const length = te === undefined && cl !== undefined ? Number(cl) : undefined;
    if (j.status === 200 && length !== undefined) {
      // Refused from its length: the connection is closed instead of reading the body.
      if (length > j.m.maxSealed) { j.keep = false; return this.finish(j, { tooLarge: length }); }
      if (rest.length > length) throw badAnswer(j.m, 'more bytes than its content-length');
      j.buf.copyWithin(0, at + 4, j.pos);
      j.pos = rest.length; j.length = length; j.phase = 'fixed';
      if (j.pos === length) this.finish(j, { buf: j.buf, length });
      return;
    }
    // Anything else is gathered in pieces: an error answer, a chunked or unbounded 200.
    j.phase = 'gather';
    j.limit = j.status === 200 ? j.m.maxSealed : KEEP_ERROR_BODY;
    if (te !== undefined) j.chunks = new Dechunker(j.limit);
    else { j.pieces = []; j.size = 0; j.left = length; if (length === undefined) j.keep = false; }
    const copy = Buffer.from(rest);
    if (j.status === 200) { spare.push(j.buf); j.buf = null; }
    if (copy.length || length === 0) this.onGathered(j, copy);
  }
  onGathered(j, data) {
    let size;
    if (j.chunks) {
      const used = j.chunks.feed(data);
      if (used < data.length) throw badAnswer(j.m, 'bytes after the end of a chunked body');
      size = j.chunks.size;
    } else {
      const n = j.left === undefined ? data.length : Math.min(j.left, data.length);
      if (n < data.length) throw badAnswer(j.m, 'more bytes than its content-length');
      if (j.size + n <= j.limit) j.pieces.push(Buffer.from(data.subarray(0, n)));
      j.size += n;
      if (j.left !== undefined) j.left -= n;
      size = j.size;
    }
    if (j.status === 200 && size > j.limit) { j.keep = false; return this.finish(j, { tooLarge: -1 }); }
    if ((j.chunks && j.chunks.done) || j.left === 0) this.finishGathered(j);
  }
  finishGathered(j) {
    const pieces = j.chunks ? j.chunks.pieces : j.pieces;
    const body = Buffer.concat(pieces);
    if (j.status !== 200) return this.finish(j, { body });
    let buf = spare.pop();
    if (!buf || buf.length < j.m.maxSealed + HEAD_MAX) buf = Buffer.allocUnsafeSlow(j.m.maxSealed + HEAD_MAX);
    body.copy(buf, 0);
    this.finish(j, { buf, length: body.length });
  }
  finish(j, got) {
    this.job = null;
    if (j.buf && got.buf !== j.buf) spare.push(j.buf);
    j.done(null, { status: j.status, headers: j.headers, ...got });
    if (!j.keep || this.closed) return this.sock.destroy();
    this.sock.unref();
    this.sock.setTimeout(IDLE_MS);
    const list = idle.get(this.origin) || [];
    if (list.length >= IDLE_PER_ORIGIN) return this.sock.destroy();
    list.push(this);
    idle.set(this.origin, list);
  }
  fail(j, err) {
    this.job = null;
    if (j.buf) spare.push(j.buf);
    this.sock.destroy();
    j.done(err);
  }
  // The connection ended (err: how, or null for a close).
  end(err) {
    if (this.closed) return;
    this.closed = true;
    const list = idle.get(this.origin);
    if (list && list.includes(this)) idle.set(this.origin, list.filter((c) => c !== this));
    const j = this.job;
    if (!j) return;
    if (!j.got && this.used > 1) { this.job = null; if (j.buf) spare.push(j.buf); return j.done('stale'); }
    if (j.phase === 'gather' && !j.chunks && j.left === undefined) return this.finishGathered(j);
    if (j.phase === 'head') return this.fail(j, err ? netError(err) : hangUp());
    const pos = j.phase === 'fixed' ? j.pos : j.chunks ? j.chunks.size : j.size;
    const of = j.phase === 'fixed' ? ' of ' + j.length : '';
    this.fail(j, { kind: 'transient', message: 'S3 response for ' + j.m.key + ' ended after ' + pos + of + ' bytes' + (err ? ': ' + err.message : '') });
  }
}
// Sends m.req on an idle connection to its origin, or a new one; a kept-alive connection the server had closed
// before answering is replaced by a new one, once.
function httpGet(m) {
  const head = requestHead(m.req);
  const origin = originOf(m.req);
  const attempt = (fresh) => new Promise((resolve, reject) => {
    let conn;
    const list = idle.get(origin);
    while (!fresh && list && list.length && !conn) { const c = list.pop(); if (!c.closed) conn = c; }
    conn = conn || new Conn(origin, m.req);
    let buf = spare.pop();
    if (!buf || buf.length < m.maxSealed + HEAD_MAX) buf = Buffer.allocUnsafeSlow(m.maxSealed + HEAD_MAX);
    conn.send({ m, head, buf, pos: 0, scanned: 0, phase: 'head', got: false, done: (err, v) => (err ? reject(err) : resolve(v)) });
  });
  return attempt(false).catch((err) => (err === 'stale' ? attempt(true) : Promise.reject(err)));
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

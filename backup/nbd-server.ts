/**
 * A read-only NBD server over Unix sockets (docs: the NBD protocol, doc/proto.md of NetworkBlockDevice/nbd): the
 * fixed newstyle handshake with the options EXPORT_NAME, GO, INFO, LIST, ABORT, STRUCTURED_REPLY,
 * LIST_META_CONTEXT and SET_META_CONTEXT (every other option is answered `NBD_REP_ERR_UNSUP`), read-only exports,
 * and the commands READ, BLOCK_STATUS, DISC and FLUSH (a no-op: nothing is ever written); WRITE, TRIM and
 * WRITE_ZEROES are refused with EPERM. Reads are answered with simple replies, or, once a client negotiated
 * structured replies (QEMU does), with structured ones in which the ranges an export knows to be zero (a point's
 * zero chunks) are holes: no zero bytes cross the socket. With structured replies a client may also select the
 * `base:allocation` metadata context and ask BLOCK_STATUS which ranges hold data (./nbd-block-status.ts). Many
 * connections, many requests in flight on each (answered by handle, in whatever order they complete). Every
 * request is checked: bounds, lengths and flags (EINVAL), unknown commands (EINVAL); a bad magic number ends the
 * connection. What the exports hold comes from {@link NbdExport.read} (here: a point's disk in the repository).
 */
import { chmod, unlink } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  blockStatusPayload,
  metaContextReply,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_STATE,
  parseMetaContextOption,
  selectsBaseAllocation,
  type NbdAllocation,
} from './nbd-block-status';

export type { NbdAllocation } from './nbd-block-status';

/** One export: a name, a size, and reads. */
export interface NbdExport {
  readonly name: string;
  readonly size: number;
  readonly description?: string;
  /**
   * `length` bytes at `offset` (always within the size). A rejection answers the request with EIO (the data is
   * damaged); a read that cannot be served yet (the store is away) should wait rather than reject.
   */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * The same bytes as pieces in order, those known to read as zeros without `data` (sent as holes when the client
   * negotiated structured replies). Optional: without it every read goes through {@link read}.
   */
  readSparse?(offset: number, length: number): Promise<NbdExtent[]>;
  /**
   * Which of `length` bytes at `offset` (always within the size) hold data: runs in order covering the range,
   * answered to BLOCK_STATUS in the `base:allocation` context (`zero` runs as HOLE|ZERO). Optional: an export
   * without it offers no metadata context (a client then reads every range, as from a server without block status).
   */
  allocation?(offset: number, length: number): NbdAllocation[];
}

/**
 * A piece of a read: `length` bytes at `offset`, its `data`, or none when it reads as zeros; `release`, when given,
 * is called once nothing refers to `data` any more (the reply is written, or dropped with its connection).
 */
export interface NbdExtent {
  offset: number;
  length: number;
  data?: Buffer;
  release?: () => void;
}

/** What a server reports as it works (for its status). */
export interface NbdServerEvents {
  connection?(exportName: string | undefined, open: boolean): void;
  /** A request was answered: `bytes` of data sent (reads), `error` its NBD error (0: none). */
  request?(exportName: string, command: number, bytes: number, error: number): void;
  /** A protocol violation that ended a connection. */
  violation?(message: string): void;
}

export const NBD = {
  magic: Buffer.from('NBDMAGIC', 'ascii'),
  ihaveopt: Buffer.from('IHAVEOPT', 'ascii'),
  optReplyMagic: 0x3e889045565a9n,
  requestMagic: 0x25609513,
  simpleReplyMagic: 0x67446698,
  structuredReplyMagic: 0x668e33ef,
  replyFlagDone: 1,
  replyType: { none: 0, offsetData: 1, offsetHole: 2, blockStatus: 5, error: 0x8001 },
  flagFixedNewstyle: 1,
  flagNoZeroes: 2,
  opt: {
    exportName: 1,
    abort: 2,
    list: 3,
    startTls: 5,
    info: 6,
    go: 7,
    structuredReply: 8,
    listMetaContext: 9,
    setMetaContext: 10,
  },
  rep: {
    ack: 1,
    server: 2,
    info: 3,
    metaContext: 4,
    errUnsup: 0x80000001,
    errPolicy: 0x80000002,
    errInvalid: 0x80000003,
    errUnknown: 0x80000006,
    errShutdown: 0x80000007,
  },
  info: { export: 0, name: 1, description: 2, blockSize: 3 },
  tflag: { hasFlags: 1, readOnly: 2, sendFlush: 4, canMultiConn: 256 },
  cmd: { read: 0, write: 1, disc: 2, flush: 3, trim: 4, cache: 5, writeZeroes: 6, blockStatus: 7 },
  cmdFlag: { reqOne: NBD_CMD_FLAG_REQ_ONE },
  state: NBD_STATE,
  err: { perm: 1, io: 5, inval: 22, shutdown: 108 },
} as const;

/** Largest read (and write payload) accepted: the protocol's default maximum payload, 32 MiB. */
export const NBD_MAX_PAYLOAD = 32 * 1024 * 1024;
/** Largest option data accepted during the handshake (export names are at most 4096 bytes). */
const MAX_OPTION_DATA = 64 * 1024;
/** Requests of one connection answered at once; the socket is not read further until one completes. */
const MAX_IN_FLIGHT = 64;
/** Reply bytes queued on a socket above which it is not read further until they drain. */
const MAX_QUEUED_REPLY_BYTES = 64 * 1024 * 1024;
/** Transmission flags of every export: read-only, flush accepted, a cache shared by all connections. */
export const EXPORT_FLAGS = NBD.tflag.hasFlags | NBD.tflag.readOnly | NBD.tflag.sendFlush | NBD.tflag.canMultiConn;

/** A structured reply chunk of `handle`: its header and fixed fields, then `data` (counted in its length too). */
function chunk(handle: Buffer, flags: number, type: number, fields: Buffer, data?: Buffer): Buffer[] {
  const h = Buffer.alloc(20 + fields.length);
  h.writeUInt32BE(NBD.structuredReplyMagic, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  handle.copy(h, 8);
  h.writeUInt32BE(fields.length + (data?.length ?? 0), 16);
  fields.copy(h, 20);
  return data ? [h, data] : [h];
}

/** The final ERROR chunk of a structured reply: the error and a message for the user. */
function errorChunk(handle: Buffer, error: number, message: string): Buffer[] {
  const m = Buffer.from(message.slice(0, 1000), 'utf8');
  const p = Buffer.alloc(6 + m.length);
  p.writeUInt32BE(error, 0);
  p.writeUInt16BE(m.length, 4);
  m.copy(p, 6);
  return chunk(handle, NBD.replyFlagDone, NBD.replyType.error, p);
}

const errorMessages: Record<number, string> = {
  [NBD.err.perm]: 'the export is read-only',
  [NBD.err.io]: 'input/output error',
  [NBD.err.inval]: 'invalid request',
};

/** Bytes received and not yet parsed. */
class InBuffer {
  private parts: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }

  /** Exactly `n` bytes (call only when `length >= n`). */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.parts[0];
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.parts.shift();
      else this.parts[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let fill = 0;
      while (fill < n) {
        const p = this.parts[0];
        const k = Math.min(p.length, n - fill);
        p.copy(out, fill, 0, k);
        fill += k;
        if (k === p.length) this.parts.shift();
        else this.parts[0] = p.subarray(k);
      }
    }
    this.length -= n;
    return out;
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.parts.length > 0) {
      const p = this.parts[0];
      const k = Math.min(p.length, n - dropped);
      if (k === p.length) this.parts.shift();
      else this.parts[0] = p.subarray(k);
      dropped += k;
    }
    this.length -= dropped;
    return dropped;
  }
}

type Phase = 'clientFlags' | 'option' | 'optionData' | 'request' | 'writePayload' | 'closed';

/** One client connection: the handshake, then requests. */
class NbdConnection {
  private readonly input = new InBuffer();
  private phase: Phase = 'clientFlags';
  private noZeroes = false;
  /** The client negotiated structured replies: reads are answered with them. */
  private structured = false;
  /** The export whose `base:allocation` context the last SET_META_CONTEXT selected (none: BLOCK_STATUS is refused). */
  private metaExport: NbdExport | undefined;
  private option = { code: 0, length: 0 };
  /** Payload bytes of a refused write still to be dropped, and that write's handle. */
  private skipping = { left: 0, handle: Buffer.alloc(8) };
  private export: NbdExport | undefined;
  private inFlight = 0;
  private disconnecting = false;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    private readonly byName: Map<string, NbdExport>,
    private readonly events: NbdServerEvents,
    private readonly closing: () => boolean,
  ) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('drain', () => this.maybeResume());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      if (this.phase !== 'closed') this.phase = 'closed';
      this.events.connection?.(this.export?.name, false);
    });
    const hello = Buffer.alloc(18);
    NBD.magic.copy(hello, 0);
    NBD.ihaveopt.copy(hello, 8);
    hello.writeUInt16BE(NBD.flagFixedNewstyle | NBD.flagNoZeroes, 16);
    socket.write(hello);
  }

  private violation(message: string): void {
    this.events.violation?.(message);
    this.phase = 'closed';
    this.socket.destroy();
  }

  private onData(d: Buffer): void {
    if (this.phase === 'closed') return;
    this.input.push(d);
    try {
      this.parse();
    } catch (err) {
      this.violation(`internal error: ${(err as Error).message}`);
    }
  }

  /** Consumes whatever complete messages the input holds. */
  private parse(): void {
    for (;;) {
      switch (this.phase) {
        case 'closed':
          return;
        case 'clientFlags': {
          if (this.input.length < 4) return;
          const flags = this.input.take(4).readUInt32BE(0);
          // Only the two flags this server advertised; anything else ends the connection (as the protocol says).
          if ((flags & ~(NBD.flagFixedNewstyle | NBD.flagNoZeroes)) !== 0)
            return this.violation(`unknown client flags 0x${flags.toString(16)}`);
          this.noZeroes = (flags & NBD.flagNoZeroes) !== 0;
          this.phase = 'option';
          break;
        }
        case 'option': {
          if (this.input.length < 16) return;
          const h = this.input.take(16);
          if (!h.subarray(0, 8).equals(NBD.ihaveopt)) return this.violation('bad option magic');
          this.option = { code: h.readUInt32BE(8), length: h.readUInt32BE(12) };
          if (this.option.length > MAX_OPTION_DATA) return this.violation(`option data of ${this.option.length} bytes`);
          this.phase = 'optionData';
          break;
        }
        case 'optionData': {
          if (this.input.length < this.option.length) return;
          this.handleOption(this.option.code, this.input.take(this.option.length));
          break;
        }
        case 'writePayload': {
          this.skipping.left -= this.input.skip(this.skipping.left);
          if (this.skipping.left > 0) return;
          this.reply(this.skipping.handle, NBD.err.perm, NBD.cmd.write);
          this.phase = 'request';
          break;
        }
        case 'request': {
          if (this.disconnecting) {
            this.input.skip(this.input.length); // nothing may follow a disconnect request
            return;
          }
          if (this.inFlight >= MAX_IN_FLIGHT || this.socket.writableLength > MAX_QUEUED_REPLY_BYTES) {
            this.pause();
            return;
          }
          if (this.input.length < 28) return;
          this.handleRequest(this.input.take(28));
          break;
        }
      }
    }
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private maybeResume(): void {
    if (!this.paused || this.phase === 'closed') return;
    if (this.inFlight >= MAX_IN_FLIGHT || this.socket.writableLength > MAX_QUEUED_REPLY_BYTES) return;
    this.paused = false;
    this.socket.resume();
    this.parse();
  }

  private optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(NBD.optReplyMagic, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    this.socket.write(data.length ? Buffer.concat([h, data]) : h);
  }

  private errorReply(option: number, type: number, message: string): void {
    this.optionReply(option, type, Buffer.from(message, 'utf8'));
  }

  /** The export a name selects: that name, or the only export for the empty (default) name. */
  private lookup(name: string): NbdExport | undefined {
    const e = this.byName.get(name);
    if (e) return e;
    if (name === '' && this.byName.size === 1) return [...this.byName.values()][0];
    return undefined;
  }

  private handleOption(code: number, data: Buffer): void {
    this.phase = 'option';
    if (this.closing() && code !== NBD.opt.abort && code !== NBD.opt.exportName)
      return this.errorReply(code, NBD.rep.errShutdown, 'the server is shutting down');
    switch (code) {
      case NBD.opt.exportName: {
        const e = this.closing() ? undefined : this.lookup(data.toString('utf8'));
        // The protocol gives this option no way to refuse but closing the connection.
        if (!e) return this.violation(`export '${data.toString('utf8')}' requested by EXPORT_NAME does not exist`);
        const r = Buffer.alloc(this.noZeroes ? 10 : 134);
        r.writeBigUInt64BE(BigInt(e.size), 0);
        r.writeUInt16BE(EXPORT_FLAGS, 8);
        this.socket.write(r);
        return this.transmit(e);
      }
      case NBD.opt.abort:
        this.optionReply(code, NBD.rep.ack);
        this.phase = 'closed';
        this.socket.end();
        return;
      case NBD.opt.list: {
        if (data.length !== 0) return this.errorReply(code, NBD.rep.errInvalid, 'LIST takes no data');
        for (const e of this.byName.values()) {
          const name = Buffer.from(e.name, 'utf8');
          const d = Buffer.alloc(4 + name.length);
          d.writeUInt32BE(name.length, 0);
          name.copy(d, 4);
          this.optionReply(code, NBD.rep.server, d);
        }
        return this.optionReply(code, NBD.rep.ack);
      }
      case NBD.opt.info:
      case NBD.opt.go:
        return this.infoOrGo(code, data);
      case NBD.opt.structuredReply:
        if (data.length !== 0) return this.errorReply(code, NBD.rep.errInvalid, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.optionReply(code, NBD.rep.ack);
      case NBD.opt.listMetaContext:
      case NBD.opt.setMetaContext:
        return this.metaContext(code, data);
      default:
        // STARTTLS and anything unknown.
        return this.errorReply(code, NBD.rep.errUnsup, `option ${code} is not supported`);
    }
  }

  private infoOrGo(code: number, data: Buffer): void {
    if (data.length < 6) return this.errorReply(code, NBD.rep.errInvalid, 'option data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 6) return this.errorReply(code, NBD.rep.errInvalid, 'name longer than the data');
    const name = data.subarray(4, 4 + nameLength).toString('utf8');
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 4 + nameLength + 2 + 2 * count)
      return this.errorReply(code, NBD.rep.errInvalid, 'information request list does not match the data length');
    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
    const e = this.lookup(name);
    if (!e) return this.errorReply(code, NBD.rep.errUnknown, `no export named '${name}'`);
    const info = (type: number, payload: Buffer) => {
      const d = Buffer.alloc(2 + payload.length);
      d.writeUInt16BE(type, 0);
      payload.copy(d, 2);
      this.optionReply(code, NBD.rep.info, d);
    };
    const exp = Buffer.alloc(10);
    exp.writeBigUInt64BE(BigInt(e.size), 0);
    exp.writeUInt16BE(EXPORT_FLAGS, 8);
    info(NBD.info.export, exp);
    if (requested.has(NBD.info.name)) info(NBD.info.name, Buffer.from(e.name, 'utf8'));
    if (requested.has(NBD.info.description) && e.description)
      info(NBD.info.description, Buffer.from(e.description, 'utf8'));
    if (requested.has(NBD.info.blockSize)) {
      const bs = Buffer.alloc(12);
      bs.writeUInt32BE(1, 0); // minimum: any byte
      bs.writeUInt32BE(4096, 4); // preferred
      bs.writeUInt32BE(NBD_MAX_PAYLOAD, 8); // maximum payload
      info(NBD.info.blockSize, bs);
    }
    this.optionReply(code, NBD.rep.ack);
    if (code === NBD.opt.go) this.transmit(e);
  }

  /**
   * LIST_META_CONTEXT (which contexts the queries match) or SET_META_CONTEXT (select them for the export the client
   * then enters transmission on). Both need structured replies first; SET replaces the selection even when it fails.
   */
  private metaContext(code: number, data: Buffer): void {
    const set = code === NBD.opt.setMetaContext;
    if (set) this.metaExport = undefined;
    if (!this.structured)
      return this.errorReply(code, NBD.rep.errInvalid, 'meta contexts need structured replies negotiated first');
    const request = parseMetaContextOption(data);
    if (typeof request === 'string') return this.errorReply(code, NBD.rep.errInvalid, request);
    const e = this.lookup(request.exportName);
    if (!e) return this.errorReply(code, NBD.rep.errUnknown, `no export named '${request.exportName}'`);
    if (e.allocation && selectsBaseAllocation(request.queries, !set)) {
      // LIST: the id is reserved there, and SHOULD be zero.
      this.optionReply(code, NBD.rep.metaContext, metaContextReply(set ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION));
      if (set) this.metaExport = e;
    }
    this.optionReply(code, NBD.rep.ack);
  }

  private transmit(e: NbdExport): void {
    // Contexts selected for another export do not apply to this one.
    if (this.metaExport !== e) this.metaExport = undefined;
    this.export = e;
    this.phase = 'request';
    this.events.connection?.(e.name, true);
  }

  /**
   * A reply without data: `error` (0: success). Once structured replies are negotiated an error is an ERROR chunk
   * with `message` (the protocol: a read MUST NOT get a simple reply then, and errors SHOULD be structured).
   */
  private reply(handle: Buffer, error: number, command: number, data?: Buffer, message?: string): void {
    if (this.phase === 'closed' || this.socket.destroyed) return;
    if (error !== 0 && this.structured) {
      this.sendChunks([errorChunk(handle, error, message ?? errorMessages[error] ?? 'request failed')]);
      this.events.request?.(this.export?.name ?? '', command, 0, error);
      return;
    }
    const h = Buffer.alloc(16);
    h.writeUInt32BE(NBD.simpleReplyMagic, 0);
    h.writeUInt32BE(error, 4);
    handle.copy(h, 8);
    if (data && error === 0) {
      this.socket.cork();
      this.socket.write(h);
      this.socket.write(data);
      this.socket.uncork();
    } else this.socket.write(h);
    this.events.request?.(this.export?.name ?? '', command, data && error === 0 ? data.length : 0, error);
  }

  private handleRequest(h: Buffer): void {
    if (h.readUInt32BE(0) !== NBD.requestMagic) return this.violation('bad request magic');
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const handle = Buffer.from(h.subarray(8, 16));
    const offset = h.readBigUInt64BE(16);
    const length = h.readUInt32BE(24);
    const e = this.export as NbdExport;
    switch (type) {
      case NBD.cmd.read: {
        if (flags !== 0 || length === 0 || length > NBD_MAX_PAYLOAD || offset + BigInt(length) > BigInt(e.size))
          return this.reply(handle, NBD.err.inval, type, undefined, 'bad read: flags, length or range');
        return this.read(handle, Number(offset), length);
      }
      case NBD.cmd.blockStatus: {
        if (this.metaExport !== e)
          return this.reply(handle, NBD.err.inval, type, undefined, 'no metadata context was negotiated');
        if ((flags & ~NBD.cmdFlag.reqOne) !== 0 || length === 0 || offset + BigInt(length) > BigInt(e.size))
          return this.reply(handle, NBD.err.inval, type, undefined, 'bad block status: flags, length or range');
        return this.blockStatus(handle, Number(offset), length, (flags & NBD.cmdFlag.reqOne) !== 0);
      }
      case NBD.cmd.write:
        // The payload follows the header whatever the answer: dropped, then refused.
        if (length > NBD_MAX_PAYLOAD) return this.violation(`write payload of ${length} bytes`);
        this.skipping = { left: length, handle };
        this.phase = 'writePayload';
        return;
      case NBD.cmd.trim:
      case NBD.cmd.writeZeroes:
        return this.reply(handle, NBD.err.perm, type);
      case NBD.cmd.flush:
        // Nothing is ever written: every flush has nothing to wait for.
        return this.reply(handle, flags === 0 && offset === 0n && length === 0 ? 0 : NBD.err.inval, type);
      case NBD.cmd.disc:
        this.disconnecting = true;
        this.maybeEnd();
        return;
      default:
        return this.reply(handle, NBD.err.inval, type);
    }
  }

  /**
   * A structured reply to a read: a chunk per piece (data, or a hole for zeros), then NONE with the DONE flag; or
   * one ERROR chunk (EIO) with DONE when the read failed.
   */
  private structuredRead(handle: Buffer, pieces: NbdExtent[] | undefined): void {
    const release = () => {
      for (const p of pieces ?? []) p.release?.();
    };
    if (this.phase === 'closed' || this.socket.destroyed) return release();
    const out: Buffer[][] = [];
    let sent = 0;
    if (!pieces) {
      out.push(errorChunk(handle, NBD.err.io, 'read failed (damaged data)'));
    } else {
      for (const piece of pieces) {
        if (piece.length === 0) continue;
        const at = Buffer.alloc(piece.data ? 8 : 12);
        at.writeBigUInt64BE(BigInt(piece.offset), 0);
        if (piece.data) {
          out.push(chunk(handle, 0, NBD.replyType.offsetData, at, piece.data));
          sent += piece.data.length;
        } else {
          at.writeUInt32BE(piece.length, 8);
          out.push(chunk(handle, 0, NBD.replyType.offsetHole, at));
        }
      }
      out.push(chunk(handle, NBD.replyFlagDone, NBD.replyType.none, Buffer.alloc(0)));
    }
    this.sendChunks(out, release);
    this.events.request?.(this.export?.name ?? '', NBD.cmd.read, sent, pieces ? 0 : NBD.err.io);
  }

  /**
   * The chunks of one structured reply, written together; `written` once the socket is done with them (written to
   * the kernel, or the socket destroyed: writes complete in order, so the last one's callback covers them all).
   */
  private sendChunks(chunks: Buffer[][], written?: () => void): void {
    const all = chunks.flat();
    this.socket.cork();
    all.forEach((b, i) =>
      i === all.length - 1 && written ? this.socket.write(b, () => written()) : this.socket.write(b),
    );
    this.socket.uncork();
  }

  /**
   * BLOCK_STATUS, already checked (the export offered `base:allocation`, the only context, and the client selected
   * it): one NBD_REPLY_TYPE_BLOCK_STATUS chunk flagged DONE; EIO when the export's allocation fails.
   */
  private blockStatus(handle: Buffer, offset: number, length: number, reqOne: boolean): void {
    const e = this.export as NbdExport;
    let payload: Buffer;
    try {
      const runs = e.allocation?.(offset, length) ?? [];
      payload = blockStatusPayload(BASE_ALLOCATION_ID, runs, offset, length, reqOne);
    } catch (err) {
      return this.reply(handle, NBD.err.io, NBD.cmd.blockStatus, undefined, (err as Error).message);
    }
    this.sendChunks([chunk(handle, NBD.replyFlagDone, NBD.replyType.blockStatus, payload)]);
    this.events.request?.(e.name, NBD.cmd.blockStatus, 0, 0);
  }

  private read(handle: Buffer, offset: number, length: number): void {
    const e = this.export as NbdExport;
    this.inFlight++;
    if (this.structured) {
      const pieces: Promise<NbdExtent[]> = e.readSparse
        ? e.readSparse(offset, length)
        : e.read(offset, length).then((data) => [{ offset, length, data }]);
      pieces
        .then(
          (list) => {
            const whole = list.reduce((n, p) => n + (p.data ? p.data.length : p.length), 0) === length;
            if (!whole) for (const p of list) p.release?.();
            this.structuredRead(handle, whole ? list : undefined);
          },
          () => this.structuredRead(handle, undefined),
        )
        .finally(() => {
          this.inFlight--;
          this.maybeEnd();
          this.maybeResume();
        });
      return;
    }
    e.read(offset, length)
      .then(
        (data) => {
          if (data.length !== length) this.reply(handle, NBD.err.io, NBD.cmd.read);
          else this.reply(handle, 0, NBD.cmd.read, data);
        },
        () => this.reply(handle, NBD.err.io, NBD.cmd.read),
      )
      .finally(() => {
        this.inFlight--;
        this.maybeEnd();
        this.maybeResume();
      });
  }

  /** After a disconnect request, the connection closes once every request in flight is answered. */
  private maybeEnd(): void {
    if (!this.disconnecting || this.inFlight > 0 || this.phase === 'closed') return;
    this.phase = 'closed';
    // The client closes first: QEMU 7.2 tears its NBD node down after sending DISC, and a server closing at once
    // raced that teardown (QEMU segfaulted as an instant restore's block pull ended). Closed here only if the
    // client has not done so within a second.
    const timer = setTimeout(() => this.socket.destroy(), 1000);
    timer.unref();
    this.socket.once('close', () => clearTimeout(timer));
  }

  /** Ends the connection now (server shutdown). */
  destroy(): void {
    this.phase = 'closed';
    this.socket.destroy();
  }
}

/**
 * The server on one Unix socket: the exports it names (a client asks for one by name, or for the default export,
 * the empty name, when there is only one). A stale socket file (no server answers on it) is replaced; a live one is
 * refused. The socket file is made private (0600).
 */
export class NbdServer {
  private readonly connections = new Set<NbdConnection>();
  private closing = false;

  private constructor(
    private readonly server: Server,
    readonly socketPath: string,
  ) {}

  static async listen(socketPath: string, list: NbdExport[], events: NbdServerEvents = {}): Promise<NbdServer> {
    if (list.length === 0) throw new Error('an NBD server needs at least one export');
    const map = new Map<string, NbdExport>();
    for (const e of list) {
      if (map.has(e.name)) throw new Error(`two exports named '${e.name}'`);
      if (Buffer.byteLength(e.name) > 4096) throw new Error(`export name longer than 4096 bytes`);
      map.set(e.name, e);
    }
    if (await socketAnswers(socketPath)) throw new Error(`another server already listens on ${socketPath}`);
    await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    // The connection handler needs the server object, made once the socket listens.
    const holder: { self?: NbdServer } = {};
    const server = createServer((socket) => {
      const s = holder.self;
      if (!s || s.closing) {
        socket.destroy();
        return;
      }
      const c = new NbdConnection(socket, map, events, () => s.closing);
      s.connections.add(c);
      socket.on('close', () => s.connections.delete(c));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await chmod(socketPath, 0o600);
    holder.self = new NbdServer(server, socketPath);
    return holder.self;
  }

  /** Open connections. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Stops listening, ends every connection and removes the socket file. */
  async close(): Promise<void> {
    this.closing = true;
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const c of this.connections) c.destroy();
    await closed;
    await unlink(this.socketPath).catch(() => undefined);
  }
}

/** Whether something accepts connections on the Unix socket `path`. */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

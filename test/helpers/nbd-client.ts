/**
 * A raw NBD client for tests of backup/nbd-server.ts: sends exactly the bytes a test builds (well-formed or not)
 * and reads the server's answers field by field, so each part of the protocol can be checked on its own.
 */
import { connect, type Socket } from 'node:net';
import { NBD } from '../../backup/nbd-server';

export class RawNbdClient {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  static async connect(path: string): Promise<RawNbdClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(path, () => resolve(s));
      s.once('error', reject);
    });
    return new RawNbdClient(socket);
  }

  /** Exactly `n` bytes; rejects when the server closes first. */
  async take(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((r) => {
        this.waiter = r;
        setTimeout(r, 100);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves once the server has closed the connection (nothing more to read). */
  async closedByServer(timeoutMs = 10_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  end(): void {
    this.socket.destroy();
  }

  /** Reads the server's greeting and answers with `clientFlags`; returns the handshake flags. */
  async greet(clientFlags = NBD.flagFixedNewstyle | NBD.flagNoZeroes): Promise<number> {
    const hello = await this.take(18);
    if (!hello.subarray(0, 8).equals(NBD.magic) || !hello.subarray(8, 16).equals(NBD.ihaveopt))
      throw new Error('not an NBD newstyle server');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return hello.readUInt16BE(16);
  }

  sendOption(code: number, data: Buffer = Buffer.alloc(0), magic: Buffer = NBD.ihaveopt): void {
    const h = Buffer.alloc(16);
    magic.copy(h, 0);
    h.writeUInt32BE(code, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  /** One option reply. */
  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.take(20);
    if (h.readBigUInt64BE(0) !== NBD.optReplyMagic) throw new Error('bad option reply magic');
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.take(length) };
  }

  /** The data of NBD_OPT_INFO / NBD_OPT_GO for `name` asking for `infos`. */
  static goData(name: string, infos: number[] = []): Buffer {
    const n = Buffer.from(name, 'utf8');
    const d = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    d.writeUInt16BE(infos.length, 4 + n.length);
    infos.forEach((t, i) => d.writeUInt16BE(t, 4 + n.length + 2 + 2 * i));
    return d;
  }

  /** The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT for `name` with `queries`. */
  static metaData(name: string, queries: string[]): Buffer {
    const parts = [Buffer.from(name, 'utf8'), ...queries.map((q) => Buffer.from(q, 'utf8'))];
    const d = Buffer.alloc(4 + parts[0].length + 4 + parts.slice(1).reduce((n, q) => n + 4 + q.length, 0));
    let at = d.writeUInt32BE(parts[0].length, 0);
    at += parts[0].copy(d, at);
    at = d.writeUInt32BE(queries.length, at);
    for (const q of parts.slice(1)) {
      at = d.writeUInt32BE(q.length, at);
      at += q.copy(d, at);
    }
    return d;
  }

  /** Replies to LIST/SET_META_CONTEXT up to the final one: the contexts (id, name) and the final reply type. */
  async metaReplies(): Promise<{ contexts: [number, string][]; final: number; message: string }> {
    const contexts: [number, string][] = [];
    for (;;) {
      const r = await this.optionReply();
      if (r.type === NBD.rep.metaContext) contexts.push([r.data.readUInt32BE(0), r.data.subarray(4).toString('utf8')]);
      else return { contexts, final: r.type, message: r.data.toString('utf8') };
    }
  }

  /** Replies to INFO/GO up to the final one: the infos by type, and the final reply type. */
  async infoReplies(): Promise<{ infos: Map<number, Buffer>; final: number; message: string }> {
    const infos = new Map<number, Buffer>();
    for (;;) {
      const r = await this.optionReply();
      if (r.type === NBD.rep.info) infos.set(r.data.readUInt16BE(0), r.data.subarray(2));
      else return { infos, final: r.type, message: r.data.toString('utf8') };
    }
  }

  /** Greets and enters transmission on `name` with NBD_OPT_GO; returns the export size. */
  async go(name: string): Promise<number> {
    await this.greet();
    this.sendOption(NBD.opt.go, RawNbdClient.goData(name, [NBD.info.blockSize]));
    const { infos, final, message } = await this.infoReplies();
    if (final !== NBD.rep.ack) throw new Error(`GO refused (${final}): ${message}`);
    return Number((infos.get(NBD.info.export) as Buffer).readBigUInt64BE(0));
  }

  sendRequest(
    type: number,
    handle: bigint,
    offset: bigint | number,
    length: number,
    flags = 0,
    magic: number = NBD.requestMagic,
  ) {
    const r = Buffer.alloc(28);
    r.writeUInt32BE(magic, 0);
    r.writeUInt16BE(flags, 4);
    r.writeUInt16BE(type, 6);
    r.writeBigUInt64BE(handle, 8);
    r.writeBigUInt64BE(BigInt(offset), 16);
    r.writeUInt32BE(length, 24);
    this.write(r);
  }

  /** One simple reply; its data when it is a successful read (`lengths` by handle says how much). */
  async reply(lengths: Map<bigint, number>): Promise<{ handle: bigint; error: number; data?: Buffer }> {
    const h = await this.take(16);
    if (h.readUInt32BE(0) !== NBD.simpleReplyMagic) throw new Error('bad reply magic');
    const error = h.readUInt32BE(4);
    const handle = h.readBigUInt64BE(8);
    const length = lengths.get(handle);
    lengths.delete(handle);
    if (error === 0 && length !== undefined) return { handle, error, data: Buffer.from(await this.take(length)) };
    return { handle, error };
  }

  /** The chunks of one structured reply, up to the one with the DONE flag. */
  async structuredReply(): Promise<{ handle: bigint; flags: number; type: number; payload: Buffer }[]> {
    const chunks: { handle: bigint; flags: number; type: number; payload: Buffer }[] = [];
    for (;;) {
      const h = await this.take(20);
      if (h.readUInt32BE(0) !== NBD.structuredReplyMagic) throw new Error('bad structured reply magic');
      const chunk = {
        flags: h.readUInt16BE(4),
        type: h.readUInt16BE(6),
        handle: h.readBigUInt64BE(8),
        payload: Buffer.from(await this.take(h.readUInt32BE(16))),
      };
      chunks.push(chunk);
      if (chunk.flags & NBD.replyFlagDone) return chunks;
    }
  }

  /**
   * BLOCK_STATUS for `length` bytes at `offset` (structured replies and a context negotiated): the context id and
   * descriptors of its one chunk, or the error of an ERROR chunk.
   */
  async blockStatus(
    offset: bigint | number,
    length: number,
    flags = 0,
    handle = 77n,
  ): Promise<{ id?: number; extents?: [number, number][]; error?: number; message?: string }> {
    this.sendRequest(NBD.cmd.blockStatus, handle, offset, length, flags);
    const chunks = await this.structuredReply();
    if (chunks.some((c) => c.handle !== handle)) throw new Error('a reply to another handle');
    if (chunks.length !== 1) throw new Error(`${chunks.length} chunks in a block status reply`);
    const [c] = chunks;
    if (c.type === NBD.replyType.error) {
      const n = c.payload.readUInt16BE(4);
      return { error: c.payload.readUInt32BE(0), message: c.payload.subarray(6, 6 + n).toString('utf8') };
    }
    if (c.type !== NBD.replyType.blockStatus) throw new Error(`chunk type ${c.type} in a block status reply`);
    const extents: [number, number][] = [];
    for (let at = 4; at < c.payload.length; at += 8)
      extents.push([c.payload.readUInt32BE(at), c.payload.readUInt32BE(at + 4)]);
    return { id: c.payload.readUInt32BE(0), extents };
  }

  /** Reads `length` bytes at `offset` (one request); rejects with the NBD error number. */
  async read(offset: number, length: number, handle = 1n): Promise<Buffer> {
    this.sendRequest(NBD.cmd.read, handle, offset, length);
    const r = await this.reply(new Map([[handle, length]]));
    if (r.error !== 0) throw Object.assign(new Error(`NBD error ${r.error}`), { nbdError: r.error });
    return r.data as Buffer;
  }
}

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** One extent of `qemu-img map --output=json`. */
export interface MapExtent {
  start: number;
  length: number;
  /** Index in the backing chain of the layer that holds it (0: the image itself). */
  depth: number;
  /** Allocated in some layer (older QEMU versions omit it: then `data || zero` stands for it). */
  present: boolean;
  zero: boolean;
  data: boolean;
}

/** An image's backing chain, the image first. */
export interface ImageChain {
  files: string[];
  formats: string[];
  virtualSize: number;
}

async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await run('qemu-img', args, { maxBuffer: 256 * 1024 * 1024 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`qemu-img ${args[0]} failed: ${(e.stderr || e.message).trim()}`);
  }
}

/** The backing chain of `file` (`qemu-img info --backing-chain -U`: the image may be in use by a running VM). */
export async function imageChain(file: string): Promise<ImageChain> {
  const infos = JSON.parse(await qemuImg(['info', '--backing-chain', '--output=json', '-U', file])) as {
    filename: string;
    format: string;
    'virtual-size': number;
  }[];
  // Backing file names may be relative to the file that names them.
  const files: string[] = [];
  for (const [i, info] of infos.entries()) {
    files.push(i === 0 ? resolve(file) : resolve(dirname(files[i - 1]), info.filename));
  }
  return {
    files,
    formats: infos.map((i) => i.format),
    virtualSize: infos[0]['virtual-size'],
  };
}

/** Allocation map of `file` over its whole chain (`qemu-img map --output=json -U`). */
export async function imageMap(file: string, format: string): Promise<MapExtent[]> {
  const raw = JSON.parse(await qemuImg(['map', '--output=json', '-U', '-f', format, file])) as Partial<MapExtent>[];
  return raw.map((e) => ({
    start: Number(e.start),
    length: Number(e.length),
    depth: Number(e.depth ?? 0),
    present: e.present ?? Boolean(e.data || e.zero),
    zero: Boolean(e.zero),
    data: Boolean(e.data),
  }));
}

const NBD = {
  magic: Buffer.from('NBDMAGIC', 'ascii'),
  ihaveopt: Buffer.from('IHAVEOPT', 'ascii'),
  flagFixedNewstyle: 1,
  flagNoZeroes: 2,
  optExportName: 1,
  requestMagic: 0x25609513,
  replyMagic: 0x67446698,
  cmdRead: 0,
  cmdDisc: 2,
} as const;

/** How long `open` waits for qemu-nbd to listen, and `close` for it to exit after the disconnect. */
const LISTEN_TIMEOUT_MS = 60_000;
const EXIT_GRACE_MS = 2_000;

/**
 * A read-only view of an image as it is (the chain at a frozen snapshot layer), served by `qemu-nbd -r` on a
 * private Unix socket and read over NBD (a minimal client: fixed newstyle handshake, simple replies, pipelined
 * reads). qemu-nbd serves one client and exits when it disconnects, so it does not outlive a killed reader.
 *
 * qemu-nbd runs as this process's own child (not `--fork`ed away): its exit is seen at once, and it is reaped by
 * this process rather than left a zombie for whatever init the machine has (which made every close wait a second
 * for a process that had already stopped). Replies are copied once, from the socket straight into the buffer each
 * read returns.
 */
export class ImageReader {
  /** Handshake bytes not consumed yet. */
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;
  private readonly pending = new Map<
    bigint,
    { length: number; resolve: (b: Buffer) => void; reject: (e: Error) => void }
  >();
  private nextHandle = 1n;
  /** Reply parsing (after the handshake): a partial header, then the reply whose data is being copied. */
  private replies = false;
  private header = Buffer.alloc(16);
  private headerFill = 0;
  private current: { data: Buffer; fill: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private closing = false;

  private constructor(
    private readonly socket: Socket,
    private readonly child: ChildProcess,
    private readonly exited: Promise<void>,
    private readonly dir: string,
    readonly size: number,
  ) {}

  /**
   * Serves `file` (format `format`, with its backing chain, shared read-only: the frozen layers of a running VM)
   * and connects to it.
   */
  static async open(file: string, format: string): Promise<ImageReader> {
    const dir = await mkdtemp(join(tmpdir(), 'groupsnap-nbd-'));
    const sock = join(dir, 'nbd.sock');
    const opts = `driver=${format},force-share=on,read-only=on,file.driver=file,file.filename=${file.replace(/,/g, ',,')}`;
    const child = spawn('qemu-nbd', ['-r', '--image-opts', '-k', sock, opts], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (d) => (stderr += d));
    let exitCode: number | null | undefined;
    const exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        exitCode = code ?? (signal ? -1 : null);
        resolve();
      });
      child.once('error', (err) => {
        stderr += err.message;
        exitCode = -1;
        resolve();
      });
    });
    try {
      // qemu-nbd listens once the socket accepts a connection: try until it does, or until it exits.
      const deadline = Date.now() + LISTEN_TIMEOUT_MS;
      let socket: Socket | undefined;
      while (!socket) {
        if (exitCode !== undefined) throw new Error(`qemu-nbd on ${file} failed (${exitCode}): ${stderr.trim()}`);
        if (Date.now() > deadline) throw new Error(`qemu-nbd on ${file} did not listen within ${LISTEN_TIMEOUT_MS} ms`);
        socket = await new Promise<Socket | undefined>((resolve) => {
          const s = connect(sock, () => resolve(s));
          s.once('error', () => {
            s.destroy();
            setTimeout(() => resolve(undefined), 5);
          });
        });
      }
      const reader = new ImageReader(socket, child, exited, dir, 0);
      socket.on('data', (d: Buffer) => reader.onData(d));
      socket.on('error', (e) => reader.fail(e));
      socket.on('close', () => reader.fail(new Error('NBD connection closed')));
      const size = await reader.handshake();
      (reader as { size: number }).size = size;
      reader.startReplies();
      return reader;
    } catch (err) {
      if (exitCode === undefined) child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  private onData(d: Buffer): void {
    if (this.replies) {
      try {
        this.parseReplies(d);
      } catch (err) {
        this.fail(err as Error);
        this.socket.destroy();
      }
      return;
    }
    this.buffered.push(d);
    this.bufferedBytes += d.length;
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = this.closing ? new Error('image reader closed') : err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
    this.current?.reject(this.failure);
    this.current = undefined;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  /** Exactly `n` bytes from the socket (handshake only). */
  private async take(n: number): Promise<Buffer> {
    while (this.bufferedBytes < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((r) => (this.waiter = r));
    }
    const all = this.buffered.length === 1 ? this.buffered[0] : Buffer.concat(this.buffered);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.buffered = rest.length ? [rest] : [];
    this.bufferedBytes = rest.length;
    return out;
  }

  private async handshake(): Promise<number> {
    const hello = await this.take(18);
    if (!hello.subarray(0, 8).equals(NBD.magic) || !hello.subarray(8, 16).equals(NBD.ihaveopt)) {
      throw new Error('qemu-nbd did not speak fixed newstyle NBD');
    }
    const serverFlags = hello.readUInt16BE(16);
    const noZeroes = (serverFlags & NBD.flagNoZeroes) !== 0;
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(NBD.flagFixedNewstyle | (noZeroes ? NBD.flagNoZeroes : 0));
    const opt = Buffer.alloc(16);
    NBD.ihaveopt.copy(opt, 0);
    opt.writeUInt32BE(NBD.optExportName, 8);
    opt.writeUInt32BE(0, 12); // default export, empty name
    this.socket.write(Buffer.concat([clientFlags, opt]));
    const reply = await this.take(10 + (noZeroes ? 0 : 124));
    return Number(reply.readBigUInt64BE(0));
  }

  /** From now on replies are parsed as they arrive (whatever the handshake left over first). */
  private startReplies(): void {
    this.replies = true;
    const rest = this.buffered;
    this.buffered = [];
    this.bufferedBytes = 0;
    for (const d of rest) this.onData(d);
  }

  /** Simple replies: a 16-byte header, then (for a successful read) the data, copied into the read's buffer. */
  private parseReplies(d: Buffer): void {
    let pos = 0;
    while (pos < d.length) {
      const cur = this.current;
      if (cur) {
        const n = Math.min(cur.data.length - cur.fill, d.length - pos);
        d.copy(cur.data, cur.fill, pos, pos + n);
        cur.fill += n;
        pos += n;
        if (cur.fill === cur.data.length) {
          this.current = undefined;
          cur.resolve(cur.data);
        }
        continue;
      }
      const n = Math.min(16 - this.headerFill, d.length - pos);
      d.copy(this.header, this.headerFill, pos, pos + n);
      this.headerFill += n;
      pos += n;
      if (this.headerFill < 16) return;
      this.headerFill = 0;
      if (this.header.readUInt32BE(0) !== NBD.replyMagic) throw new Error('bad NBD reply magic');
      const error = this.header.readUInt32BE(4);
      const handle = this.header.readBigUInt64BE(8);
      const p = this.pending.get(handle);
      if (!p) throw new Error(`NBD reply for unknown handle ${handle}`);
      this.pending.delete(handle);
      if (error !== 0) p.reject(new Error(`NBD read failed with error ${error}`));
      else this.current = { data: Buffer.allocUnsafe(p.length), fill: 0, resolve: p.resolve, reject: p.reject };
    }
  }

  /** `length` bytes at `offset` (several reads may be in flight at once). */
  read(offset: number, length: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (offset < 0 || length <= 0 || offset + length > this.size) {
      return Promise.reject(new RangeError(`read of ${length} at ${offset} outside an image of ${this.size} bytes`));
    }
    const handle = this.nextHandle++;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(NBD.requestMagic, 0);
    req.writeUInt16BE(0, 4);
    req.writeUInt16BE(NBD.cmdRead, 6);
    req.writeBigUInt64BE(handle, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(handle, { length, resolve, reject });
      this.socket.write(req);
    });
  }

  /** Disconnects; qemu-nbd then exits (it is killed if it has not within a grace period). */
  async close(): Promise<void> {
    this.closing = true;
    if (!this.socket.destroyed) {
      const req = Buffer.alloc(28);
      req.writeUInt32BE(NBD.requestMagic, 0);
      req.writeUInt16BE(NBD.cmdDisc, 6);
      req.writeBigUInt64BE(randomBytes(8).readBigUInt64BE(0), 8);
      await new Promise<void>((r) => this.socket.end(req, () => r()));
      this.socket.destroy();
    }
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), EXIT_GRACE_MS)));
    if ((await Promise.race([this.exited, late])) === 'late') {
      this.child.kill('SIGTERM');
      await this.exited;
    }
    clearTimeout(timer);
    await rm(this.dir, { recursive: true, force: true });
  }
}

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
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

/**
 * A read-only view of an image as it is (the chain at a frozen snapshot layer), served by `qemu-nbd -r` on a
 * private Unix socket and read over NBD (a minimal client: fixed newstyle handshake, simple replies, pipelined
 * reads). qemu-nbd serves one client and exits when it disconnects, so it does not outlive a killed reader.
 */
export class ImageReader {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;
  private readonly pending = new Map<
    bigint,
    { length: number; resolve: (b: Buffer) => void; reject: (e: Error) => void }
  >();
  private nextHandle = 1n;
  private reading = false;

  private constructor(
    private readonly socket: Socket,
    private readonly pidFile: string,
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
    const pidFile = join(dir, 'qemu-nbd.pid');
    const opts = `driver=${format},force-share=on,read-only=on,file.driver=file,file.filename=${file.replace(/,/g, ',,')}`;
    try {
      // --fork returns once the socket listens.
      await new Promise<void>((resolve, reject) => {
        const child = spawn('qemu-nbd', ['-r', '--image-opts', '-k', sock, '--fork', '--pid-file', pidFile, opts], {
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr.on('data', (d) => (stderr += d));
        child.on('error', reject);
        child.on('exit', (code) =>
          code === 0 ? resolve() : reject(new Error(`qemu-nbd on ${file} failed (${code}): ${stderr.trim()}`)),
        );
      });
      const socket = await new Promise<Socket>((resolve, reject) => {
        const s = connect(sock, () => resolve(s));
        s.once('error', reject);
      });
      const reader = new ImageReader(socket, pidFile, dir, 0);
      socket.on('data', (d: Buffer) => reader.onData(d));
      socket.on('error', (e) => reader.fail(e));
      socket.on('close', () => reader.fail(new Error('NBD connection closed')));
      const size = await reader.handshake();
      (reader as { size: number }).size = size;
      reader.reading = true;
      void reader.replyLoop();
      return reader;
    } catch (err) {
      await killPidFile(pidFile);
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  private onData(d: Buffer): void {
    this.buffered.push(d);
    this.bufferedBytes += d.length;
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  /** Exactly `n` bytes from the socket. */
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

  private async replyLoop(): Promise<void> {
    try {
      while (this.reading) {
        const head = await this.take(16);
        if (head.readUInt32BE(0) !== NBD.replyMagic) throw new Error('bad NBD reply magic');
        const error = head.readUInt32BE(4);
        const handle = head.readBigUInt64BE(8);
        const p = this.pending.get(handle);
        if (!p) throw new Error(`NBD reply for unknown handle ${handle}`);
        this.pending.delete(handle);
        if (error !== 0) p.reject(new Error(`NBD read failed with error ${error}`));
        else p.resolve(Buffer.from(await this.take(p.length)));
      }
    } catch (err) {
      if (this.reading) this.fail(err as Error);
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

  /** Disconnects; qemu-nbd then exits (it is also killed, in case it did not). */
  async close(): Promise<void> {
    this.reading = false;
    if (!this.socket.destroyed) {
      const req = Buffer.alloc(28);
      req.writeUInt32BE(NBD.requestMagic, 0);
      req.writeUInt16BE(NBD.cmdDisc, 6);
      req.writeBigUInt64BE(randomBytes(8).readBigUInt64BE(0), 8);
      await new Promise<void>((r) => this.socket.end(req, () => r()));
      this.socket.destroy();
    }
    await killPidFile(this.pidFile);
    await rm(this.dir, { recursive: true, force: true });
  }
}

async function killPidFile(pidFile: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await readFile(pidFile, 'utf8')).trim());
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 1) return;
  // Give it a moment to exit on its own after the disconnect, then make sure.
  for (let i = 0; i < 20; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    // already gone
  }
}

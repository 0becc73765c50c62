/**
 * The NBD server of a point (backup/nbd-server.ts, backup/chunk-cache.ts, backup/serve.ts) over a file-store
 * repository, spoken to byte by byte: the fixed newstyle handshake and its options, reads answered by handle,
 * every kind of bad request, a damaged chunk (EIO for its range only), a store outage (requests held, then
 * answered), the cache's bounds and single flight, and the status file.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkCache } from '../../backup/chunk-cache';
import { TransientStoreError } from '../../backup/errors';
import { blockStatusPayload } from '../../backup/nbd-block-status';
import { NBD, NbdServer } from '../../backup/nbd-server';
import { Repository } from '../../backup/repository';
import { runServe, ServeInputError, type RunningServe, type ServeSpec, type ServeStatus } from '../../backup/serve';
import type { GetOptions, ObjectStore } from '../../backup/store';
import { RawNbdClient } from '../helpers/nbd-client';
import { writeTestPoint } from '../helpers/repo-points';

// Generous: the unit tier runs many files at once on a shared machine (the tests wait for behaviour, not time).
jest.setTimeout(60_000);
const CHUNK = 64 * 1024;
const GROUP = 'shop';
const POINT = 'gs-20261207T080000Z-nbd001';

/** A store in front of another whose chunk reads fail as an unreachable store would while `down`. */
class OutageStore implements ObjectStore {
  down = false;
  chunkGets = 0;
  constructor(private readonly inner: ObjectStore) {}
  get url() {
    return this.inner.url;
  }
  checkLocation() {
    return this.inner.checkLocation();
  }
  async get(key: string, opts?: GetOptions) {
    if (key.startsWith('chunks/')) {
      this.chunkGets++;
      if (this.down) throw new TransientStoreError(`connect ECONNREFUSED (test outage) for ${key}`);
    }
    return this.inner.get(key, opts);
  }
  put(key: string, body: Buffer) {
    return this.inner.put(key, body);
  }
  exists(key: string) {
    return this.inner.exists(key);
  }
  putIfAbsent(key: string, body: Buffer) {
    return this.inner.putIfAbsent!(key, body);
  }
  list(prefix: string) {
    return this.inner.list(prefix);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  close() {
    this.inner.close();
  }
}

let dir: string;
let url: string;
let keyFile: string;
let content: Buffer;
let chunkIds: (string | null)[];
let store: OutageStore;
let server: RunningServe;
let socket: string;

const spec = (over: Partial<ServeSpec> = {}): ServeSpec =>
  ({
    version: 1,
    repo: url,
    keyFile,
    group: GROUP,
    snapshotId: POINT,
    exports: [{ domain: 'db-1', target: 'vda', socket, exportName: 'db-1-vda' }],
    dir: join(dir, 'serve'),
    cacheBytes: 16 * 1024 * 1024,
    ...over,
  }) as ServeSpec;

const status = (of = 'serve'): ServeStatus =>
  JSON.parse(readFileSync(join(dir, of, 'status.json'), 'utf8')) as ServeStatus;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gs-nbd-unit-'));
  url = `file://${join(dir, 'repo')}`;
  const key = randomBytes(32);
  keyFile = join(dir, 'repo.key');
  writeFileSync(keyFile, key.toString('base64'), { mode: 0o600 });
  const repo = await Repository.init(url, key, { chunkSize: CHUNK });
  // 6 chunks: data, zeros, data, data, data, a data chunk shared with the first (dedup).
  const a = randomBytes(CHUNK);
  const data = [a, null, randomBytes(CHUNK), randomBytes(CHUNK), randomBytes(CHUNK), a];
  content = Buffer.concat(data.map((d) => d ?? Buffer.alloc(CHUNK)));
  chunkIds = await writeTestPoint(repo, GROUP, POINT, '2026-12-07T08:00:00.000Z', data);
  repo.close();
  socket = join(dir, 'nbd.sock');
  mkdirSync(join(dir, 'serve'), { mode: 0o700 });
  server = await runServe(spec(), {
    openRepository: async (u, k) => {
      const inner = await Repository.open(u, k);
      store = new OutageStore(inner.store);
      inner.close();
      return Repository.open(u, k, { store });
    },
  });
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A client of the server on `path` in transmission on export `name`, with structured replies negotiated. */
async function structuredGo(path: string, name: string): Promise<RawNbdClient> {
  const c = await RawNbdClient.connect(path);
  await c.greet();
  c.sendOption(NBD.opt.structuredReply);
  expect((await c.optionReply()).type).toBe(NBD.rep.ack);
  c.sendOption(NBD.opt.go, RawNbdClient.goData(name));
  expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
  return c;
}

describe('handshake', () => {
  it('greets with fixed newstyle and no-zeroes, lists its exports, and answers INFO', async () => {
    const c = await RawNbdClient.connect(socket);
    expect(await c.greet()).toBe(NBD.flagFixedNewstyle | NBD.flagNoZeroes);
    c.sendOption(NBD.opt.list);
    const server1 = await c.optionReply();
    expect(server1.type).toBe(NBD.rep.server);
    expect(server1.data.subarray(4).toString()).toBe('db-1-vda');
    expect((await c.optionReply()).type).toBe(NBD.rep.ack);
    // LIST takes no data.
    c.sendOption(NBD.opt.list, Buffer.from('x'));
    expect((await c.optionReply()).type).toBe(NBD.rep.errInvalid);
    c.sendOption(
      NBD.opt.info,
      RawNbdClient.goData('db-1-vda', [NBD.info.blockSize, NBD.info.name, NBD.info.description]),
    );
    const info = await c.infoReplies();
    expect(info.final).toBe(NBD.rep.ack);
    const exp = info.infos.get(NBD.info.export) as Buffer;
    expect(Number(exp.readBigUInt64BE(0))).toBe(content.length);
    const flags = exp.readUInt16BE(8);
    expect(flags & NBD.tflag.readOnly).toBeTruthy();
    expect(flags & NBD.tflag.sendFlush).toBeTruthy();
    expect((info.infos.get(NBD.info.blockSize) as Buffer).readUInt32BE(8)).toBe(32 * 1024 * 1024);
    expect((info.infos.get(NBD.info.name) as Buffer).toString()).toBe('db-1-vda');
    expect((info.infos.get(NBD.info.description) as Buffer).toString()).toContain(POINT);
    // The default export (empty name) is the only one; an unknown name is refused without closing.
    c.sendOption(NBD.opt.info, RawNbdClient.goData(''));
    expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
    c.sendOption(NBD.opt.go, RawNbdClient.goData('nope'));
    expect((await c.infoReplies()).final).toBe(NBD.rep.errUnknown);
    // A malformed INFO: the request count does not match the data.
    const bad = RawNbdClient.goData('db-1-vda', [NBD.info.name]);
    c.sendOption(NBD.opt.info, bad.subarray(0, bad.length - 1));
    expect((await c.infoReplies()).final).toBe(NBD.rep.errInvalid);
    // STARTTLS and unknown options (with data, skipped) are unsupported.
    for (const [opt, data] of [
      [NBD.opt.startTls, Buffer.alloc(0)],
      [99, randomBytes(300)],
    ] as const) {
      c.sendOption(opt, data);
      const r = await c.optionReply();
      expect([r.option, r.type]).toEqual([opt, NBD.rep.errUnsup]);
    }
    // Then GO still works on the same connection.
    c.sendOption(NBD.opt.go, RawNbdClient.goData('db-1-vda'));
    expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
    expect(await c.read(0, 512)).toEqual(content.subarray(0, 512));
    c.end();
  });

  it('enters transmission with EXPORT_NAME (with and without the 124 zero bytes)', async () => {
    for (const noZeroes of [true, false]) {
      const c = await RawNbdClient.connect(socket);
      await c.greet(NBD.flagFixedNewstyle | (noZeroes ? NBD.flagNoZeroes : 0));
      c.sendOption(NBD.opt.exportName, Buffer.from('db-1-vda'));
      const r = await c.take(noZeroes ? 10 : 134);
      expect(Number(r.readBigUInt64BE(0))).toBe(content.length);
      if (!noZeroes) expect(r.subarray(10).equals(Buffer.alloc(124))).toBe(true);
      expect(await c.read(CHUNK - 100, 200)).toEqual(content.subarray(CHUNK - 100, CHUNK + 100));
      c.end();
    }
  });

  it('closes on an unknown export by EXPORT_NAME, a bad option magic, unknown client flags; ABORT is acknowledged', async () => {
    let c = await RawNbdClient.connect(socket);
    await c.greet();
    c.sendOption(NBD.opt.exportName, Buffer.from('nope'));
    expect(await c.closedByServer()).toBe(true);
    c = await RawNbdClient.connect(socket);
    await c.greet();
    c.sendOption(NBD.opt.list, Buffer.alloc(0), Buffer.from('IHAVEOPX'));
    expect(await c.closedByServer()).toBe(true);
    c = await RawNbdClient.connect(socket);
    await c.greet(NBD.flagFixedNewstyle | 0x80);
    expect(await c.closedByServer()).toBe(true);
    c = await RawNbdClient.connect(socket);
    await c.greet();
    c.sendOption(NBD.opt.abort);
    expect((await c.optionReply()).type).toBe(NBD.rep.ack);
    expect(await c.closedByServer()).toBe(true);
  });
});

describe('transmission', () => {
  it('answers concurrent reads by handle: across chunks, zero chunks, the last byte', async () => {
    const c = await RawNbdClient.connect(socket);
    await c.go('db-1-vda');
    const ranges: [number, number][] = [
      [0, content.length],
      [CHUNK + 7, 3 * CHUNK],
      [CHUNK, CHUNK],
      [content.length - 1, 1],
      [123, 4567],
      [5 * CHUNK - 1, 2],
    ];
    const lengths = new Map<bigint, number>();
    ranges.forEach(([off, len], i) => {
      lengths.set(BigInt(1000 + i), len);
      c.sendRequest(NBD.cmd.read, BigInt(1000 + i), off, len);
    });
    for (let n = 0; n < ranges.length; n++) {
      const r = await c.reply(lengths);
      const [off, len] = ranges[Number(r.handle) - 1000];
      expect(r.error).toBe(0);
      expect((r.data as Buffer).equals(content.subarray(off, off + len))).toBe(true);
    }
    c.end();
  });

  it('refuses bad requests with EINVAL, writes with EPERM, and stays usable', async () => {
    const c = await RawNbdClient.connect(socket);
    await c.go('db-1-vda');
    const size = content.length;
    const cases: [string, () => void, number][] = [
      ['read past the end', () => c.sendRequest(NBD.cmd.read, 1n, size - 10, 11), NBD.err.inval],
      ['read at a huge offset', () => c.sendRequest(NBD.cmd.read, 2n, 2n ** 63n, 1), NBD.err.inval],
      ['read of length 0', () => c.sendRequest(NBD.cmd.read, 3n, 0, 0), NBD.err.inval],
      ['read over 32 MiB', () => c.sendRequest(NBD.cmd.read, 4n, 0, 33 * 1024 * 1024), NBD.err.inval],
      ['read with a flag', () => c.sendRequest(NBD.cmd.read, 5n, 0, 512, 1), NBD.err.inval],
      ['unknown command', () => c.sendRequest(42, 6n, 0, 512), NBD.err.inval],
      ['block status (not negotiated)', () => c.sendRequest(NBD.cmd.blockStatus, 7n, 0, 512), NBD.err.inval],
      ['trim', () => c.sendRequest(NBD.cmd.trim, 8n, 0, 512), NBD.err.perm],
      ['write zeroes', () => c.sendRequest(NBD.cmd.writeZeroes, 9n, 0, 512), NBD.err.perm],
      [
        'write (its payload is skipped)',
        () => {
          c.sendRequest(NBD.cmd.write, 10n, 0, 1000);
          c.write(Buffer.alloc(1000, 0x55));
        },
        NBD.err.perm,
      ],
      ['flush', () => c.sendRequest(NBD.cmd.flush, 11n, 0, 0), 0],
      ['flush with an offset', () => c.sendRequest(NBD.cmd.flush, 12n, 512, 0), NBD.err.inval],
    ];
    for (const [what, send, error] of cases) {
      send();
      const r = await c.reply(new Map());
      expect({ what, error: r.error }).toEqual({ what, error });
    }
    expect(await c.read(0, 1000)).toEqual(content.subarray(0, 1000));
    c.end();
  });

  it('closes the connection on a bad request magic, and after DISC once reads in flight are answered', async () => {
    let c = await RawNbdClient.connect(socket);
    await c.go('db-1-vda');
    c.sendRequest(NBD.cmd.read, 1n, 0, 512, 0, 0x12345678);
    expect(await c.closedByServer()).toBe(true);
    c = await RawNbdClient.connect(socket);
    await c.go('db-1-vda');
    c.sendRequest(NBD.cmd.read, 1n, 2 * CHUNK, CHUNK);
    c.sendRequest(NBD.cmd.disc, 2n, 0, 0);
    const r = await c.reply(new Map([[1n, CHUNK]]));
    expect(r.data?.equals(content.subarray(2 * CHUNK, 3 * CHUNK))).toBe(true);
    expect(await c.closedByServer()).toBe(true);
  });

  it('with structured replies negotiated, a read is data chunks and holes for zero chunks, then DONE', async () => {
    const c = await RawNbdClient.connect(socket);
    await c.greet();
    c.sendOption(NBD.opt.structuredReply, Buffer.from('x'));
    expect((await c.optionReply()).type).toBe(NBD.rep.errInvalid);
    c.sendOption(NBD.opt.structuredReply);
    expect((await c.optionReply()).type).toBe(NBD.rep.ack);
    c.sendOption(NBD.opt.go, RawNbdClient.goData('db-1-vda'));
    expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
    // Chunk 1 is the zero chunk: a read across chunks 0-2 is data, a hole, data.
    c.sendRequest(NBD.cmd.read, 7n, 100, 3 * CHUNK - 200);
    const chunks = await c.structuredReply();
    expect(chunks.map((k) => [k.handle, k.type, k.flags])).toEqual([
      [7n, NBD.replyType.offsetData, 0],
      [7n, NBD.replyType.offsetHole, 0],
      [7n, NBD.replyType.offsetData, 0],
      [7n, NBD.replyType.none, NBD.replyFlagDone],
    ]);
    const read = Buffer.alloc(3 * CHUNK);
    for (const k of chunks.slice(0, 3)) {
      const at = Number(k.payload.readBigUInt64BE(0));
      if (k.type === NBD.replyType.offsetHole) expect([at, k.payload.readUInt32BE(8)]).toEqual([CHUNK, CHUNK]);
      else k.payload.subarray(8).copy(read, at);
    }
    expect(read.subarray(100, 3 * CHUNK - 100).equals(content.subarray(100, 3 * CHUNK - 100))).toBe(true);
    // A read within the zero chunk is one hole; other commands keep simple replies.
    c.sendRequest(NBD.cmd.read, 8n, CHUNK + 10, 20);
    expect((await c.structuredReply()).map((k) => k.type)).toEqual([NBD.replyType.offsetHole, NBD.replyType.none]);
    c.sendRequest(NBD.cmd.flush, 9n, 0, 0);
    expect(await c.reply(new Map())).toEqual({ handle: 9n, error: 0 });
    c.end();
  });

  it("releases a structured read's pieces once the reply is written, or at once when the connection is gone", async () => {
    const released: string[] = [];
    let answer: (() => void) | undefined;
    const exp = {
      name: 'spy',
      size: 4096,
      read: async () => Buffer.alloc(0),
      readSparse: async (offset: number, length: number) => {
        if (offset === 2048) await new Promise<void>((r) => (answer = r));
        return [
          {
            offset,
            length: length / 2,
            data: Buffer.alloc(length / 2, 1),
            release: () => released.push(`${offset}:data`),
          },
          { offset: offset + length / 2, length: length / 2, release: () => released.push(`${offset}:hole`) },
        ];
      },
    };
    const path = join(dir, 'spy.sock');
    const srv = await NbdServer.listen(path, [exp]);
    try {
      const c = await structuredGo(path, 'spy');
      c.sendRequest(NBD.cmd.read, 1n, 0, 1024);
      const reply = await c.structuredReply();
      expect(reply.map((k) => k.type)).toEqual([
        NBD.replyType.offsetData,
        NBD.replyType.offsetHole,
        NBD.replyType.none,
      ]);
      expect(released.sort()).toEqual(['0:data', '0:hole']);
      // A read answered after its client went away: nothing is written, its pieces are released all the same.
      c.sendRequest(NBD.cmd.read, 2n, 2048, 1024);
      for (let i = 0; i < 100 && !answer; i++) await new Promise((r) => setTimeout(r, 10));
      c.end();
      await new Promise((r) => setTimeout(r, 50));
      answer!();
      for (let i = 0; i < 100 && released.length < 4; i++) await new Promise((r) => setTimeout(r, 10));
      expect(released.filter((r) => r.startsWith('2048:')).sort()).toEqual(['2048:data', '2048:hole']);
    } finally {
      await srv.close();
    }
  });

  it('serves many connections at once', async () => {
    const clients = await Promise.all([0, 1, 2, 3, 4, 5].map(() => RawNbdClient.connect(socket)));
    await Promise.all(clients.map((c) => c.go('db-1-vda')));
    const got = await Promise.all(clients.map((c, i) => c.read(i * CHUNK, CHUNK)));
    got.forEach((g, i) => expect(g.equals(content.subarray(i * CHUNK, (i + 1) * CHUNK))).toBe(true));
    for (const c of clients) c.end();
  });
});

describe('block status (base:allocation)', () => {
  const HOLE_ZERO = NBD.state.hole | NBD.state.zero;

  /** A connection with structured replies whose SET_META_CONTEXT asked for `queries` on `name`. */
  async function negotiated(queries: string[], name = 'db-1-vda', path = socket) {
    const c = await RawNbdClient.connect(path);
    await c.greet();
    c.sendOption(NBD.opt.structuredReply);
    expect((await c.optionReply()).type).toBe(NBD.rep.ack);
    c.sendOption(NBD.opt.setMetaContext, RawNbdClient.metaData(name, queries));
    const set = await c.metaReplies();
    return { c, set };
  }

  it('lists and selects base:allocation only after structured replies, ignoring other queries', async () => {
    const c = await RawNbdClient.connect(socket);
    await c.greet();
    for (const opt of [NBD.opt.listMetaContext, NBD.opt.setMetaContext]) {
      c.sendOption(opt, RawNbdClient.metaData('db-1-vda', ['base:allocation']));
      expect(await c.metaReplies()).toMatchObject({ contexts: [], final: NBD.rep.errInvalid });
    }
    c.sendOption(NBD.opt.structuredReply);
    expect((await c.optionReply()).type).toBe(NBD.rep.ack);
    const list = async (name: string, queries: string[]) => {
      c.sendOption(NBD.opt.listMetaContext, RawNbdClient.metaData(name, queries));
      return c.metaReplies();
    };
    // No query lists every context; `base:` is the namespace's wildcard; unknown names and namespaces are ignored.
    for (const q of [[], ['base:'], ['base:allocation'], ['qemu:dirty-bitmap:x', 'base:allocation']])
      expect(await list('db-1-vda', q)).toEqual({
        contexts: [[0, 'base:allocation']],
        final: NBD.rep.ack,
        message: '',
      });
    for (const q of [['base:nope'], ['x-other:allocation'], ['qemu:allocation-depth']])
      expect(await list('', q)).toEqual({ contexts: [], final: NBD.rep.ack, message: '' });
    expect(await list('nope', [])).toMatchObject({ contexts: [], final: NBD.rep.errUnknown });
    // SET ignores the wildcard, selects the name once however often it is asked for.
    c.sendOption(NBD.opt.setMetaContext, RawNbdClient.metaData('db-1-vda', ['base:']));
    expect(await c.metaReplies()).toMatchObject({ contexts: [], final: NBD.rep.ack });
    c.sendOption(NBD.opt.setMetaContext, RawNbdClient.metaData('db-1-vda', ['base:allocation', 'base:allocation']));
    const set = await c.metaReplies();
    expect(set).toMatchObject({ contexts: [[expect.any(Number), 'base:allocation']], final: NBD.rep.ack });
    // Malformed option data is refused and the connection goes on.
    const good = RawNbdClient.metaData('db-1-vda', ['base:allocation']);
    const hugeCount = Buffer.from(good);
    hugeCount.writeUInt32BE(0xffffffff, 4 + 'db-1-vda'.length);
    const longName = Buffer.alloc(8);
    longName.writeUInt32BE(5000, 0);
    const cases: [string, Buffer][] = [
      ['too short', Buffer.alloc(5)],
      ['name past the data', longName],
      ['query past the data', good.subarray(0, good.length - 1)],
      ['data left over', Buffer.concat([good, Buffer.from('x')])],
      ['a count the data cannot hold', hugeCount],
      ['a query without a namespace', RawNbdClient.metaData('db-1-vda', ['allocation'])],
      ['a query starting with a colon', RawNbdClient.metaData('db-1-vda', [':allocation'])],
    ];
    for (const [what, data] of cases) {
      for (const opt of [NBD.opt.listMetaContext, NBD.opt.setMetaContext]) {
        c.sendOption(opt, data);
        const r = await c.metaReplies();
        expect({ what, opt, final: r.final, contexts: r.contexts }).toEqual({
          what,
          opt,
          final: NBD.rep.errInvalid,
          contexts: [],
        });
      }
    }
    // The failed SETs dropped the selection: BLOCK_STATUS is refused after GO.
    c.sendOption(NBD.opt.go, RawNbdClient.goData('db-1-vda'));
    expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
    expect(await c.blockStatus(0, CHUNK)).toMatchObject({ error: NBD.err.inval });
    c.end();
  });

  it("reports the point's zero chunks as HOLE|ZERO and its data chunks as 0, with REQ_ONE and unaligned ranges", async () => {
    const { c, set } = await negotiated(['base:allocation']);
    expect(set.final).toBe(NBD.rep.ack);
    const [[id]] = set.contexts;
    c.sendOption(NBD.opt.go, RawNbdClient.goData('db-1-vda'));
    expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
    // Chunks: data, zeros, data, data, data, data.
    expect(await c.blockStatus(0, content.length)).toEqual({
      id,
      extents: [
        [CHUNK, 0],
        [CHUNK, HOLE_ZERO],
        [4 * CHUNK, 0],
      ],
    });
    expect((await c.blockStatus(100, 2 * CHUNK)).extents).toEqual([
      [CHUNK - 100, 0],
      [CHUNK, HOLE_ZERO],
      [100, 0],
    ]);
    expect((await c.blockStatus(CHUNK + 10, 20)).extents).toEqual([[20, HOLE_ZERO]]);
    expect((await c.blockStatus(content.length - 1, 1)).extents).toEqual([[1, 0]]);
    expect((await c.blockStatus(0, content.length, NBD.cmdFlag.reqOne)).extents).toEqual([[CHUNK, 0]]);
    expect((await c.blockStatus(CHUNK, 3 * CHUNK, NBD.cmdFlag.reqOne)).extents).toEqual([[CHUNK, HOLE_ZERO]]);
    expect((await c.blockStatus(2 * CHUNK, CHUNK + 5, NBD.cmdFlag.reqOne)).extents).toEqual([[CHUNK + 5, 0]]);
    c.end();
  });

  it('refuses bad block status requests with EINVAL error chunks and stays usable', async () => {
    const { c } = await negotiated(['base:allocation'], '');
    c.sendOption(NBD.opt.go, RawNbdClient.goData(''));
    expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
    const size = content.length;
    const cases: [string, bigint | number, number, number][] = [
      ['past the end', size - 10, 11, 0],
      ['at the end', size, 1, 0],
      ['at a huge offset', 2n ** 63n, 1, 0],
      ['at the largest offset', 2n ** 64n - 1n, 0xffffffff, 0],
      ['of length 0', 0, 0, 0],
      ['with an unknown flag', 0, 512, 1],
      ['with REQ_ONE and an unknown flag', 0, 512, NBD.cmdFlag.reqOne | 0x100],
    ];
    for (const [what, offset, length, flags] of cases)
      expect({ what, ...(await c.blockStatus(offset, length, flags)) }).toMatchObject({ what, error: NBD.err.inval });
    // Reads: with structured replies negotiated even their EINVAL is a structured error chunk.
    c.sendRequest(NBD.cmd.read, 5n, size - 10, 11);
    const [err, ...more] = await c.structuredReply();
    expect([err.type, err.flags, err.payload.readUInt32BE(0), more.length]).toEqual([
      NBD.replyType.error,
      NBD.replyFlagDone,
      NBD.err.inval,
      0,
    ]);
    expect((await c.blockStatus(0, 4 * 1024 * 1024 * 1024 - 1)).error).toBe(NBD.err.inval);
    expect((await c.blockStatus(0, size)).extents).toHaveLength(3);
    c.end();
  });

  it('without a selected context, or with it selected for another export, block status is EINVAL', async () => {
    const other = join(dir, 'two.sock');
    const plain = (name: string) => ({ name, size: 4096, read: async (_o: number, n: number) => Buffer.alloc(n, 1) });
    const calls: [number, number][] = [];
    const srv = await NbdServer.listen(other, [
      plain('plain'),
      { ...plain('a'), allocation: (offset: number, length: number) => [{ offset, length, zero: false }] },
      {
        ...plain('b'),
        allocation: (offset: number, length: number) => {
          calls.push([offset, length]);
          if (offset === 1024) throw new Error('allocation failed');
          if (offset === 2048) return [{ offset: offset + 1, length: length - 1, zero: true }]; // a gap
          return [{ offset, length, zero: true }];
        },
      },
    ]);
    try {
      // Structured replies, no SET at all.
      let c = await structuredGo(other, 'b');
      expect(await c.blockStatus(0, 512)).toMatchObject({ error: NBD.err.inval });
      c.end();
      // Selected for 'a', then GO to 'b'.
      const selected = await negotiated(['base:allocation'], 'a', other);
      c = selected.c;
      expect(selected.set.contexts).toHaveLength(1);
      c.sendOption(NBD.opt.go, RawNbdClient.goData('b'));
      expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
      expect(await c.blockStatus(0, 512)).toMatchObject({ error: NBD.err.inval });
      c.end();
      // An export without allocation information offers no context; one with it is asked, its failures are EIO.
      let set: Awaited<ReturnType<typeof negotiated>>['set'];
      ({ c, set } = await negotiated(['base:allocation'], 'plain', other));
      expect(set).toMatchObject({ contexts: [], final: NBD.rep.ack });
      c.sendOption(NBD.opt.listMetaContext, RawNbdClient.metaData('plain', []));
      expect(await c.metaReplies()).toMatchObject({ contexts: [], final: NBD.rep.ack });
      c.sendOption(NBD.opt.exportName, Buffer.from('plain'));
      await c.take(10);
      expect(await c.blockStatus(0, 4096)).toMatchObject({ error: NBD.err.inval });
      c.end();
      ({ c } = await negotiated(['base:allocation'], 'a', other));
      c.sendOption(NBD.opt.exportName, Buffer.from('a'));
      await c.take(10);
      expect((await c.blockStatus(0, 4096)).extents).toEqual([[4096, 0]]);
      c.end();
      ({ c, set } = await negotiated(['base:allocation'], 'b', other));
      expect(set.contexts).toHaveLength(1);
      c.sendOption(NBD.opt.go, RawNbdClient.goData('b'));
      expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
      expect((await c.blockStatus(512, 512)).extents).toEqual([[512, HOLE_ZERO]]);
      expect(await c.blockStatus(1024, 512)).toMatchObject({ error: NBD.err.io, message: 'allocation failed' });
      expect(await c.blockStatus(2048, 512)).toMatchObject({ error: NBD.err.io });
      expect((await c.blockStatus(0, 4096)).extents).toEqual([[4096, HOLE_ZERO]]);
      expect(calls).toEqual([
        [512, 512],
        [1024, 512],
        [2048, 512],
        [0, 4096],
      ]);
      c.end();
    } finally {
      await srv.close();
    }
  });

  it('a spec with blockStatus: false offers no context (the server as it was, for side-by-side benches)', async () => {
    const other = join(dir, 'nobs.sock');
    mkdirSync(join(dir, 'nobs'), { mode: 0o700 });
    const s = await runServe(
      spec({
        exports: [{ domain: 'db-1', target: 'vda', socket: other, exportName: 'x' }],
        dir: join(dir, 'nobs'),
        blockStatus: false,
      }),
    );
    try {
      const { c, set } = await negotiated(['base:allocation'], 'x', other);
      expect(set).toMatchObject({ contexts: [], final: NBD.rep.ack });
      c.sendOption(NBD.opt.go, RawNbdClient.goData('x'));
      expect((await c.infoReplies()).final).toBe(NBD.rep.ack);
      expect(await c.blockStatus(0, CHUNK)).toMatchObject({ error: NBD.err.inval });
      c.end();
      expect(s.status().exports[0].blockStatusRequests).toBe(0);
      expect(server.status().exports[0].blockStatusRequests).toBeGreaterThan(0);
    } finally {
      await s.close();
    }
  });

  it('caps a reply at 2^20 descriptors and merges adjacent runs of one kind', () => {
    const runs = Array.from({ length: (1 << 20) + 5 }, (_, i) => ({ offset: i * 512, length: 512, zero: i % 2 === 1 }));
    const p = blockStatusPayload(9, runs, 0, runs.length * 512, false);
    expect(p.length).toBe(4 + 8 * (1 << 20));
    expect([p.readUInt32BE(0), p.readUInt32BE(4), p.readUInt32BE(8), p.readUInt32BE(12), p.readUInt32BE(16)]).toEqual([
      9,
      512,
      0,
      512,
      HOLE_ZERO,
    ]);
    const merged = blockStatusPayload(
      1,
      [
        { offset: 0, length: 10, zero: true },
        { offset: 10, length: 10, zero: true },
        { offset: 20, length: 10, zero: false },
      ],
      5,
      20,
      false,
    );
    expect([...Array(2)].map((_, i) => [merged.readUInt32BE(4 + 8 * i), merged.readUInt32BE(8 + 8 * i)])).toEqual([
      [15, HOLE_ZERO],
      [5, 0],
    ]);
    expect(() => blockStatusPayload(1, [], 0, 10, false)).toThrow(/do not cover/);
  });
});

describe('the store', () => {
  it('holds requests while the store is unreachable and answers them when it is back', async () => {
    const fresh = await RawNbdClient.connect(socket);
    await fresh.go('db-1-vda');
    // A new server, so nothing is cached.
    const other = join(dir, 'outage.sock');
    let outageStore: OutageStore | undefined;
    mkdirSync(join(dir, 'outage'), { mode: 0o700 });
    const s = await runServe(
      spec({ exports: [{ domain: 'db-1', target: 'vda', socket: other, exportName: 'x' }], dir: join(dir, 'outage') }),
      {
        openRepository: async (u, k) => {
          const inner = await Repository.open(u, k);
          outageStore = new OutageStore(inner.store);
          return Repository.open(u, k, { store: outageStore });
        },
      },
    );
    try {
      const c = await RawNbdClient.connect(other);
      await c.go('x');
      outageStore!.down = true;
      const lengths = new Map([
        [1n, CHUNK],
        [2n, 100],
      ]);
      c.sendRequest(NBD.cmd.read, 1n, 2 * CHUNK, CHUNK);
      c.sendRequest(NBD.cmd.read, 2n, 4 * CHUNK + 5, 100);
      // Held, not failed: the status says so, and no reply comes while the store is away.
      for (let i = 0; i < 800 && s.status().heldRequests < 2; i++) await new Promise((r) => setTimeout(r, 25));
      expect(s.status()).toMatchObject({ storeReachable: false, heldRequests: 2 });
      // Its status file says so too (written at once when the store's state changes).
      expect(status('outage')).toMatchObject({ storeReachable: false });
      const before = outageStore!.chunkGets;
      await new Promise((r) => setTimeout(r, 600));
      expect(outageStore!.chunkGets).toBeGreaterThan(before); // retried
      await expect(c.take(1, 50)).rejects.toThrow(/timed out/);
      outageStore!.down = false;
      const got = [await c.reply(lengths), await c.reply(lengths)].sort((a, b) => Number(a.handle - b.handle));
      expect(got.map((r) => r.error)).toEqual([0, 0]);
      expect(got[0].data?.equals(content.subarray(2 * CHUNK, 3 * CHUNK))).toBe(true);
      expect(got[1].data?.equals(content.subarray(4 * CHUNK + 5, 4 * CHUNK + 105))).toBe(true);
      expect(s.status()).toMatchObject({ storeReachable: true, heldRequests: 0 });
      c.end();
    } finally {
      await s.close();
      fresh.end();
    }
  });

  it('answers EIO for the range of a damaged chunk only', async () => {
    const repo = await Repository.openWithKeyFile(url, keyFile);
    const key = Repository.chunkKey(chunkIds[3] as string);
    const original = (await repo.store.get(key)) as Buffer;
    const flipped = Buffer.from(original);
    flipped[flipped.length - 20] ^= 0x40;
    await repo.store.put(key, flipped);
    const other = join(dir, 'damaged.sock');
    const s = await runServe(
      spec({ exports: [{ domain: 'db-1', target: 'vda', socket: other, exportName: 'x' }], dir: join(dir, 'serve') }),
    );
    try {
      const c = await RawNbdClient.connect(other);
      await c.go('x');
      await expect(c.read(3 * CHUNK + 10, 100)).rejects.toMatchObject({ nbdError: NBD.err.io });
      await expect(c.read(2 * CHUNK, 2 * CHUNK, 2n)).rejects.toMatchObject({ nbdError: NBD.err.io });
      expect((await c.read(2 * CHUNK, CHUNK, 3n)).equals(content.subarray(2 * CHUNK, 3 * CHUNK))).toBe(true);
      expect((await c.read(4 * CHUNK, 2 * CHUNK, 4n)).equals(content.subarray(4 * CHUNK))).toBe(true);
      // With structured replies: one error chunk (EIO) with DONE.
      const d = await structuredGo(other, 'x');
      d.sendRequest(NBD.cmd.read, 5n, CHUNK, 3 * CHUNK);
      const [err, ...more] = await d.structuredReply();
      expect([err.type, err.flags, err.payload.readUInt32BE(0), more.length]).toEqual([
        NBD.replyType.error,
        NBD.replyFlagDone,
        NBD.err.io,
        0,
      ]);
      d.end();
      expect(s.status().exports[0].readErrors).toBe(3);
      expect(s.status().storeReachable).toBe(true);
      c.end();
    } finally {
      await s.close();
      await repo.store.put(key, original);
      repo.close();
    }
  });
});

describe('the chunk cache', () => {
  it('fetches a chunk once for many readers, and keeps within its byte bound', async () => {
    let fetches = 0;
    const source = {
      readChunk: async (id: string) => {
        fetches++;
        await new Promise((r) => setTimeout(r, 20));
        return Buffer.alloc(1024, id.charCodeAt(0));
      },
    };
    const cache = new ChunkCache(source, { maxBytes: 4096, maxFetches: 2 });
    const got = await Promise.all(Array.from({ length: 10 }, () => cache.get('a', 1024)));
    expect(fetches).toBe(1);
    expect(got.every((g) => g[0] === 'a'.charCodeAt(0))).toBe(true);
    for (const id of 'bcdefgh') await cache.get(id, 1024);
    expect(cache.snapshot().bytes).toBeLessThanOrEqual(4096);
    expect(cache.snapshot().chunks).toBe(4);
    // 'a' was pushed out (least recently used) and is fetched again; 'h' is still there.
    const before = fetches;
    await cache.get('h', 1024);
    expect(fetches).toBe(before);
    await cache.get('a', 1024);
    expect(fetches).toBe(before + 1);
  });

  it("frees a dropped chunk's memory at once, or at the last release of a reply holding it; never one get() gave out", async () => {
    // Fresh buffers spanning their whole ArrayBuffer, as the seal pool's plaintexts are.
    const source = { readChunk: async (id: string) => Buffer.alloc(1024, id.charCodeAt(0)) };
    const cache = new ChunkCache(source, { maxBytes: 2048 });
    const a = await cache.acquire('a', 1024);
    const b = await cache.acquire('b', 1024);
    b.release();
    const shared = await cache.get('s', 1024); // pushes 'a' out: held by a reply, so kept until released
    expect(a.data.buffer.byteLength).toBe(1024);
    expect(a.data[0]).toBe('a'.charCodeAt(0));
    await cache.get('t', 1024); // pushes 'b' out: nothing holds it, freed now
    expect(b.data.buffer.byteLength).toBe(0);
    a.release();
    expect(a.data.buffer.byteLength).toBe(0);
    a.release(); // a second release changes nothing
    await cache.get('u', 1024);
    await cache.get('v', 1024); // pushes 's' out: given out by get(), left to the garbage collector
    expect(shared.buffer.byteLength).toBe(1024);
    expect(shared[0]).toBe('s'.charCodeAt(0));
    // Two replies holding one chunk: freed only when both are done.
    const c1 = await cache.acquire('c', 1024);
    const c2 = await cache.acquire('c', 1024);
    await cache.get('w', 1024);
    await cache.get('x', 1024);
    c1.release();
    expect(c2.data.buffer.byteLength).toBe(1024);
    c2.release();
    expect(c2.data.buffer.byteLength).toBe(0);
  });

  it('bounds the fetches in flight, read-ahead included', async () => {
    let inFlight = 0;
    let most = 0;
    const source = {
      readChunk: async () => {
        most = Math.max(most, ++inFlight);
        await new Promise((r) => setTimeout(r, 10));
        inFlight--;
        return Buffer.alloc(100);
      },
    };
    const cache = new ChunkCache(source, { maxBytes: 1 << 20, maxFetches: 3 });
    for (let i = 0; i < 20; i++) cache.prefetch(`r${i}`, 100);
    await Promise.all(Array.from({ length: 20 }, (_, i) => cache.get(`d${i}`, 100)));
    expect(most).toBeLessThanOrEqual(3);
  });
});

describe('the status file and start', () => {
  it('is private and names the exports with their counters', async () => {
    const st = status();
    expect(statSync(join(dir, 'serve', 'status.json')).mode & 0o777).toBe(0o600);
    expect(st).toMatchObject({ version: 1, pid: process.pid, group: GROUP, snapshotId: POINT });
    expect(typeof st.storeReachable).toBe('boolean');
    expect(server.status()).toMatchObject({ state: 'serving', lockHeld: true });
    expect(server.status().exports[0]).toMatchObject({ name: 'db-1-vda', domain: 'db-1', target: 'vda', socket });
    expect(server.status().exports[0].bytesServed).toBeGreaterThan(0);
    expect(server.status().exports[0].bytesFetched).toBeGreaterThan(0);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
  });

  it('refuses a point, VM or disk that is not there, and a socket another server listens on', async () => {
    const exp = (over: object) => [
      { domain: 'db-1', target: 'vda', socket: join(dir, 'x.sock'), exportName: 'x', ...over },
    ];
    await expect(runServe(spec({ snapshotId: 'gs-nope', exports: exp({}) }), { statusFile: false })).rejects.toThrow(
      ServeInputError,
    );
    await expect(runServe(spec({ exports: exp({ domain: 'db-9' }) }), { statusFile: false })).rejects.toThrow(
      /no VM db-9/,
    );
    await expect(runServe(spec({ exports: exp({ target: 'vdz' }) }), { statusFile: false })).rejects.toThrow(
      /no disk vdz/,
    );
    await expect(runServe(spec({ exports: exp({ socket }) }), { statusFile: false })).rejects.toThrow(
      /already listens/,
    );
    await expect(NbdServer.listen(socket, [{ name: 'y', size: 1, read: async () => Buffer.alloc(1) }])).rejects.toThrow(
      /already listens/,
    );
  });
});

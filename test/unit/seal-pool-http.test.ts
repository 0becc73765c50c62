/**
 * The seal threads' own HTTP/1.1 receiver for chunk GETs (SealPool.getAndOpen), against a scripted server on plain
 * TCP: every way an S3 answer can come (Content-Length, chunked, to the end of the connection, interim 100, keep-alive
 * and a kept connection the server closed), and every way it can go wrong (404/403/503 handed back for the S3
 * client to parse, oversize refused unread, a cut or reset body, a reset before any answer, a broken status line).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { chunkIdOf, deriveKeys, seal, SEAL_OVERHEAD } from '../../backup/crypto';
import { TransientStoreError } from '../../backup/errors';
import { SealPool, ThreadNetworkError, type SignedGet } from '../../backup/seal-pool';

const keys = deriveKeys(randomBytes(32), 'seal-pool-http-test');
const CHUNK = 1024 * 1024;
const data = randomBytes(CHUNK - 777);
const id = chunkIdOf(keys, data);
let sealed: Buffer;

/** How the server answers the n-th request (counted over all connections) on `sock`. */
type Script = (sock: Socket, n: number) => void;
let script: Script;
let server: Server;
let connections = 0;
let requests = 0;
const heads: string[] = [];
const open = new Set<Socket>();
let pool: SealPool;

beforeAll(async () => {
  sealed = await seal(keys, data, id);
  server = createServer((sock) => {
    connections++;
    open.add(sock);
    sock.on('close', () => open.delete(sock));
    let pending = '';
    sock.on('error', () => undefined);
    sock.on('data', (d) => {
      pending += d.toString('latin1');
      let at: number;
      while ((at = pending.indexOf('\r\n\r\n')) >= 0) {
        heads.push(pending.slice(0, at));
        pending = pending.slice(at + 4);
        script(sock, ++requests);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  pool = new SealPool(keys, 1);
});
afterAll(async () => {
  await pool.close();
  server.close();
});
beforeEach(async () => {
  // Each test starts without kept connections (the client sees them close while idle).
  for (const s of open) s.destroy();
  await new Promise((r) => setTimeout(r, 50));
  connections = 0;
  requests = 0;
  heads.length = 0;
});

const get = (maxSealed = CHUNK + SEAL_OVERHEAD) =>
  pool.getAndOpen(
    {
      protocol: 'http:',
      hostname: '127.0.0.1',
      port: (server.address() as AddressInfo).port,
      method: 'GET',
      path: '/bucket/chunks/ab/cd?x-id=GetObject',
      headers: { host: `127.0.0.1:${(server.address() as AddressInfo).port}`, authorization: 'AWS4-HMAC-SHA256 x' },
    } satisfies SignedGet,
    'chunks/ab/cd',
    id,
    maxSealed,
    CHUNK,
  );
const ok = (extra = '') => `HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n${extra}`;
/** Writes `buf` in pieces of `size` bytes, one per timer tick (so the client reads it in many pieces). */
function trickle(sock: Socket, buf: Buffer, size: number, then?: () => void): void {
  let pos = 0;
  const step = () => {
    if (sock.destroyed) return;
    if (pos >= buf.length) return then?.();
    sock.write(buf.subarray(pos, (pos += size)));
    setImmediate(step);
  };
  step();
}
const chunked = (body: Buffer, piece: number) => {
  const parts: Buffer[] = [];
  for (let i = 0; i < body.length; i += piece) {
    const p = body.subarray(i, i + piece);
    parts.push(Buffer.from(`${p.length.toString(16)};ext=1\r\n`), p, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('0\r\nx-trailer: 1\r\n\r\n'));
  return Buffer.concat(parts);
};

test('a 200 by Content-Length, in many pieces, opens; the connection is kept for the next GET; the request is the signed one', async () => {
  script = (sock) => {
    sock.write(ok(`content-length: ${sealed.length}\r\n\r\n`));
    trickle(sock, sealed, 100_000);
  };
  for (let i = 0; i < 3; i++) expect((await get()).plain?.equals(data)).toBe(true);
  expect(connections).toBe(1);
  expect(heads[0]).toMatch(/^GET \/bucket\/chunks\/ab\/cd\?x-id=GetObject HTTP\/1\.1\r\n/);
  expect(heads[0]).toMatch(/\r\nauthorization: AWS4-HMAC-SHA256 x(\r\n|$)/);
  expect(heads[0]).toMatch(/\r\nhost: 127\.0\.0\.1:\d+(\r\n|$)/);
});

test('head and body in one write, a 100 Continue before the answer, chunked, and to the end of the connection all open', async () => {
  const answers = [
    () => Buffer.concat([Buffer.from(ok(`content-length: ${sealed.length}\r\n\r\n`)), sealed]),
    () =>
      Buffer.concat([
        Buffer.from('HTTP/1.1 100 Continue\r\n\r\n'),
        Buffer.from(ok(`content-length: ${sealed.length}\r\n\r\n`)),
        sealed,
      ]),
    () => Buffer.concat([Buffer.from(ok('transfer-encoding: chunked\r\n\r\n')), chunked(sealed, 70_000)]),
  ];
  script = (sock, n) => sock.write(answers[n - 1]());
  for (let i = 0; i < answers.length; i++) expect((await get()).plain?.equals(data)).toBe(true);
  expect(connections).toBe(1);
  script = (sock) => trickle(sock, Buffer.concat([Buffer.from(ok('\r\n')), sealed]), 65_536, () => sock.end());
  expect((await get()).plain?.equals(data)).toBe(true);
});

test.each([
  [404, 'NoSuchKey', 'content-length'],
  [403, 'AccessDenied', 'chunked'],
  [503, 'SlowDown', 'content-length'],
])('a %i answer comes back with its headers and body for the S3 client to parse', async (status, code, framing) => {
  const xml = Buffer.from(`<?xml version="1.0"?><Error><Code>${code}</Code><Message>m</Message></Error>`);
  script = (sock) =>
    sock.write(
      Buffer.concat([
        Buffer.from(`HTTP/1.1 ${status} X\r\ncontent-type: application/xml\r\nx-amz-request-id: r1\r\n`),
        framing === 'chunked'
          ? Buffer.concat([Buffer.from('transfer-encoding: chunked\r\n\r\n'), chunked(xml, 10)])
          : Buffer.concat([Buffer.from(`content-length: ${xml.length}\r\n\r\n`), xml]),
      ]),
    );
  const r = await get();
  expect(r.status).toBe(status);
  expect(r.headers['x-amz-request-id']).toBe('r1');
  expect(r.body?.toString()).toBe(xml.toString());
  expect(r.plain).toBeUndefined();
  // The connection serves the next GET.
  script = (sock) => sock.write(Buffer.concat([Buffer.from(ok(`content-length: ${sealed.length}\r\n\r\n`)), sealed]));
  expect((await get()).plain?.equals(data)).toBe(true);
  expect(connections).toBe(1);
});

test('a 200 larger than the bound is refused from its length, or as it streams past it without one', async () => {
  script = (sock) => sock.write(ok(`content-length: ${300 * 1024 * 1024}\r\n\r\n`));
  expect(await get()).toMatchObject({ status: 200, tooLarge: 300 * 1024 * 1024 });
  script = (sock) => {
    sock.write(ok('transfer-encoding: chunked\r\n\r\n'));
    trickle(sock, chunked(randomBytes(3 * CHUNK), 65_536), 65_536);
  };
  expect(await get()).toMatchObject({ status: 200, tooLarge: -1 });
});

test('a body cut short or reset is a transient error naming the object and how far it got', async () => {
  script = (sock) => {
    sock.write(ok(`content-length: ${sealed.length}\r\n\r\n`));
    sock.end(sealed.subarray(0, 1000));
  };
  const cut = await get().catch((e: unknown) => e);
  expect(cut).toBeInstanceOf(TransientStoreError);
  expect((cut as Error).message).toMatch(`S3 response for chunks/ab/cd ended after 1000 of ${sealed.length} bytes`);
  script = (sock) => {
    sock.write(ok(`content-length: ${sealed.length}\r\n\r\n`));
    sock.write(sealed.subarray(0, 5000), () => setTimeout(() => sock.resetAndDestroy(), 20));
  };
  const reset = await get().catch((e: unknown) => e);
  expect(reset).toBeInstanceOf(TransientStoreError);
  expect((reset as Error).message).toMatch(/ended after 5000 of \d+ bytes: read ECONNRESET/);
  script = (sock) => {
    sock.write(ok('transfer-encoding: chunked\r\n\r\n'));
    sock.end(chunked(sealed, 4096).subarray(0, 9000));
  };
  await expect(get()).rejects.toThrow(/S3 response for chunks\/ab\/cd ended after \d+ bytes/);
});

test('no answer (reset, closed, refused) or a broken one is a network error for the S3 client to retry', async () => {
  script = (sock) => sock.resetAndDestroy();
  await expect(get()).rejects.toMatchObject({ name: 'Error', code: 'ECONNRESET' });
  await expect(get()).rejects.toBeInstanceOf(ThreadNetworkError);
  script = (sock) => sock.end();
  await expect(get()).rejects.toMatchObject({ code: 'ECONNRESET', message: 'socket hang up' });
  script = (sock) => sock.write('HTTP/1.1 two hundred\r\n\r\n');
  await expect(get()).rejects.toMatchObject({
    code: 'EPROTO',
    message: expect.stringMatching(/bad HTTP answer to the GET of chunks\/ab\/cd: status line/),
  });
  script = (sock) => sock.write(ok('content-length: 12x\r\n\r\n'));
  await expect(get()).rejects.toMatchObject({ code: 'EPROTO' });
  script = (sock) => sock.write(ok('transfer-encoding: gzip\r\n\r\n'));
  await expect(get()).rejects.toMatchObject({ code: 'EPROTO' });
  const closed = createServer(() => undefined);
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  closed.close();
  await expect(
    pool.getAndOpen(
      { protocol: 'http:', hostname: '127.0.0.1', port, method: 'GET', path: '/', headers: {} },
      'k',
      id,
      CHUNK * 2,
      CHUNK,
    ),
  ).rejects.toMatchObject({ code: 'ECONNREFUSED' });
});

test('a kept connection the server closed while idle is replaced, once, without an error', async () => {
  script = (sock) => sock.write(Buffer.concat([Buffer.from(ok(`content-length: ${sealed.length}\r\n\r\n`)), sealed]));
  expect((await get()).plain?.equals(data)).toBe(true);
  // The server drops the connection on the next request without a word (as a keep-alive timeout race does).
  script = (sock, n) =>
    n === 2
      ? sock.resetAndDestroy()
      : sock.write(Buffer.concat([Buffer.from(ok(`content-length: ${sealed.length}\r\n\r\n`)), sealed]));
  expect((await get()).plain?.equals(data)).toBe(true);
  expect(connections).toBe(2);
  // Bytes past the answer's end: that connection is not reused.
  script = (sock) =>
    sock.write(
      Buffer.concat([Buffer.from(ok(`content-length: ${sealed.length}\r\n\r\n`)), sealed, Buffer.from('junk')]),
    );
  expect((await get()).plain?.equals(data)).toBe(true);
  expect((await get()).plain?.equals(data)).toBe(true);
  expect(connections).toBe(3);
});

test('a connection: close answer is not reused; damage is still told apart from transit', async () => {
  script = (sock) =>
    sock.write(
      Buffer.concat([Buffer.from(ok(`connection: close\r\ncontent-length: ${sealed.length}\r\n\r\n`)), sealed]),
    );
  expect((await get()).plain?.equals(data)).toBe(true);
  expect((await get()).plain?.equals(data)).toBe(true);
  expect(connections).toBe(2);
  const flipped = Buffer.from(sealed);
  flipped[100] ^= 1;
  script = (sock) => sock.write(Buffer.concat([Buffer.from(ok(`content-length: ${flipped.length}\r\n\r\n`)), flipped]));
  await expect(get()).rejects.toMatchObject({ name: 'SealError' });
});

test('https: the GET is sent over TLS with the certificate checked (a self-signed one is refused)', async () => {
  // A throwaway self-signed certificate for 127.0.0.1 (openssl); nothing trusts it, so the handshake must fail.
  const dir = mkdtempSync(join(tmpdir(), 'gs-tls-'));
  try {
    execFileSync(
      'openssl',
      [
        ...['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1'],
        ...['-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
      ],
      { stdio: 'ignore' },
    );
    const tlsServer = createTlsServer(
      { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) },
      (s) => s.end(Buffer.concat([Buffer.from(ok(`content-length: ${sealed.length}\r\n\r\n`)), sealed])),
    );
    tlsServer.on('tlsClientError', () => undefined);
    await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r));
    try {
      const port = (tlsServer.address() as AddressInfo).port;
      const err = await pool
        .getAndOpen(
          { protocol: 'https:', hostname: '127.0.0.1', port, method: 'GET', path: '/', headers: {} },
          'k',
          id,
          CHUNK * 2,
          CHUNK,
        )
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ThreadNetworkError);
      expect(err).toMatchObject({ code: 'DEPTH_ZERO_SELF_SIGNED_CERT' });
    } finally {
      tlsServer.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

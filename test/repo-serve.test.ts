/**
 * A point's disks served over NBD from a repository on a real S3 server (versitygw), read by the real tools:
 * `qemu-img compare`/`convert` and `qemu-io` from `nbd+unix:///<name>?socket=<path>`, `qemu-nbd` as a client.
 * The server runs as its own process (backup/serve-process.ts, the built CLI) that outlives its parent; a versitygw
 * outage in the middle of reads holds the requests until it is back; a damaged chunk is an EIO for its range
 * only; `qemu-img map` and `nbdinfo --map` see exactly the point's data as data (block status, `base:allocation`);
 * and `groupsnap repo serve` checks its flags (exit 2) and serves one disk in the foreground.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { zeroRanges } from '../backup/manifest';
import { Repository } from '../backup/repository';
import { createNbdOverlay, hydrateImage, imageInfo } from '../hypervisor/images';
import type { ServeSpec } from '../backup/serve';
import { readServeStatus, runningServePid, startServeProcess, stopServeProcess } from '../backup/serve-process';
import { S3Server } from '../dev/s3-server';
import { RawNbdClient } from './helpers/nbd-client';
import { storePoint } from './helpers/repo-point';
import { CLI } from './helpers/worker-process';

jest.setTimeout(180_000);
const run = promisify(execFile);
const MiB = 1024 * 1024;
const GROUP = 'shop';
const POINT = 'gs-20261207T080000Z-nbdint';

let s3: S3Server;
let dir: string;
let keyFile: string;
let image: string;
let sums: Record<string, string>;
const url = 's3://gs-nbd/repo';
const saved: Record<string, string | undefined> = {};
const dirs: string[] = [];

const uri = (socket: string, name: string) => `nbd+unix:///${name}?socket=${socket}`;

function spec(name: string, over: Partial<ServeSpec> = {}): ServeSpec {
  const d = join(dir, name);
  dirs.push(d);
  return {
    version: 1,
    repo: url,
    keyFile,
    group: GROUP,
    snapshotId: POINT,
    exports: [{ domain: 'db-1', target: 'vda', socket: join(dir, `${name}.sock`), exportName: 'db-1-vda' }],
    dir: d,
    cacheBytes: 16 * MiB,
    owner: 'nbd-test',
    ...over,
  };
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const c of (await import('node:fs')).createReadStream(file)) hash.update(c as Buffer);
  return hash.digest('hex');
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gs-nbd-int-'));
  mkdirSync(join(dir, 's3'));
  s3 = await S3Server.start({ dir: join(dir, 's3') });
  for (const [k, v] of Object.entries(s3.env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  await s3.createBucket('gs-nbd');
  const key = randomBytes(32);
  keyFile = join(dir, 'repo.key');
  writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
  // 48 MiB of random data in a 64 MiB disk, with a hole in the middle: 1 MiB chunks, more than the 16 MiB cache.
  // Then 1 MiB of zeros written at 40 MiB: data in the qcow2, a zero chunk (no data) in the point.
  image = join(dir, 'db-1.vda.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  const scratch = join(dir, 'random.bin');
  for (const [at, mib] of [
    [0, 24],
    [36, 24],
  ]) {
    writeFileSync(scratch, randomBytes(mib * MiB));
    await run('qemu-io', ['-f', 'qcow2', image, '-c', `write -q -s ${scratch} ${at * MiB} ${mib * MiB}`]);
  }
  await run('qemu-io', ['-f', 'qcow2', image, '-c', `write -q -P 0 ${40 * MiB} ${MiB}`]);
  rmSync(scratch);
  const repo = await Repository.init(url, key, { chunkSize: MiB });
  try {
    sums = await storePoint(repo, {
      group: GROUP,
      snapshotId: POINT,
      vms: [{ domain: 'db-1', host: 'hv-a', domainXml: '<domain/>', disks: [{ target: 'vda', image }] }],
    });
  } finally {
    repo.close();
  }
});

afterAll(async () => {
  for (const d of dirs) await stopServeProcess(d).catch(() => undefined);
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await s3?.stop();
  if (!process.env.GROUPSNAP_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
  else console.log(`kept ${dir}`);
});

test('qemu-img compares and converts the export equal to the disk; a second start finds the running server', async () => {
  const s = spec('main');
  const started = await startServeProcess(s);
  expect(started).toMatchObject({ started: true, status: { state: 'serving', storeReachable: true } });
  const again = await startServeProcess(s);
  expect(again).toMatchObject({ started: false, pid: started.pid });
  await expect(startServeProcess({ ...s, cacheBytes: 32 * MiB })).rejects.toThrow(/different spec/);
  const socket = s.exports[0].socket;
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', uri(socket, 'db-1-vda'), image]);
  const out = join(dir, 'copy.raw');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', '-W', '-m', '8', uri(socket, 'db-1-vda'), out]);
  expect(await sha256Of(out)).toBe(sums['db-1/vda']);
  rmSync(out);
  // qemu-nbd as a client: it serves our export again on a socket of its own.
  const relay = join(dir, 'relay.sock');
  const qemuNbd = spawn('qemu-nbd', ['-r', '-f', 'raw', '-k', relay, '-x', 'relay', uri(socket, 'db-1-vda')], {
    stdio: 'ignore',
  });
  try {
    for (let i = 0; i < 200 && !existsSync(relay); i++) await new Promise((r) => setTimeout(r, 50));
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', uri(relay, 'relay'), image]);
  } finally {
    qemuNbd.kill('SIGTERM');
  }
  // The instant restore's shape: a local qcow2 overlay over the export, written to, then hydrated (`qemu-img rebase`
  // onto no backing copies every byte the overlay lacks from the export, as a block pull does).
  const overlay = join(dir, 'overlay.qcow2');
  const backing = `json:{"driver":"raw","file":{"driver":"nbd","path":"${socket}","export":"db-1-vda"}}`;
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'raw', overlay]);
  await run('qemu-io', ['-f', 'qcow2', overlay, '-c', `write -q -P 0x5a ${30 * MiB} ${MiB}`]);
  await run('qemu-img', ['rebase', '-q', '-f', 'qcow2', '-b', '', overlay]);
  const hydrated = join(dir, 'hydrated.raw');
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', overlay, hydrated]);
  const expected = join(dir, 'expected.raw');
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, expected]);
  await run('qemu-io', ['-f', 'raw', expected, '-c', `write -q -P 0x5a ${30 * MiB} ${MiB}`]);
  expect(await sha256Of(hydrated)).toBe(await sha256Of(expected));
  for (const f of [overlay, hydrated, expected]) rmSync(f);
  const status = readServeStatus(s.dir);
  expect(status).toMatchObject({
    running: true,
    state: 'serving',
    lockHeld: true,
    storeReachable: true,
    heldRequests: 0,
  });
  expect(status!.exports[0].bytesServed).toBeGreaterThanOrEqual(2 * 64 * MiB);
  expect(status!.exports[0].bytesFetched).toBeGreaterThanOrEqual(48 * MiB);
  expect(statSync(join(s.dir, 'status.json')).mode & 0o777).toBe(0o600);
  expect(statSync(socket).mode & 0o777).toBe(0o600);
  // The read lock is in the repository while it serves.
  const repo = await Repository.openWithKeyFile(url, keyFile);
  const locks = [];
  for await (const o of repo.store.list('locks/')) locks.push(o.key);
  repo.close();
  expect(locks.some((k) => k.startsWith('locks/read-'))).toBe(true);
  expect(await stopServeProcess(s.dir)).toBe(started.pid);
  expect(readServeStatus(s.dir)).toMatchObject({ running: false, state: 'stopped' });
  expect(existsSync(socket)).toBe(false);
});

test("qemu-img map and nbdinfo --map report exactly the point's data ranges as data, the rest as zero", async () => {
  const s = spec('map');
  await startServeProcess(s);
  const target = uri(s.exports[0].socket, 'db-1-vda');
  try {
    // The point's data, in MiB: written at 0-24 and 36-60, except 40-41 (zeros written: the qcow2 holds them as
    // data, the point as a zero chunk).
    const expected = [
      [0, 24, true],
      [24, 12, false],
      [36, 4, true],
      [40, 1, false],
      [41, 19, true],
      [60, 4, false],
    ].map(([at, mib, data]) => ({ start: Number(at) * MiB, length: Number(mib) * MiB, data, zero: !data }));
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', '-f', 'raw', target])).stdout) as {
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }[];
    expect(map.map(({ start, length, data, zero }) => ({ start, length, data, zero }))).toEqual(expected);
    // The qcow2 the point was taken from maps the written zeros as data: the point is sparser than its source.
    const source = JSON.parse((await run('qemu-img', ['map', '--output=json', image])).stdout) as { data: boolean }[];
    expect(source.filter((e) => e.data).length).toBe(2);
    // libnbd's nbdinfo asks for base:allocation by name (qemu-img through QEMU's NBD client).
    const info = JSON.parse((await run('nbdinfo', ['--map', '--json', target])).stdout) as {
      offset: number;
      length: number;
      type: number;
    }[];
    expect(
      info.map(({ offset, length, type }) => ({ start: offset, length, data: type === 0, zero: type === 3 })),
    ).toEqual(expected);
    // Answered by block status from the manifest: nothing read, nothing fetched (the status file is written within
    // 250 ms of a change).
    let st = readServeStatus(s.dir)!.exports[0];
    for (let i = 0; i < 50 && !(st.blockStatusRequests > 0); i++) {
      await new Promise((r) => setTimeout(r, 100));
      st = readServeStatus(s.dir)!.exports[0];
    }
    expect(st).toMatchObject({ bytesFetched: 0, requests: 0 });
    expect(st.blockStatusRequests).toBeGreaterThan(0);
    // The data read through the map is still the disk's.
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', target, image]);
  } finally {
    await stopServeProcess(s.dir);
  }
});

test("an instant restore's overlay holds the point's zero chunks: hydrating it reads only the data chunks", async () => {
  const s = spec('zeros');
  await startServeProcess(s);
  const socket = s.exports[0].socket;
  const overlay = join(dir, 'zeros-overlay.qcow2');
  try {
    const repo = await Repository.openWithKeyFile(url, keyFile);
    const manifest = await repo.readDiskManifest(GROUP, POINT, 'db-1', 'vda').finally(() => repo.close());
    const zeros = zeroRanges(manifest);
    // The point's zero chunks, in MiB: the hole 24-36, the written zeros 40-41, the tail 60-64.
    expect(zeros).toEqual([
      { offset: 24 * MiB, length: 12 * MiB },
      { offset: 40 * MiB, length: MiB },
      { offset: 60 * MiB, length: 4 * MiB },
    ]);
    await createNbdOverlay(overlay, socket, 'db-1-vda', manifest.virtualSize, zeros);
    // In the overlay itself (opened with no backing): those ranges are zero clusters, the rest unallocated.
    const alone = `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: overlay }, backing: null })}`;
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', alone])).stdout) as {
      start: number;
      length: number;
      present: boolean;
      zero: boolean;
    }[];
    expect(map.filter((e) => e.present).map((e) => ({ offset: e.start, length: e.length, zero: e.zero }))).toEqual(
      zeros.map((z) => ({ ...z, zero: true })),
    );
    expect((await imageInfo(overlay)).backing).toBe(uri(socket, 'db-1-vda'));
    // Offline hydration (a rebase onto no backing copies what the overlay lacks): only the data chunks are read.
    await hydrateImage(overlay);
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', overlay, image]);
    const dataBytes = manifest.chunks.filter((c) => c !== null).length * manifest.chunkSize;
    let st = readServeStatus(s.dir)!.exports[0];
    for (let i = 0; i < 50 && st.bytesServed < dataBytes; i++) {
      await new Promise((r) => setTimeout(r, 100));
      st = readServeStatus(s.dir)!.exports[0];
    }
    expect(st.bytesServed).toBe(dataBytes);
  } finally {
    rmSync(overlay, { force: true });
    await stopServeProcess(s.dir);
  }
});

test('a versitygw outage in the middle of reads holds them; they complete correctly when it is back', async () => {
  const s = spec('outage');
  const socket = s.exports[0].socket;
  await startServeProcess(s);
  const c = await RawNbdClient.connect(socket);
  await c.go('db-1-vda');
  const before = await c.read(0, MiB);
  c.end();
  await s3.kill();
  const out = join(dir, 'outage.raw');
  const convert = run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri(socket, 'db-1-vda'), out]);
  let finished = false;
  void convert.then(
    () => (finished = true),
    () => (finished = true),
  );
  try {
    let status = readServeStatus(s.dir);
    for (let i = 0; i < 600 && !(status && !status.storeReachable && status.heldRequests > 0); i++) {
      await new Promise((r) => setTimeout(r, 100));
      status = readServeStatus(s.dir);
    }
    expect(status).toMatchObject({ storeReachable: false, running: true });
    expect(status!.heldRequests).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 3000));
    expect(finished).toBe(false); // held, not failed
  } finally {
    await s3.resume();
  }
  await convert;
  expect(await sha256Of(out)).toBe(sums['db-1/vda']);
  expect(before.equals(readFileSync(out).subarray(0, MiB))).toBe(true);
  rmSync(out);
  expect(readServeStatus(s.dir)).toMatchObject({ storeReachable: true, heldRequests: 0 });
  expect(readServeStatus(s.dir)!.exports[0].readErrors).toBe(0);
  await stopServeProcess(s.dir);
});

test('a damaged chunk is an EIO for its range only', async () => {
  const repo = await Repository.openWithKeyFile(url, keyFile);
  const m = await repo.readDiskManifest(GROUP, POINT, 'db-1', 'vda');
  const key = Repository.chunkKey(m.chunks[5] as string);
  const original = (await repo.store.get(key)) as Buffer;
  const flipped = Buffer.from(original);
  flipped[100] ^= 1;
  await repo.store.put(key, flipped);
  const s = spec('damaged');
  try {
    await startServeProcess(s);
    const target = uri(s.exports[0].socket, 'db-1-vda');
    const io = (cmd: string) =>
      run('qemu-io', ['-r', '-f', 'raw', '-c', cmd, target]).then(
        (r) => r.stdout + r.stderr,
        (e: { stdout: string; stderr: string }) => e.stdout + e.stderr,
      );
    expect(await io(`read ${5 * MiB + 4096} 4096`)).toMatch(/Input\/output error/);
    expect(await io(`read ${4 * MiB} ${MiB}`)).not.toMatch(/error/i);
    expect(await io(`read ${6 * MiB} ${MiB}`)).not.toMatch(/error/i);
    expect(readServeStatus(s.dir)).toMatchObject({ storeReachable: true, running: true });
    expect(readServeStatus(s.dir)!.exports[0].readErrors).toBeGreaterThan(0);
  } finally {
    await repo.store.put(key, original);
    repo.close();
    await stopServeProcess(s.dir);
  }
});

test('the server outlives the process that started it', async () => {
  const s = spec('orphan');
  writeFileSync(join(dir, 'orphan-spec.json'), JSON.stringify(s));
  const starter = join(REPO_DIST, 'backup/serve-process.js');
  const parent = spawn(
    process.execPath,
    [
      '-e',
      `require(${JSON.stringify(starter)}).startServeProcess(JSON.parse(require('fs').readFileSync(${JSON.stringify(join(dir, 'orphan-spec.json'))}, 'utf8'))).then((r) => { console.log(r.pid); setInterval(() => {}, 1000); })`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'], env: process.env },
  );
  const pid = await new Promise<number>((resolve) => parent.stdout!.once('data', (d: Buffer) => resolve(Number(d))));
  parent.kill('SIGKILL');
  await new Promise((r) => parent.once('exit', r));
  expect(runningServePid(s.dir)).toBe(pid);
  const c = await RawNbdClient.connect(s.exports[0].socket);
  await c.go('db-1-vda');
  expect((await c.read(40 * MiB, MiB)).length).toBe(MiB);
  c.end();
  expect(await stopServeProcess(s.dir)).toBe(pid);
  expect(runningServePid(s.dir)).toBeUndefined();
});

const REPO_DIST = join(__dirname, '..', 'dist');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

test('repo serve: bad flags exit 2 with nothing started; good ones serve one disk until SIGTERM', async () => {
  const k = ['--key-file', keyFile];
  const socket = join(dir, 'fg.sock');
  const base = ['repo', 'serve', url, GROUP, POINT];
  const bad: [string[], RegExp][] = [
    [[...base, '--disk', 'vda', ...k], /--vm/],
    [[...base, '--vm', 'db-1', ...k], /--disk/],
    [[...base, '--vm', 'db-1', '--disk', 'eth0', ...k], /disk target/],
    [['repo', 'serve', 'http://x/y', GROUP, POINT, '--vm', 'db-1', '--disk', 'vda', ...k], /s3:\/\//],
    [['repo', 'serve', url, 'bad/group', POINT, '--vm', 'db-1', '--disk', 'vda', ...k], /group/],
    [[...base, '--vm', 'db-1', '--disk', 'vda', '--socket', `/${'s'.repeat(120)}`, ...k], /longer than/],
    [[...base, '--vm', 'db-1', '--disk', 'vda', '--socket', '/nonexistent-dir/x.sock', ...k], /does not exist/],
    [[...base, '--vm', 'db-1', '--disk', 'vda', '--socket', keyFile, ...k], /not a socket/],
    [[...base, '--vm', 'db-1', '--disk', 'vda', '--key-file', join(dir, 'missing.key')], /key/],
    [[...base, '--vm', 'db-1', '--disk', 'vda', '--cache-mib', '1', ...k], /cache-mib/],
    [['repo', 'serve', url, GROUP, 'gs-nope', '--vm', 'db-1', '--disk', 'vda', ...k], /no exported point/],
    [[...base, '--vm', 'db-9', '--disk', 'vda', '--socket', socket, ...k], /no VM db-9/],
  ];
  const runs = await Promise.all(bad.map(async ([args, why]) => ({ args, why, r: await cli(args) })));
  for (const { args, why, r } of runs) {
    expect({ args, code: r.code }).toEqual({ args, code: 2 });
    expect(r.stderr).toMatch(why);
  }
  expect(existsSync(socket)).toBe(false);
  // No S3 credentials on this host: a configuration to fix, not an outage to wait out.
  const { AWS_ACCESS_KEY_ID: _a, AWS_SECRET_ACCESS_KEY: _s, ...noCredentials } = process.env;
  void [_a, _s];
  const uncredentialed = await cli([...base, '--vm', 'db-1', '--disk', 'vda', '--socket', socket, ...k], {
    ...noCredentials,
    HOME: dir,
  });
  expect(uncredentialed.code).toBe(1);
  expect(uncredentialed.stderr).toMatch(/CredentialsProviderError/);
  expect(existsSync(socket)).toBe(false);
  const fg = spawn(
    process.execPath,
    [CLI, ...base, '--vm', 'db-1', '--disk', 'vda', '--socket', socket, '--json', ...k],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: process.env,
    },
  );
  let stdout = '';
  let stderr = '';
  fg.stdout!.on('data', (d: Buffer) => (stdout += d));
  fg.stderr!.on('data', (d: Buffer) => (stderr += d));
  for (let i = 0; i < 600 && !stdout.includes('}'); i++) await new Promise((r) => setTimeout(r, 100));
  if (!stdout.includes('}')) throw new Error(`repo serve printed nothing; stderr: ${stderr}`);
  const printed = JSON.parse(stdout) as { socket: string; uri: string; commands: Record<string, string> };
  expect(printed).toMatchObject({ socket, uri: uri(socket, 'db-1-vda') });
  expect(printed.commands.mount).toContain('guestfish');
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', printed.uri, image]);
  fg.kill('SIGTERM');
  const code = await new Promise((r) => fg.once('exit', r));
  expect(code).toBe(0);
  expect(existsSync(socket)).toBe(false);
});

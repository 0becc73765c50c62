/**
 * The direct qcow2 restore (backup/qcow2-image.ts, `Repository.writeDiskQcow2`): for disks of every shape (several
 * L2 tables, a partial last chunk, data on both sides of a 512 MiB boundary, zero clusters inside data chunks, no
 * data at all), the image it writes passes `qemu-img check` and reads back exactly what the raw restore does.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FORMAT_VERSION, type DiskManifest } from '../backup/manifest';
import { planQcow2, qcow2Writable } from '../backup/qcow2-image';
import { Repository } from '../backup/repository';

jest.setTimeout(120_000);
const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let repo: Repository;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gs-qcow2-'));
  repo = await Repository.init(`file://${join(dir, 'repo')}`, randomBytes(32), { chunkSize: 256 * KiB });
});
afterAll(() => {
  repo?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A disk of `virtualSize` bytes whose chunks at `data` indexes hold the given content (others zero). */
async function disk(name: string, virtualSize: number, data: Record<number, Buffer>): Promise<DiskManifest> {
  const cs = repo.chunkSize;
  const chunks: (string | null)[] = [];
  for (let i = 0; i < Math.ceil(virtualSize / cs); i++) {
    const d = data[i];
    chunks.push(d ? (await repo.putChunk(d.subarray(0, Math.min(cs, virtualSize - i * cs)))).id : null);
  }
  return {
    version: FORMAT_VERSION,
    group: 'g',
    snapshotId: name,
    domain: 'vm',
    target: 'vda',
    sourceFormat: 'qcow2',
    sourceImage: '/x',
    virtualSize,
    chunkSize: cs,
    chunks,
    stats: { mode: 'full', bytesRead: 0, bytesNew: 0, bytesUploaded: 0, chunksNew: 0, chunksData: 0 },
  };
}

/** Random content with a few all-zero 64 KiB clusters inside. */
function holey(): Buffer {
  const b = randomBytes(256 * KiB);
  b.fill(0, 64 * KiB, 128 * KiB);
  return b;
}

const shapes: [string, () => Promise<DiskManifest>][] = [
  [
    'small, partial last chunk',
    () => disk('a', 3 * 256 * KiB + 512, { 0: randomBytes(256 * KiB), 3: randomBytes(256 * KiB) }),
  ],
  ['zero clusters inside a data chunk', () => disk('b', 4 * MiB, { 1: holey(), 2: randomBytes(256 * KiB) })],
  [
    'data on both sides of 512 MiB boundaries, several L2 tables',
    () =>
      disk('c', 1536 * MiB + 64 * KiB, {
        [2048 - 1]: randomBytes(256 * KiB),
        2048: randomBytes(256 * KiB),
        [4096 + 3]: holey(),
        6144: randomBytes(64 * KiB),
      }),
  ],
  ['no data at all', () => disk('d', 8 * MiB, {})],
];

test.each(shapes)('%s: qemu-img check passes and the content equals the raw restore', async (name, make) => {
  const m = await make();
  expect(qcow2Writable(m)).toBe(true);
  const base = join(dir, name.replace(/\W+/g, '-'));
  await repo.writeDiskImage(m, `${base}.raw`);
  await repo.writeDiskQcow2(m, `${base}.qcow2`);
  await run('qemu-img', ['check', '-f', 'qcow2', `${base}.qcow2`]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', `${base}.raw`, `${base}.qcow2`]);
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', `${base}.qcow2`])).stdout) as {
    'virtual-size': number;
  };
  expect(info['virtual-size']).toBe(m.virtualSize);
  // Zero chunks are not in the image: it is no larger than its metadata and data chunks.
  expect(statSync(`${base}.qcow2`).size).toBe(planQcow2(m).fileSize);
  rmSync(`${base}.raw`);
  rmSync(`${base}.qcow2`);
});

test('a chunk size that is not whole clusters is not written directly', () => {
  expect(qcow2Writable({ chunkSize: 96 * KiB, virtualSize: MiB } as DiskManifest)).toBe(false);
});

import { createHash, randomBytes } from 'node:crypto';
import * as zlib from 'node:zlib';
import { chunkIdOf, deriveKeys, seal, SealError, unseal } from '../../backup/crypto';
import { ChunkIdMismatchError, SealPool } from '../../backup/seal-pool';

const keys = deriveKeys(randomBytes(32), 'seal-pool-test');
let pool: SealPool;
beforeAll(() => {
  pool = new SealPool(keys, 2);
});
afterAll(() => pool.close());

describe('SealPool (chunk crypto on worker threads) and backup/crypto.ts agree', () => {
  const compressible = Buffer.alloc(4 * 1024 * 1024, 'groupsnap ');
  const random = randomBytes(4 * 1024 * 1024);

  test.each([
    ['compressible', compressible],
    ['random', random],
    ['small', Buffer.from('x')],
  ])('a %s chunk sealed by the pool opens with unseal, named by the same keyed hash', async (_, data) => {
    const { id, sealed } = await pool.hashAndSeal(Buffer.from(data), () => true, { detach: true });
    expect(id).toBe(chunkIdOf(keys, data));
    expect(sealed).toBeDefined();
    const s = sealed!;
    expect((await unseal(keys, s.sealed, id)).equals(data)).toBe(true);
    // Compressible data is stored compressed (header byte 5), random data as is.
    expect(s.sealed[5]).toBe(data === compressible ? 1 : 0);
    expect(s.sha256).toBe(createHash('sha256').update(s.sealed).digest('hex'));
    if (typeof (zlib as { crc32?: (b: Buffer) => number }).crc32 === 'function') {
      const crc = Buffer.alloc(4);
      crc.writeUInt32BE((zlib as unknown as { crc32: (b: Buffer) => number }).crc32(s.sealed) >>> 0);
      expect(s.crc32).toBe(crc.toString('base64'));
    }
  });

  test('a chunk sealed by seal() opens in the pool; damage and a wrong name are told apart', async () => {
    const id = chunkIdOf(keys, compressible);
    const sealed = await seal(keys, compressible, id);
    expect((await pool.open(Buffer.from(sealed), id)).equals(compressible)).toBe(true);
    const flipped = Buffer.from(sealed);
    flipped[40] ^= 1;
    await expect(pool.open(flipped, id)).rejects.toThrow(SealError);
    // Sealed under the right context but holding other content: opens, and does not match its name.
    const other = await seal(keys, random, id);
    await expect(pool.open(other, id)).rejects.toThrow(ChunkIdMismatchError);
  });

  test('a chunk the caller does not want is hashed and not sealed', async () => {
    const seen: string[] = [];
    const r = await pool.hashAndSeal(Buffer.from(random), (id) => {
      seen.push(id);
      return false;
    });
    expect(seen).toEqual([chunkIdOf(keys, random)]);
    expect(r.sealed).toBeUndefined();
  });
});

describe('SealPool when a worker thread dies', () => {
  test('calls in flight are rejected and the next call gets a new worker instead of hanging', async () => {
    const single = new SealPool(keys, 1);
    try {
      const data = randomBytes(8 * 1024 * 1024);
      const id = chunkIdOf(keys, data);
      const sealed = await seal(keys, data, id);
      expect((await single.open(Buffer.from(sealed), id)).equals(data)).toBe(true);
      const slots = (single as unknown as { slots: { worker: { terminate(): Promise<number> } }[] }).slots;
      expect(slots).toHaveLength(1);
      const inFlight = single.open(Buffer.from(sealed), id);
      await slots[0].worker.terminate();
      await expect(inFlight).rejects.toThrow(/seal worker exited/);
      const within = <T>(p: Promise<T>) =>
        Promise.race([p, new Promise<never>((_, no) => setTimeout(() => no(new Error('hung')), 10_000))]);
      expect((await within(single.open(Buffer.from(sealed), id))).equals(data)).toBe(true);
      expect((await within(single.hashAndSeal(Buffer.from(data), () => true))).id).toBe(id);
    } finally {
      await single.close();
    }
  });

  test('a chunk that inflates beyond its bound is refused in the pool', async () => {
    const zeros = Buffer.alloc(4 * 1024 * 1024);
    const id = chunkIdOf(keys, zeros);
    const sealed = await seal(keys, zeros, id);
    expect(sealed.length).toBeLessThan(64 * 1024);
    await expect(pool.open(Buffer.from(sealed), id, 1024 * 1024)).rejects.toThrow(/inflates beyond 1048576 bytes/);
  });
});

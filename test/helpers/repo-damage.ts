import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pruneRepository } from '../../backup/prune';
import { Repository } from '../../backup/repository';
import { verifyRepository } from '../../backup/verify';
import { writeTestPoint } from './repo-points';

/** The points of {@link damageRepository}: A is sound, B's group manifest, C's disk manifest and D's chunk not. */
export const DAMAGED = {
  group: 'shop',
  good: 'gs-20261201T100000Z-aaaaaa',
  junkGroup: 'gs-20261202T100000Z-bbbbbb',
  truncatedDisk: 'gs-20261203T100000Z-cccccc',
  flippedChunk: 'gs-20261204T100000Z-dddddd',
} as const;

export interface DamagedRepository {
  /** The good point's disk content. */
  goodImage: Buffer;
  /** Chunk ids named only by the point whose disk manifest is truncated. */
  truncatedChunks: string[];
  /** A chunk no manifest names (a sweep would delete it). */
  orphan: string;
  groupKeyB: string;
  diskKeyC: string;
  chunkD: string;
}

/**
 * Writes four points and damages three, through the store behind the repository's back (as a failing disk or a
 * stray writer would): a 1-byte object over B's group manifest, C's disk manifest cut in half, a flipped byte in
 * D's own chunk. Also stores an orphan chunk.
 */
export async function damageRepository(repo: Repository): Promise<DamagedRepository> {
  const c = repo.chunkSize;
  const shared = randomBytes(c);
  const goodData = [shared, null, randomBytes(c)];
  await writeTestPoint(repo, DAMAGED.group, DAMAGED.good, '2026-12-01T10:00:00.000Z', goodData);
  await writeTestPoint(repo, DAMAGED.group, DAMAGED.junkGroup, '2026-12-02T10:00:00.000Z', [shared, randomBytes(c)]);
  const idsC = await writeTestPoint(repo, DAMAGED.group, DAMAGED.truncatedDisk, '2026-12-03T10:00:00.000Z', [
    randomBytes(c),
    randomBytes(c),
  ]);
  const idsD = await writeTestPoint(repo, DAMAGED.group, DAMAGED.flippedChunk, '2026-12-04T10:00:00.000Z', [
    shared,
    randomBytes(c),
  ]);
  const orphan = (await repo.putChunk(randomBytes(c))).id;

  const groupKeyB = repo.groupManifestKey(DAMAGED.group, DAMAGED.junkGroup);
  await repo.store.put(groupKeyB, Buffer.from([0x7b]));
  const diskKeyC = repo.diskManifestKey(DAMAGED.group, DAMAGED.truncatedDisk, 'db-1', 'vda');
  const disk = (await repo.store.get(diskKeyC)) as Buffer;
  await repo.store.put(diskKeyC, disk.subarray(0, disk.length >> 1));
  const chunkD = Repository.chunkKey(idsD[1] as string);
  const sealed = Buffer.from((await repo.store.get(chunkD)) as Buffer);
  sealed[sealed.length - 20] ^= 0x40;
  await repo.store.put(chunkD, sealed);
  return {
    goodImage: Buffer.concat(goodData.map((d) => d ?? Buffer.alloc(c))),
    truncatedChunks: idsC as string[],
    orphan,
    groupKeyB,
    diskKeyC,
    chunkD,
  };
}

/**
 * The behaviour issue 24 asks of a damaged repository, on any store: list marks the damaged point and shows the
 * rest, verify reports each problem, prune refuses to sweep (and says why) and deletes nothing it cannot read,
 * and the sound point still restores byte for byte.
 */
export async function expectDamageHandled(repo: Repository, d: DamagedRepository): Promise<void> {
  const listing = await repo.listPointsReport({ group: DAMAGED.group });
  expect(listing.points.map((p) => p.snapshotId)).toEqual([DAMAGED.good, DAMAGED.truncatedDisk, DAMAGED.flippedChunk]);
  expect(listing.damaged).toEqual([
    expect.objectContaining({ group: DAMAGED.group, snapshotId: DAMAGED.junkGroup, manifest: d.groupKeyB }),
  ]);
  expect((await repo.listPoints()).map((p) => p.snapshotId)).not.toContain(DAMAGED.junkGroup);

  const verified = await verifyRepository(repo, { readData: true });
  expect(verified.ok).toBe(false);
  expect(verified.problems.map((p) => [p.snapshotId, p.object, p.problem]).sort()).toEqual(
    [
      [DAMAGED.junkGroup, d.groupKeyB, 'corrupt'],
      [DAMAGED.truncatedDisk, d.diskKeyC, 'corrupt'],
      [DAMAGED.flippedChunk, d.chunkD, 'corrupt'],
    ].sort(),
  );
  expect(verified.points.find((p) => p.snapshotId === DAMAGED.good)).toMatchObject({ ok: true });

  const chunksBefore = (await repo.loadChunkIndex()).size;
  const pruned = await pruneRepository(repo, { policy: { keepLast: 10 } });
  expect(pruned.sweep).toMatchObject({ done: false, damage: true, reason: expect.stringContaining(d.diskKeyC) });
  expect(pruned.damaged).toEqual([expect.objectContaining({ snapshotId: DAMAGED.junkGroup })]);
  const after = await repo.loadChunkIndex();
  expect(after.size).toBe(chunksBefore);
  for (const id of [...d.truncatedChunks, d.orphan]) expect(after.has(id)).toBe(true);
  expect((await repo.listPoints()).map((p) => p.snapshotId)).toEqual([
    DAMAGED.good,
    DAMAGED.truncatedDisk,
    DAMAGED.flippedChunk,
  ]);

  // The sound point still restores.
  const gm = await repo.readGroupManifest(DAMAGED.group, DAMAGED.good);
  const vm = await repo.readManifestAt<import('../../backup/manifest').VmManifest>(gm.vms[0].manifest);
  const dm = await repo.readManifestAt<import('../../backup/manifest').DiskManifest>(vm.disks[0].manifest);
  const dir = mkdtempSync(join(tmpdir(), 'gs-damage-'));
  try {
    await repo.writeDiskImage(dm, join(dir, 'disk.raw'));
    expect(readFileSync(join(dir, 'disk.raw')).equals(d.goodImage)).toBe(true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

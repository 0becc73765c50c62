import { DamagedObjectError } from './errors';
import { RepositoryLock, type LockOptions } from './locks';
import { FORMAT_VERSION, type DiskManifest, type GroupManifest, type VmManifest } from './manifest';
import { KEYS, Repository, sealedKindOf, type PointSummary } from './repository';
import type { ObjectVersion } from './store';

/** One piece of damage, located as precisely as the manifests allow. */
export interface VerifyProblem {
  group: string;
  snapshotId: string;
  domain?: string;
  target?: string;
  /** Byte offset in the disk of the damaged chunk. */
  offset?: number;
  /** The object that is missing or damaged. */
  object: string;
  /** `overwritten`: Object Lock, a write-once object has a later version (or a delete marker) over its first. */
  problem: 'missing' | 'corrupt' | 'overwritten';
  detail?: string;
}

/** A write-once object (chunk, manifest) whose current version is not its first (Object Lock repositories). */
export interface OverwrittenObject {
  key: string;
  /** The first version: the one the repository wrote, kept by its lock. */
  originalVersionId: string;
  /** Versions (and delete markers) written over it. */
  laterVersions: number;
  /** The current version is a delete marker (the object looks deleted). */
  deleted: boolean;
}

export interface VerifyProgress {
  pointsDone: number;
  pointsTotal: number;
  chunksChecked: number;
  bytesRead: number;
}

export interface VerifyResult {
  ok: boolean;
  readData: boolean;
  points: { group: string; snapshotId: string; ok: boolean; problems: number }[];
  chunksChecked: number;
  /** Plaintext bytes read and checked (`readData` only). */
  bytesRead: number;
  problems: VerifyProblem[];
  /** With `repair`: the objects brought back to their first version. */
  repaired?: { key: string; versionId: string }[];
}

export interface VerifyOptions {
  group?: string;
  /** Also read every chunk, decrypt it and check it against its name. @default false */
  readData?: boolean;
  /** Chunks read at once with `readData`. @default 4 */
  concurrency?: number;
  onProgress?: (p: VerifyProgress) => void;
  /** Record the outcome beside each point (what `repo list` shows). @default true */
  record?: boolean;
  /** Settings of the shared lock held while verifying (tests). */
  lock?: LockOptions;
  /**
   * Object Lock: bring every overwritten write-once object back to its first version (the one its lock kept) before
   * checking. Needs credentials that list and copy versions (the admin's).
   */
  repair?: boolean;
}

/**
 * Object Lock: the chunks and manifests under `prefix` whose current version is not their first. The repository
 * writes each of them once (`If-None-Match: *`), so any later version or delete marker was written by someone else.
 */
export async function findOverwritten(repo: Repository, prefix: string): Promise<OverwrittenObject[]> {
  const byKey = new Map<string, ObjectVersion[]>();
  for await (const v of repo.locking.listVersions(prefix)) {
    if (!v.key.startsWith(KEYS.chunksPrefix) && !['group', 'vm', 'disk'].includes(sealedKindOf(v.key) ?? '')) continue;
    byKey.set(v.key, [...(byKey.get(v.key) ?? []), v]);
  }
  const out: OverwrittenObject[] = [];
  for (const [key, list] of byKey) {
    if (list.length < 2 && !list[0]?.deleteMarker) continue;
    // Versions are listed newest first: the original is the last real version listed.
    const real = list.filter((v) => !v.deleteMarker);
    const original = real.at(-1);
    if (!original) continue;
    const current = list.find((v) => v.latest);
    if (current && !current.deleteMarker && current.etag !== undefined && current.etag === original.etag) continue;
    out.push({
      key,
      originalVersionId: original.versionId,
      laterVersions: list.length - 1,
      deleted: Boolean(current?.deleteMarker),
    });
  }
  return out.sort((a, b) => a.key.localeCompare(b.key));
}

/** Makes each object's first version its current one again (a copy, locked as the original was if it still is). */
async function repairOverwritten(repo: Repository, damage: OverwrittenObject[]) {
  const repaired: { key: string; versionId: string }[] = [];
  for (const d of damage) {
    const held = await repo.locking.retention(d.key, d.originalVersionId);
    const lock = held && held.until.getTime() > repo.now() ? held : undefined;
    await repo.locking.restoreVersion(d.key, d.originalVersionId, lock);
    repaired.push({ key: d.key, versionId: d.originalVersionId });
  }
  return repaired;
}

/**
 * Checks every point (or one group's): every manifest opens, every chunk its disks name exists, and with
 * `readData` every chunk decrypts and matches its keyed hash. Damage is reported as group/VM/disk/offset.
 */
export async function verifyRepository(repo: Repository, opts: VerifyOptions = {}): Promise<VerifyResult> {
  // A shared lock: prune does not delete a point (or sweep chunks) while it is being checked.
  return RepositoryLock.holdForReading(repo, () => verifyUnlocked(repo, opts), opts.lock ?? {});
}

async function verifyUnlocked(repo: Repository, opts: VerifyOptions): Promise<VerifyResult> {
  const scope = opts.group ? repo.pointPrefix(opts.group, 'x').slice(0, -2) : KEYS.pointsPrefix;
  let overwritten = repo.objectLock ? await findOverwrittenIn(repo, scope) : [];
  let repaired: { key: string; versionId: string }[] | undefined;
  if (opts.repair && repo.objectLock) {
    repaired = await repairOverwritten(repo, overwritten);
    overwritten = await findOverwrittenIn(repo, scope);
  }
  const result = await verifyPoints(repo, opts, overwritten);
  if (repaired) result.repaired = repaired;
  return result;
}

async function findOverwrittenIn(repo: Repository, scope: string): Promise<OverwrittenObject[]> {
  return [...(await findOverwritten(repo, scope)), ...(await findOverwritten(repo, KEYS.chunksPrefix))];
}

async function verifyPoints(
  repo: Repository,
  opts: VerifyOptions,
  overwritten: OverwrittenObject[],
): Promise<VerifyResult> {
  const tampered = new Map(overwritten.map((o) => [o.key, o]));
  const listing = await repo.listPointsReport(opts.group ? { group: opts.group } : {});
  const points: PointSummary[] = listing.points;
  // What the store holds, listed: the chunk index (loadChunkIndex) may miss chunks, and verify reports the truth.
  const existing = await repo.listChunks();
  const readResults = new Map<string, Promise<DamagedObjectError | undefined>>();
  const result: VerifyResult = {
    ok: true,
    readData: Boolean(opts.readData),
    points: [],
    chunksChecked: 0,
    bytesRead: 0,
    problems: [],
  };
  const progress: VerifyProgress = { pointsDone: 0, pointsTotal: points.length, chunksChecked: 0, bytesRead: 0 };
  // Points whose group manifest does not open: reported as they are (the group is unknown without the manifest).
  for (const d of listing.damaged) {
    const at = { group: d.group ?? `?${d.groupTag}`, snapshotId: d.snapshotId };
    result.problems.push({ ...at, object: d.manifest, problem: d.problem, detail: d.detail });
    result.points.push({ ...at, ok: false, problems: 1 });
  }
  // Object Lock: a point whose group manifest a delete marker hides is not listed at all: named from its key.
  const listed = new Set([...points.map((p) => p.manifest), ...listing.damaged.map((d) => d.manifest)]);
  for (const o of overwritten) {
    if (sealedKindOf(o.key) !== 'group' || listed.has(o.key)) continue;
    const [, tag, snapshotId] = o.key.split('/');
    const at = { group: opts.group ?? `?${tag}`, snapshotId };
    result.problems.push({ ...at, object: o.key, problem: 'overwritten', detail: overwrittenDetail(o) });
    result.points.push({ ...at, ok: false, problems: 1 });
  }
  const overwrittenAt = (key: string): string | undefined => {
    const o = tampered.get(key);
    return o ? overwrittenDetail(o) : undefined;
  };

  const checkChunk = (id: string): Promise<DamagedObjectError | undefined> => {
    let p = readResults.get(id);
    if (!p) {
      p = repo.readChunk(id).then(
        (data) => {
          result.bytesRead += data.length;
          progress.bytesRead = result.bytesRead;
          return undefined;
        },
        (err: unknown) => {
          if (err instanceof DamagedObjectError) return err;
          throw err;
        },
      );
      readResults.set(id, p);
    }
    return p;
  };

  for (const point of points) {
    const problems: VerifyProblem[] = [];
    const at = { group: point.group, snapshotId: point.snapshotId };
    const damaged = (object: string, err: unknown, where: Partial<VerifyProblem> = {}): void => {
      if (!(err instanceof DamagedObjectError)) throw err;
      problems.push({ ...at, ...where, object, problem: err.problem, ...(err.message ? { detail: err.message } : {}) });
    };
    const checkWriteOnce = (object: string, where: Partial<VerifyProblem> = {}): void => {
      const detail = overwrittenAt(object);
      if (detail) problems.push({ ...at, ...where, object, problem: 'overwritten', detail });
    };
    let group: GroupManifest | undefined;
    checkWriteOnce(point.manifest);
    try {
      group = await repo.readGroupManifest(point.group, point.snapshotId);
    } catch (err) {
      damaged(point.manifest, err);
    }
    for (const v of group?.vms ?? []) {
      checkWriteOnce(v.manifest, { domain: v.domain });
      let vm: VmManifest;
      try {
        vm = await repo.readManifestAt<VmManifest>(v.manifest);
      } catch (err) {
        damaged(v.manifest, err, { domain: v.domain });
        continue;
      }
      for (const d of vm.disks) {
        checkWriteOnce(d.manifest, { domain: vm.domain, target: d.target });
        let disk: DiskManifest;
        try {
          disk = await repo.readManifestAt<DiskManifest>(d.manifest);
        } catch (err) {
          damaged(d.manifest, err, { domain: vm.domain, target: d.target });
          continue;
        }
        const where = (i: number) => ({ domain: vm.domain, target: d.target, offset: i * disk.chunkSize });
        const pending: Promise<void>[] = [];
        for (const [i, id] of disk.chunks.entries()) {
          if (id === null) continue;
          result.chunksChecked++;
          progress.chunksChecked = result.chunksChecked;
          if (tampered.has(Repository.chunkKey(id))) {
            checkWriteOnce(Repository.chunkKey(id), where(i));
            continue;
          }
          if (!existing.has(id)) {
            problems.push({ ...at, ...where(i), object: Repository.chunkKey(id), problem: 'missing' });
            continue;
          }
          if (!opts.readData) continue;
          pending.push(
            checkChunk(id).then((err) => {
              if (err) damaged(err.key, err, where(i));
              opts.onProgress?.({ ...progress });
            }),
          );
          if (pending.length >= (opts.concurrency ?? 4)) await Promise.all(pending.splice(0));
        }
        await Promise.all(pending);
      }
    }
    problems.sort(
      (a, b) => `${a.domain}/${a.target}`.localeCompare(`${b.domain}/${b.target}`) || (a.offset ?? 0) - (b.offset ?? 0),
    );
    result.problems.push(...problems);
    result.points.push({ ...at, ok: problems.length === 0, problems: problems.length });
    if (opts.record !== false && group) {
      await repo.writeVerification(point.group, point.snapshotId, {
        version: FORMAT_VERSION,
        verifiedAt: new Date().toISOString(),
        readData: Boolean(opts.readData),
        ok: problems.length === 0,
        problems: problems.length,
      });
    }
    progress.pointsDone++;
    opts.onProgress?.({ ...progress });
  }
  result.ok = result.problems.length === 0;
  return result;
}

function overwrittenDetail(o: OverwrittenObject): string {
  return (
    `${o.deleted ? 'hidden by a delete marker' : 'written over'} (${o.laterVersions} later version(s) of a write-once ` +
    `object): 'groupsnap repo verify --repair' brings back version ${o.originalVersionId}`
  );
}

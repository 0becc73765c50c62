import { DamagedObjectError } from './errors';
import { RepositoryLock, type LockOptions } from './locks';
import { FORMAT_VERSION, type DiskManifest, type GroupManifest, type VmManifest } from './manifest';
import { Repository, type PointSummary } from './repository';

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
  problem: 'missing' | 'corrupt';
  detail?: string;
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
    let group: GroupManifest | undefined;
    try {
      group = await repo.readGroupManifest(point.group, point.snapshotId);
    } catch (err) {
      damaged(point.manifest, err);
    }
    for (const v of group?.vms ?? []) {
      let vm: VmManifest;
      try {
        vm = await repo.readManifestAt<VmManifest>(v.manifest);
      } catch (err) {
        damaged(v.manifest, err, { domain: v.domain });
        continue;
      }
      for (const d of vm.disks) {
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

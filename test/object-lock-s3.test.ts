/**
 * A repository with Object Lock on a real versitygw (posix backend with `--versioning-dir`, internal IAM): the hosts
 * export with write-only credentials (the bucket policy of backup/s3-policy.ts) and cannot delete a point's objects;
 * a key holder's overwrite of a manifest or a chunk is found by verify and undone by `verify --repair`, after which
 * the point restores bit-identical; prune keeps a point whose lock holds and says until when, and removes one whose
 * lock lapsed; dedup extends the locks of shared chunks, once.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createExportActivities } from '../activities/export-activities';
import { createExportContext } from '../activities/export/context';
import { writeGroupManifest } from '../activities/export/manifests';
import { deriveKeys, seal } from '../backup/crypto';
import { RepositoryInputError, RepositoryNotFoundError } from '../backup/errors';
import { exportDisk, type ExportBase } from '../backup/export-disk';
import { RepositoryLock } from '../backup/locks';
import { FORMAT_VERSION, type DiskManifest, type GroupManifest } from '../backup/manifest';
import { chunkNeededUntil, DAY_MS } from '../backup/object-lock';
import { pruneRepository } from '../backup/prune';
import { Repository } from '../backup/repository';
import { hostBucketPolicy } from '../backup/s3-policy';
import { S3Store, openStore } from '../backup/store';
import { verifyRepository } from '../backup/verify';
import { S3Server } from '../dev/s3-server';
import { writeTestPoint } from './helpers/repo-points';
import { CLI } from './helpers/worker-process';
import type { ExportDiskReport } from '../common/backup-types';
import { renderVmMetadata } from '../common/catalog';
import type { Hypervisor } from '../hypervisor/hypervisor';

const run = promisify(execFile);
const CHUNK = 64 * 1024;
const MiB = 1024 * 1024;

let s3: S3Server;
let dir: string;
let hostCreds: { accessKeyId: string; secretAccessKey: string };
const saved: Record<string, string | undefined> = {};
const key = randomBytes(32);
const keyFile = () => join(dir, 'repo.key');

beforeAll(async () => {
  s3 = await S3Server.start({ objectLock: true });
  for (const [k, v] of Object.entries(s3.env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  dir = mkdtempSync(join(tmpdir(), 'groupsnap-lock-'));
  writeFileSync(keyFile(), key.toString('base64'), { mode: 0o600 });
  hostCreds = await s3.createUser();
});

afterAll(async () => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await s3?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A qcow2 image of 2 MiB with 1 MiB of random data, and its raw content. */
async function image(name: string, backing?: string): Promise<string> {
  const file = join(dir, `${name}.qcow2`);
  const args = backing
    ? ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, file]
    : ['create', '-q', '-f', 'qcow2', file, '2M'];
  await run('qemu-img', args);
  const data = join(dir, `${name}.bin`);
  writeFileSync(data, randomBytes(backing ? CHUNK : MiB));
  await run('qemu-io', [
    '-f',
    'qcow2',
    file,
    '-c',
    `write -s ${data} ${backing ? 1536 * 1024 : 0} ${backing ? CHUNK : MiB}`,
  ]);
  return file;
}

async function rawOf(file: string): Promise<Buffer> {
  const out = `${file}.raw`;
  await run('qemu-img', ['convert', '-U', '-O', 'raw', file, out]);
  return readFileSync(out);
}

/** The host's side of an export of one disk into `repo` (opened with the host's credentials), point written last. */
async function hostExport(url: string, snapshotId: string, file: string, base?: ExportBase, clock?: () => number) {
  const repo = await Repository.open(url, key, { s3: { credentials: hostCreds }, ...(clock ? { clock } : {}) });
  let disk: DiskManifest;
  try {
    disk = await RepositoryLock.hold(
      repo,
      'export',
      async (lock) => {
        repo.useLock(lock);
        const names = { group: 'shop', snapshotId, domain: 'db-1', target: 'vda' };
        return (await exportDisk({ repo, names, image: file, format: 'qcow2', ...(base ? { base } : {}) })).manifest;
      },
      { owner: 'hv-a' },
    );
    repo.useLock(undefined);
    const stats = disk.stats;
    const entry = { target: 'vda', virtualSize: disk.virtualSize, sourceFormat: 'qcow2', sourceImage: file, stats };
    const vmKey = await repo.writeVmManifest({
      version: FORMAT_VERSION,
      group: 'shop',
      snapshotId,
      domain: 'db-1',
      host: 'hv-a',
      domainXml: '<domain><name>db-1</name></domain>',
      disks: [{ ...entry, manifest: repo.diskManifestKey('shop', snapshotId, 'db-1', 'vda') }],
    });
    // The group manifest through the host's activity (it checks the chunks' locks against the point's).
    const ctx = createExportContext({
      hypervisor: {} as Hypervisor,
      hostId: 'hv-a',
      stateDir: dir,
      keyFile: keyFile(),
      repositoryOptions: { s3: { credentials: hostCreds }, ...(clock ? { clock } : {}) },
    });
    await writeGroupManifest(ctx, {
      repository: url,
      group: 'shop',
      snapshotId,
      snapshotCreatedAt: new Date((clock ?? Date.now)()).toISOString(),
      vms: [
        { domain: 'db-1', host: 'hv-a', manifest: vmKey, disks: [{ target: 'vda', virtualSize: disk.virtualSize }] },
      ],
      stats: { logicalBytes: disk.virtualSize, ...stats },
    });
  } finally {
    repo.close();
  }
  return { disk, image: file };
}

async function restoreBytes(repo: Repository, snapshotId: string, domain = 'db-1'): Promise<Buffer> {
  const out = join(dir, `${snapshotId}.restored`);
  await repo.writeDiskImage(await repo.readDiskManifest('shop', snapshotId, domain, 'vda'), out);
  return readFileSync(out);
}

describe('repository with Object Lock on versitygw', () => {
  it('refuses Object Lock on a directory and on a bucket without it (nothing created)', async () => {
    await expect(
      Repository.init(`file://${join(dir, 'plain')}`, key, { objectLock: { days: 1, mode: 'compliance' } }),
    ).rejects.toThrow(RepositoryInputError);
    await s3.createBucket('gs-lock-plain');
    await expect(
      Repository.init('s3://gs-lock-plain/r', key, { objectLock: { days: 1, mode: 'compliance' } }),
    ).rejects.toThrow(/no Object Lock/);
    await expect(Repository.open('s3://gs-lock-plain/r', key)).rejects.toThrow(RepositoryNotFoundError);
  });

  const url = 's3://gs-lock-a/repo';
  let p1: { disk: DiskManifest; image: string };
  let p2: { disk: DiskManifest; image: string };

  it('hosts export with write-only credentials; dedup extends the shared chunks\u2019 locks, once', async () => {
    const admin = await Repository.init(url, key, { chunkSize: CHUNK, objectLock: { days: 1, mode: 'compliance' } });
    expect(admin.config.version).toBe(3);
    await s3.putBucketPolicy(
      'gs-lock-a',
      hostBucketPolicy(url, { principal: hostCreds.accessKeyId, conditionalWrites: false }),
    );
    const base = await image('p1');
    p1 = await hostExport(url, 'gs-20261207T080000Z-aaaaaa', base);
    const listed = await admin.listPoints();
    expect(listed).toHaveLength(1);
    const lockedUntil = Date.parse(listed[0].retainUntil as string);
    expect(lockedUntil).toBeGreaterThan(Date.now() + DAY_MS - 60_000);
    // Every chunk the point names is locked at least as long as the point.
    const ids = p1.disk.chunks.filter((c): c is string => c !== null);
    for (const id of ids.slice(0, 3)) {
      const r = await admin.locking.retention(Repository.chunkKey(id));
      expect(r?.mode).toBe('compliance');
      expect(r!.until.getTime()).toBeGreaterThanOrEqual(lockedUntil);
    }

    // Point 2, two days later (the host's clock): incremental, so most of its chunks come from point 1's manifest
    // unread; their locks (point 1's) end before point 2's would, so they are extended.
    const later = () => Date.now() + 2 * DAY_MS;
    const overlay = await image('p2', base);
    const counting = openStore(url, { credentials: hostCreds }) as S3Store;
    let extensions = 0;
    const setRetention = counting.locking.setRetention.bind(counting.locking);
    counting.locking.setRetention = (...a) => {
      extensions++;
      return setRetention(...a);
    };
    const hostRepo = await Repository.open(url, key, { store: counting, clock: later });
    p2 = await hostExport(
      url,
      'gs-20261209T080000Z-bbbbbb',
      overlay,
      { snapshotId: 'gs-20261207T080000Z-aaaaaa', image: base, manifest: p1.disk },
      later,
    );
    expect(p2.disk.stats.mode).toBe('incremental');
    const needed = chunkNeededUntil({ days: 1, mode: 'compliance' }, later() - 60_000);
    for (const id of ids.slice(0, 3)) {
      const r = await admin.locking.retention(Repository.chunkKey(id));
      expect(r!.until.getTime()).toBeGreaterThanOrEqual(needed);
    }
    // A third point at the same time finds them long enough in the chunk index: no extension at all.
    await hostRepo.loadChunkIndex();
    expect(
      await hostRepo.ensureRetention(p2.disk.chunks, chunkNeededUntil({ days: 1, mode: 'compliance' }, later())),
    ).toEqual([]);
    expect(extensions).toBe(0);
    hostRepo.close();
    admin.close();
  });

  it("with the hosts' credentials a point's objects cannot be deleted; overwrites are found and repaired", async () => {
    const admin = await Repository.open(url, key);
    const snap = 'gs-20261207T080000Z-aaaaaa';
    const expected = await rawOf(p1.image);
    const host: S3Client = s3.client(hostCreds);
    const full = (k: string) => `repo/${k}`;
    const groupKey = admin.groupManifestKey('shop', snap);
    const chunkKey = Repository.chunkKey(p1.disk.chunks.find((c) => c !== null) as string);
    try {
      for (const k of [groupKey, chunkKey, admin.diskManifestKey('shop', snap, 'db-1', 'vda')]) {
        await expect(host.send(new DeleteObjectCommand({ Bucket: 'gs-lock-a', Key: full(k) }))).rejects.toThrow(
          /Access Denied/,
        );
      }
      const [version] = await collect(admin.locking.listVersions(groupKey));
      await expect(
        host.send(new DeleteObjectCommand({ Bucket: 'gs-lock-a', Key: full(groupKey), VersionId: version.versionId })),
      ).rejects.toThrow(/Access Denied/);
      // The repository's own writes are write-once: a second write of the manifest is refused by the store.
      await expect(
        host.send(new PutObjectCommand({ Bucket: 'gs-lock-a', Key: full(groupKey), Body: 'x', IfNoneMatch: '*' })),
      ).rejects.toThrow(/pre-condition|PreconditionFailed/i);
      // A key holder on a host writes an authentic group manifest that names no VM, and junk over a chunk.
      const forged: GroupManifest = { ...(await admin.readGroupManifest('shop', snap)), label: 'forged', vms: [] };
      const keys = deriveKeys(key, admin.config.id);
      const body = await seal(keys, Buffer.from(JSON.stringify(forged)), groupKey);
      await host.send(new PutObjectCommand({ Bucket: 'gs-lock-a', Key: full(groupKey), Body: body }));
      await host.send(new PutObjectCommand({ Bucket: 'gs-lock-a', Key: full(chunkKey), Body: randomBytes(100) }));
    } finally {
      host.destroy();
    }
    expect((await admin.readGroupManifest('shop', snap)).label).toBe('forged');

    const found = await verifyRepository(admin);
    expect(found.ok).toBe(false);
    expect(found.problems.filter((p) => p.problem === 'overwritten').map((p) => p.object)).toEqual(
      expect.arrayContaining([groupKey, chunkKey]),
    );

    const repaired = await verifyRepository(admin, { repair: true, readData: true });
    expect(repaired.repaired?.map((r) => r.key)).toEqual(expect.arrayContaining([groupKey, chunkKey]));
    expect(repaired.problems).toEqual([]);
    expect(repaired.ok).toBe(true);
    expect((await admin.readGroupManifest('shop', snap)).label).toBeUndefined();
    expect((await restoreBytes(admin, snap)).equals(expected)).toBe(true);
    // The repaired group manifest is locked again as the original was.
    const r = await admin.locking.retention(groupKey);
    expect(r?.until.getTime()).toBeGreaterThan(Date.now());
    admin.close();
  });

  it("the host's export activities run with the write-only credentials (no delete but their locks')", async () => {
    const snapshotId = 'gs-20261207T100000Z-eeeeee';
    // The newest point of the repository, whenever the test runs (the others are taken now and two days later).
    const createdAt = new Date(Date.now() + 3 * DAY_MS).toISOString();
    const file = await image('p5');
    const hypervisor = {
      getMetadata: async () =>
        renderVmMetadata({
          tags: [],
          clones: [],
          restores: [],
          snapshots: [
            {
              snapshotId,
              group: 'shop',
              createdAt,
              disks: [{ target: 'vda', image: file, overlay: join(dir, 'p5.overlay.qcow2') }],
            },
          ],
        }),
      describe: async () => ({ disks: [{ target: 'vda', format: 'qcow2' }] }),
      domainXml: async () => '<domain><name>db-2</name></domain>',
    } as unknown as Hypervisor;
    const acts = createExportActivities({
      hypervisor,
      hostId: 'hv-b',
      stateDir: join(dir, 'state-hv-b'),
      keyFile: keyFile(),
      repositoryOptions: { s3: { credentials: hostCreds } },
    });
    const env = new MockActivityEnvironment();
    const req = { repository: url, group: 'shop', snapshotId, domain: 'db-2' };
    const disk = (await env.run(() => acts.exportVmDisk({ ...req, target: 'vda' }))) as ExportDiskReport;
    const { domain: _d, target: _t, manifestKey, chunksResumed: _c, ...entry } = disk;
    const vmKey: string = await env.run(() =>
      acts.writeVmManifest({ ...req, disks: [{ target: 'vda', manifest: manifestKey, ...entry }] }),
    );
    await env.run(() =>
      acts.writeGroupManifest({
        repository: url,
        group: 'shop',
        snapshotId,
        snapshotCreatedAt: createdAt,
        vms: [
          { domain: 'db-2', host: 'hv-b', manifest: vmKey, disks: [{ target: 'vda', virtualSize: disk.virtualSize }] },
        ],
        stats: { logicalBytes: disk.virtualSize, ...disk.stats },
      }),
    );
    const admin = await Repository.open(url, key);
    const point = (await admin.listPoints()).find((p) => p.snapshotId === snapshotId);
    expect(Date.parse(point?.retainUntil as string)).toBeGreaterThan(Date.now());
    expect((await restoreBytes(admin, snapshotId, 'db-2')).equals(await rawOf(file))).toBe(true);
    admin.close();
  });

  it('prune keeps a point whose lock holds and says until when', async () => {
    const admin = await Repository.open(url, key);
    const result = await pruneRepository(admin, { policy: { keepLast: 1 } });
    // The newest point (the activities', dated three days ahead) is kept by the policy; the two others are locked.
    expect(result.held.map((h) => h.snapshotId).sort()).toEqual([
      'gs-20261207T080000Z-aaaaaa',
      'gs-20261209T080000Z-bbbbbb',
    ]);
    for (const h of result.held) expect(Date.parse(h.until)).toBeGreaterThan(Date.now() + DAY_MS / 2);
    expect(result.groups[0].deleted).toEqual([]);
    expect((await admin.listPoints()).length).toBe(3);
    expect((await restoreBytes(admin, 'gs-20261207T080000Z-aaaaaa')).equals(await rawOf(p1.image))).toBe(true);
    admin.close();
  });

  it('prune removes a point once its lock lapsed, and keeps its chunks while their locks hold', async () => {
    const lapseUrl = 's3://gs-lock-b/repo';
    // Exported "a day ago": its manifests' locks lapse in 4 s, its chunks' (a day of slack more) tomorrow.
    const past = () => Date.now() - DAY_MS + 4000;
    const admin = await Repository.init(lapseUrl, key, {
      chunkSize: CHUNK,
      objectLock: { days: 1, mode: 'compliance' },
    });
    await s3.putBucketPolicy(
      'gs-lock-b',
      hostBucketPolicy(lapseUrl, { principal: hostCreds.accessKeyId, conditionalWrites: false }),
    );
    await hostExport(lapseUrl, 'gs-20261206T080000Z-cccccc', await image('p3'), undefined, past);
    await hostExport(lapseUrl, 'gs-20261207T090000Z-dddddd', await image('p4'));
    await new Promise((r) => setTimeout(r, 5000));
    const result = await pruneRepository(admin, { policy: { keepLast: 1 } });
    expect(result.held).toEqual([]);
    expect(result.groups[0].deleted).toEqual(['gs-20261206T080000Z-cccccc']);
    expect((await admin.listPoints()).map((p) => p.snapshotId)).toEqual(['gs-20261207T090000Z-dddddd']);
    // Its manifests are gone for good (every version), its chunks kept until their locks lapse.
    expect(await collect(admin.locking.listVersions(admin.pointPrefix('shop', 'gs-20261206T080000Z-cccccc')))).toEqual(
      [],
    );
    expect(result.sweep).toMatchObject({ done: true, chunksDeleted: 0 });
    if (!result.sweep.done) throw new Error('no sweep');
    expect(result.sweep.chunksHeld).toBeGreaterThan(0);
    expect(Date.parse(result.sweep.heldUntil as string)).toBeGreaterThan(Date.now());
    expect((await verifyRepository(admin)).ok).toBe(true);
    admin.close();
  });
});

describe('the CLI on a repository with Object Lock', () => {
  const cli = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [CLI, ...args, '--key-file', keyFile()],
        { env: { ...process.env }, timeout: 60_000 },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });

  it('init creates the locked bucket; list shows each point locked until when; prune says what it keeps', async () => {
    const cliUrl = 's3://gs-lock-cli/repo';
    const init = await cli([
      'repo',
      'init',
      cliUrl,
      '--object-lock',
      '2',
      '--lock-mode',
      'governance',
      '--chunk-size',
      '1',
    ]);
    expect(init.code).toBe(0);
    expect(init.stdout).toMatch(/every point locked 2 day\(s\) in governance mode/);
    const repo = await Repository.open(cliUrl, key);
    await writeTestPointLocked(repo, 'gs-20261201T000000Z-ffffff', '2026-12-01T00:00:00.000Z');
    await writeTestPointLocked(repo, 'gs-20261202T000000Z-gggggg', '2026-12-02T00:00:00.000Z');
    repo.close();
    const listed = await cli(['repo', 'list', cliUrl]);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/gs-20261201T000000Z-ffffff .*locked until 20\d\d-/);
    const json = JSON.parse((await cli(['repo', 'list', cliUrl, '--json'])).stdout) as {
      locked: boolean;
      lockedUntil: string;
    }[];
    expect(json.map((p) => p.locked)).toEqual([true, true]);
    expect(Date.parse(json[0].lockedUntil)).toBeGreaterThan(Date.now() + DAY_MS);
    const pruned = await cli(['repo', 'prune', cliUrl, '--keep-last', '1']);
    expect(pruned.code).toBe(0);
    expect(pruned.stdout).toMatch(/gs-20261201T000000Z-ffffff kept: its object lock holds until 20\d\d-/);
    const prunedJson = JSON.parse((await cli(['repo', 'prune', cliUrl, '--keep-last', '1', '--json'])).stdout);
    expect(prunedJson.held).toEqual([
      { group: 'shop', snapshotId: 'gs-20261201T000000Z-ffffff', until: json[0].lockedUntil },
    ]);
    // The exclusive lock is taken again and again (no delete marker left behind on the versioned bucket).
    expect((await cli(['repo', 'prune', cliUrl, '--keep-last', '1'])).code).toBe(0);
    const verified = await cli(['repo', 'verify', cliUrl, '--json']);
    expect(verified.code).toBe(0);
  });
});

/** A point of one 1 MiB chunk of random data, written by the repository (locked, as an export writes it). */
async function writeTestPointLocked(repo: Repository, snapshotId: string, createdAt: string): Promise<void> {
  await writeTestPoint(repo, 'shop', snapshotId, createdAt, [randomBytes(repo.chunkSize)]);
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

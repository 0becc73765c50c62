/**
 * Object Lock of a repository over a fake locking store (test/helpers/locking-store.ts) and the file store: the
 * authenticated config (format 3), locks on what is written, cheap extension of shared chunks' locks, hosts that never
 * delete, prune that waits for locks. The same behaviour on a real versitygw: test/object-lock-s3.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DamagedObjectError, RepositoryInputError } from '../../backup/errors';
import {
  ChunkRetention,
  chunkNeededUntil,
  chunkRetainUntil,
  DAY_MS,
  datedIndexBody,
  lockSlackMs,
  manifestRetainUntil,
  parseDatedIndexBody,
} from '../../backup/object-lock';
import { pruneRepository } from '../../backup/prune';
import { hostBucketPolicy } from '../../backup/s3-policy';
import { Repository } from '../../backup/repository';
import { FakeLockingStore } from '../helpers/locking-store';
import { writeTestPoint } from '../helpers/repo-points';

const CHUNK = 64 * 1024;
const LOCK = { days: 7, mode: 'compliance' as const };
const key = randomBytes(32);
let dir: string;
let url: string;
let clock: number;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'groupsnap-lock-unit-'));
  url = pathToFileURL(join(dir, 'repo')).href;
  clock = Date.parse('2026-12-07T08:00:00Z');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const store = () => new FakeLockingStore(url, join(dir, 'repo'), () => clock);
const init = (s = store()) =>
  Repository.init(url, key, { store: s, chunkSize: CHUNK, objectLock: LOCK, clock: () => clock });
const open = (s: FakeLockingStore) => Repository.open(url, key, { store: s, clock: () => clock });

describe('lock dates', () => {
  it('locks chunks longer than points, by a slack of a quarter period (a day at least)', () => {
    expect(lockSlackMs({ days: 1, mode: 'compliance' })).toBe(DAY_MS);
    expect(lockSlackMs({ days: 30, mode: 'compliance' })).toBe(8 * DAY_MS);
    const t = 1_000_000;
    expect(manifestRetainUntil(LOCK, t)).toBe(t + 7 * DAY_MS);
    expect(chunkNeededUntil(LOCK, t)).toBe(t + 8 * DAY_MS);
    expect(chunkRetainUntil(LOCK, t)).toBe(t + 9 * DAY_MS);
  });

  it('knows the latest date a chunk is locked until, from dated index objects and notes', () => {
    const a = 'aa'.repeat(32);
    const b = 'bb'.repeat(32);
    const r = new ChunkRetention();
    r.addSorted(100, Buffer.from(a + b, 'hex'));
    r.addSorted(300, Buffer.from(b, 'hex'));
    r.note(a, 50);
    expect(r.until(a)).toBe(100);
    expect(r.until(b)).toBe(300);
    expect(r.until('cc'.repeat(32))).toBe(0);
    const body = datedIndexBody(12345, Buffer.from(a, 'hex'));
    expect(parseDatedIndexBody(body)).toEqual({ until: 12345, ids: Buffer.from(a, 'hex') });
  });
});

describe('a repository with Object Lock', () => {
  it('is format 3 with its lock settings authenticated: a changed period is refused', async () => {
    const s = store();
    const repo = await init(s);
    expect(repo.config).toMatchObject({ version: 3, objectLock: LOCK });
    const file = join(dir, 'repo', 'config');
    const config = JSON.parse(readFileSync(file, 'utf8'));
    writeFileSync(file, JSON.stringify({ ...config, objectLock: { ...LOCK, days: 1 } }));
    await expect(open(s)).rejects.toThrow(DamagedObjectError);
    writeFileSync(file, JSON.stringify({ ...config, objectLock: undefined }));
    await expect(open(s)).rejects.toThrow(/format and its Object Lock settings disagree/);
    // A reader of a newer format refuses as it should (and a format-2 groupsnap refuses format 3 the same way).
    writeFileSync(file, JSON.stringify({ ...config, version: 4 }));
    await expect(open(s)).rejects.toThrow(/format 4 is newer/);
  });

  it('cannot be made in a directory, which cannot lock objects (nothing written)', async () => {
    await expect(Repository.init(url, key, { objectLock: LOCK })).rejects.toThrow(RepositoryInputError);
    await expect(Repository.init(url, key, { objectLock: { days: 0, mode: 'compliance' } })).rejects.toThrow(
      /whole number of days/,
    );
    expect(existsSync(join(dir, 'repo', 'config'))).toBe(false);
  });

  it('locks chunks and manifests, write-once; the point carries its lock date', async () => {
    const s = store();
    const repo = await init(s);
    const ids = await writeTestPoint(repo, 'shop', 'gs-1', '2026-12-07T07:00:00Z', [randomBytes(CHUNK), null]);
    const point = (await repo.listPoints())[0];
    expect(point.retainUntil).toBe(new Date(clock + 7 * DAY_MS).toISOString());
    expect(s.retentions.get(Repository.chunkKey(ids[0] as string))?.until.getTime()).toBe(clock + 9 * DAY_MS);
    expect(s.retentions.get(point.manifest)?.until.getTime()).toBe(clock + 7 * DAY_MS);
    // Written again (an export's retry): the first write stands.
    await expect(repo.writeGroupManifest(await repo.readGroupManifest('shop', 'gs-1'))).resolves.toBe(point.manifest);
  });

  it('extends only the chunks whose known lock is too short, and a host never deletes (no index compaction)', async () => {
    const s = store();
    const repo = await init(s);
    const data = [randomBytes(CHUNK), randomBytes(CHUNK)];
    const ids = (await writeTestPoint(repo, 'shop', 'gs-1', '2026-12-07T07:00:00Z', data)) as string[];
    await repo.indexChunks(ids);
    for (let i = 0; i < 40; i++) await repo.indexChunks([randomBytes(32).toString('hex')]);
    repo.close();

    clock += 3 * DAY_MS;
    const host = await open(s);
    const deletes = s.calls.delete;
    await host.loadChunkIndex({ compact: true });
    expect(s.calls.delete).toBe(deletes); // 41 index objects, none compacted: hosts never delete
    // Chunks locked until day 9 are too short for a point exported on day 3 (needs day 11): extended once.
    const needed = chunkNeededUntil(LOCK, clock);
    expect((await host.ensureRetention(ids, needed)).sort()).toEqual([...ids].sort());
    expect(s.calls.setRetention).toBe(2);
    expect(await host.ensureRetention(ids, needed)).toEqual([]);
    expect(s.calls.setRetention).toBe(2);
    // A chunk locked longer than the index knows: the store refuses to shorten it, and it is long enough.
    s.retentions.set(Repository.chunkKey(ids[0]), { mode: 'compliance', until: new Date(clock + 100 * DAY_MS) });
    const fresh = await open(s);
    await expect(fresh.ensureRetention([ids[0]], needed + DAY_MS)).resolves.toEqual([ids[0]]);
  });

  it('prune keeps a point while its lock holds, says until when, and removes it once lapsed', async () => {
    const s = store();
    const repo = await init(s);
    await writeTestPoint(repo, 'shop', 'gs-1', '2026-12-01T07:00:00Z', [randomBytes(CHUNK)]);
    clock += DAY_MS;
    await writeTestPoint(repo, 'shop', 'gs-2', '2026-12-02T07:00:00Z', [randomBytes(CHUNK)]);
    const held = await pruneRepository(repo, { policy: { keepLast: 1 } });
    expect(held.held).toEqual([
      { group: 'shop', snapshotId: 'gs-1', until: new Date(clock + 6 * DAY_MS).toISOString() },
    ]);
    expect(held.groups[0].deleted).toEqual([]);
    expect((await repo.listPoints()).length).toBe(2);

    clock += 6 * DAY_MS + 1000;
    const done = await pruneRepository(repo, { policy: { keepLast: 1 } });
    expect(done.held).toEqual([]);
    expect(done.groups[0].deleted).toEqual(['gs-1']);
    // Its chunk is locked two days (the slack) longer than the point: kept by the sweep, with its date.
    expect(done.sweep).toMatchObject({ done: true, chunksDeleted: 0, chunksHeld: 1 });
    clock += 2 * DAY_MS;
    const swept = await pruneRepository(repo, { policy: { keepLast: 1 } });
    expect(swept.sweep).toMatchObject({ done: true, chunksDeleted: 1, chunksHeld: 0 });
    expect((await repo.listPoints()).map((p) => p.snapshotId)).toEqual(['gs-2']);
  });
});

describe('the hosts\u2019 bucket policy', () => {
  it('is the one README documents, and never lets hosts delete a version or bypass a lock', () => {
    const readme = readFileSync(join(__dirname, '../../README.md'), 'utf8');
    const block = /### Immutable repositories[\s\S]*?```json\n([\s\S]*?)\n```/.exec(readme);
    const policy = hostBucketPolicy('s3://dr-backups/shop', {
      principal: 'arn:aws:iam::111122223333:user/groupsnap-host',
    });
    expect(JSON.parse(block![1])).toEqual(policy);
    const statements = policy.Statement as { Effect: string; Action: string[]; Resource: string[] }[];
    const allowed = statements.filter((s) => s.Effect === 'Allow');
    expect(allowed.flatMap((s) => s.Action)).not.toContain('s3:DeleteObjectVersion');
    expect(allowed.filter((s) => s.Action.includes('s3:DeleteObject')).flatMap((s) => s.Resource)).toEqual([
      'arn:aws:s3:::dr-backups/shop/locks/*',
    ]);
    const denied = statements.filter((s) => s.Effect === 'Deny').flatMap((s) => s.Action);
    expect(denied).toEqual(expect.arrayContaining(['s3:DeleteObjectVersion', 's3:BypassGovernanceRetention']));
  });
});

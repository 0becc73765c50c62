/**
 * `groupsnap repo init|list|verify|prune` and `export`'s up-front checks, through the built CLI, on a file://
 * repository: JSON output, exit codes (0 done, 1 damage found, 2 bad input with nothing changed), env stand-ins.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Repository } from '../backup/repository';
import { DAMAGED, damageRepository } from './helpers/repo-damage';
import { writeTestPoint } from './helpers/repo-points';
import { CLI } from './helpers/worker-process';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

let dir: string;
let url: string;
let keyFile: string;
const key = randomBytes(32);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'gs-backup-cli-'));
  url = pathToFileURL(join(dir, 'repo')).href;
  keyFile = join(dir, 'key');
  writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const files = (): string[] => readdirSync(dir, { recursive: true }).map(String).sort();

test('repo init creates a repository once; bad key files and URLs are bad input and change nothing', async () => {
  const shortKey = join(dir, 'short.key');
  writeFileSync(shortKey, 'not a key');
  const before = files();
  const runs = await Promise.all(
    [
      ['repo', 'init', url, '--key-file', shortKey],
      ['repo', 'init', 'http://example/x', '--key-file', keyFile],
      ['repo', 'init', url],
    ].map(async (args) => ({ args, r: await cli(args, { GROUPSNAP_REPO_KEY_FILE: '' }) })),
  );
  for (const { args, r } of runs) {
    expect({ args, code: r.code }).toEqual({ args, code: 2 });
    expect(r.stderr).toMatch(/^groupsnap: /);
  }
  expect(files()).toEqual(before);

  const created = await cli(['repo', 'init', '--key-file', keyFile, '--chunk-size', '1', '--json'], {
    GROUPSNAP_REPO: url,
  });
  expect(created.code).toBe(0);
  expect(JSON.parse(created.stdout)).toMatchObject({ status: 'created', url, chunkSize: 1024 * 1024 });
  const again = await cli(['repo', 'init', url, '--key-file', keyFile, '--json']);
  expect(again.code).toBe(2);
  expect(JSON.parse(again.stdout)).toMatchObject({
    status: 'rejected',
    error: expect.stringMatching(/already exists/),
  });
});

test('repo init --object-lock: bad periods and modes, and a directory, are bad input and change nothing', async () => {
  const lockUrl = pathToFileURL(join(dir, 'locked')).href;
  const before = files();
  const cases: [string[], RegExp][] = [
    [['--object-lock', '0'], /--object-lock is a number of days/],
    [['--object-lock', '7', '--lock-mode', 'strict'], /--lock-mode is compliance or governance/],
    [['--lock-mode', 'governance'], /--lock-mode needs --object-lock/],
    [['--object-lock', '7'], /cannot lock objects/],
  ];
  for (const [flags, message] of cases) {
    const r = await cli(['repo', 'init', lockUrl, '--key-file', keyFile, ...flags]);
    expect({ flags, code: r.code }).toEqual({ flags, code: 2 });
    expect(r.stderr).toMatch(message);
  }
  expect(files()).toEqual(before);
});

test('repo list/verify/prune: points with sizes and verification, damage located (exit 1), keep-last with sweep', async () => {
  const repo = await Repository.open(url, key);
  const shared = randomBytes(repo.chunkSize);
  const ids: (string | null)[][] = [];
  for (let day = 1; day <= 3; day++) {
    ids.push(
      await writeTestPoint(repo, 'shop', `gs-2026112${day}T100000Z-00000${day}`, `2026-11-2${day}T10:00:00.000Z`, [
        shared,
        null,
        randomBytes(repo.chunkSize),
      ]),
    );
  }
  repo.close();

  const wrong = join(dir, 'wrong.key');
  writeFileSync(wrong, randomBytes(32), { mode: 0o600 });
  const refused = await cli(['repo', 'list', url, '--key-file', wrong]);
  expect(refused.code).toBe(2);
  expect(refused.stderr).toMatch(/key does not open the repository/);

  const listed = await cli(['repo', 'list', url, '--json'], { GROUPSNAP_REPO_KEY_FILE: keyFile });
  expect(listed.code).toBe(0);
  const points = JSON.parse(listed.stdout);
  expect(points.map((p: { snapshotId: string }) => p.snapshotId)).toEqual([
    'gs-20261121T100000Z-000001',
    'gs-20261122T100000Z-000002',
    'gs-20261123T100000Z-000003',
  ]);
  expect(points[0]).toMatchObject({
    group: 'shop',
    vms: [{ domain: 'db-1', host: 'hv-a', bytes: 3 * 1024 * 1024 }],
    logicalBytes: 3 * 1024 * 1024,
    bytesNew: 2 * 1024 * 1024,
    verified: null,
  });
  expect(points[1].bytesNew).toBe(1024 * 1024); // the shared chunk was already there
  expect((await cli(['repo', 'list', url, '--key-file', keyFile, '--group', 'other', '--json'])).stdout.trim()).toBe(
    '[]',
  );

  const ok = await cli(['repo', 'verify', url, '--key-file', keyFile, '--read-data', '--json']);
  expect(ok.code).toBe(0);
  expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, chunksChecked: 6, bytesRead: 4 * 1024 * 1024 });

  // Flip a byte of the last point's own chunk.
  const victim = join(dir, 'repo', Repository.chunkKey(ids[2][2]!));
  const bytes = readFileSync(victim);
  bytes[bytes.length - 1] ^= 1;
  writeFileSync(victim, bytes);
  const damaged = await cli(['repo', 'verify', url, '--key-file', keyFile, '--read-data']);
  expect(damaged.code).toBe(1);
  expect(damaged.stdout).toContain(`shop gs-20261123T100000Z-000003 db-1/vda offset ${2 * 1024 * 1024}: corrupt`);
  const after = JSON.parse((await cli(['repo', 'list', url, '--key-file', keyFile, '--json'])).stdout);
  expect(after[2].verified).toMatchObject({ ok: false, readData: true, problems: 1 });
  expect(after[0].verified).toMatchObject({ ok: true });

  expect((await cli(['repo', 'prune', url, '--key-file', keyFile, '--keep-last', '-1'])).code).toBe(2);

  const pruned = await cli(['repo', 'prune', url, '--key-file', keyFile, '--keep-last', '1', '--json']);
  expect(pruned.code).toBe(0);
  expect(JSON.parse(pruned.stdout)).toMatchObject({
    groups: [{ group: 'shop', deleted: ['gs-20261121T100000Z-000001', 'gs-20261122T100000Z-000002'] }],
    sweep: { done: true, chunksBefore: 4, chunksDeleted: 2 },
  });
});

test('export checks the repository and key before starting anything', async () => {
  const wrong = join(dir, 'wrong2.key');
  writeFileSync(wrong, randomBytes(32), { mode: 0o600 });
  const [r1, r2, r3] = await Promise.all([
    cli([
      'export',
      'shop',
      'gs-20261123T100000Z-000003',
      '--repo',
      url,
      '--key-file',
      wrong,
      '--address',
      '127.0.0.1:1',
    ]),
    cli(['export', 'shop', 'gs-x', '--repo', 'ftp://nope', '--address', '127.0.0.1:1'], {
      GROUPSNAP_REPO_KEY_FILE: '',
    }),
    cli(['export', 'shop', 'gs-x', '--repo', pathToFileURL(join(dir, 'none')).href, '--key-file', keyFile]),
  ]);
  expect(r1.code).toBe(2);
  expect(r1.stderr).toMatch(/key does not open/);
  expect(r2.code).toBe(2);
  expect(r3.code).toBe(2);
  expect(r3.stderr).toMatch(/no groupsnap repository/);
});

test('a damaged repository: list marks the point, verify names each problem (exit 1), prune sweeps nothing (exit 1)', async () => {
  const durl = pathToFileURL(join(dir, 'damaged')).href;
  const repo = await Repository.init(durl, key, { chunkSize: 64 * 1024 });
  const damage = await damageRepository(repo);
  repo.close();

  const listed = await cli(['repo', 'list', durl, '--key-file', keyFile, '--json']);
  expect(listed.code).toBe(0);
  const rows = JSON.parse(listed.stdout) as { snapshotId: string; damaged?: { object: string } }[];
  expect(rows.map((r) => [r.snapshotId, r.damaged?.object ?? null])).toEqual([
    [DAMAGED.good, null],
    [DAMAGED.truncatedDisk, null],
    [DAMAGED.flippedChunk, null],
    [DAMAGED.junkGroup, damage.groupKeyB],
  ]);
  const text = await cli(['repo', 'list', durl, '--key-file', keyFile, '--group', 'shop']);
  expect(text.stdout).toMatch(new RegExp(`shop ${DAMAGED.junkGroup}  DAMAGED: object ${damage.groupKeyB} is corrupt`));

  const verified = await cli(['repo', 'verify', durl, '--key-file', keyFile, '--read-data']);
  expect(verified.code).toBe(1);
  expect(verified.stdout).toMatch(/^DAMAGED: /);
  for (const object of [damage.groupKeyB, damage.diskKeyC, damage.chunkD]) expect(verified.stdout).toContain(object);

  const pruned = await cli(['repo', 'prune', durl, '--key-file', keyFile, '--keep-last', '10']);
  expect(pruned.code).toBe(1);
  expect(pruned.stdout).toMatch(/sweep not done: 2 manifest\(s\) cannot be read.*no chunk swept/);
  expect(pruned.stdout).toContain(`DAMAGED point ${DAMAGED.junkGroup}`);
  const after = await Repository.open(durl, key);
  const chunks = await after.loadChunkIndex();
  for (const id of [...damage.truncatedChunks, damage.orphan]) expect(chunks.has(id)).toBe(true);
  after.close();
});

test('a key file others can read is bad input naming the chmod; a store that is down exits 1, not 2', async () => {
  const open = join(dir, 'open.key');
  writeFileSync(open, key.toString('base64') + '\n');
  chmodSync(open, 0o644);
  const refused = await cli(['repo', 'list', url, '--key-file', open]);
  expect(refused.code).toBe(2);
  expect(refused.stderr).toContain(`run 'chmod 600 ${open}'`);

  const down = await cli(['repo', 'list', 's3://gs-down/x', '--key-file', keyFile], {
    AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:1',
    AWS_ACCESS_KEY_ID: 'x',
    AWS_SECRET_ACCESS_KEY: 'y',
    AWS_MAX_ATTEMPTS: '1',
  });
  expect(down.code).toBe(1);
  expect(down.stderr).toMatch(/ECONNREFUSED|connect/);
});

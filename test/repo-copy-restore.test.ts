/**
 * A restore from either copy (issue 26): a point stored in a primary repository on a real S3 server (versitygw, an
 * account of its own), copied as a replica and under another key into buckets of another account, the whole first
 * bucket deleted with admin credentials; then `restoreFromRepo` (the real workflow, on a fake hypervisor host whose
 * worker reaches the copies through GROUPSNAP_S3_CREDENTIALS_FILE) rebuilds the group from each copy, bit-identical.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteBucketCommand, DeleteObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { S3_CREDENTIALS_FILE_ENV } from '../backup/credentials';
import { Repository } from '../backup/repository';
import { copyRepositoryAt } from '../client/copy';
import { restoreFromRepo } from '../client/repo-restore';
import { S3Server } from '../dev/s3-server';
import { FakeHost } from './helpers/fake-hosts';
import { storePoint } from './helpers/repo-point';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

const PRIMARY = 's3://restore-primary/dr';
const REPLICA = 's3://restore-copy/replica';
const RESEALED = 's3://restore-copy/resealed';
const group = 'cr';
const snapshotId = 'gs-20261207T080000Z-cr';

const domainXml = (name: string) => `<domain type='kvm'>
  <name>${name}</name>
  <uuid>0b8e5a8e-1111-2222-3333-444455556677</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/srv/a/${name}-vda.raw'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>`;

let s3: S3Server;
let root: S3Client;
let dir: string;
let keyFile: string;
let copyKeyFile: string;
let image: string;
let host: FakeHost;
let imagesDir: string;
let running: RunningHosts | undefined;
let temporal: Awaited<ReturnType<typeof connectTestClient>>;
const saved = { ...process.env };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gs-copy-restore-'));
  s3 = await S3Server.start({ iam: true });
  root = s3.client();
  const hosts = await s3.createUser();
  const copier = await s3.createUser();
  await s3.createBucket('restore-primary', hosts.accessKeyId);
  await s3.createBucket('restore-copy', copier.accessKeyId);
  const credentials = join(dir, 's3-credentials.json');
  writeFileSync(
    credentials,
    JSON.stringify({ 's3://restore-copy': { endpoint: s3.endpoint, region: 'us-east-1', ...copier } }),
    { mode: 0o600 },
  );
  Object.assign(process.env, s3.env, {
    AWS_ACCESS_KEY_ID: hosts.accessKeyId,
    AWS_SECRET_ACCESS_KEY: hosts.secretAccessKey,
    [S3_CREDENTIALS_FILE_ENV]: credentials,
  });
  const key = randomBytes(32);
  keyFile = join(dir, 'repo.key');
  copyKeyFile = join(dir, 'copy.key');
  writeFileSync(keyFile, key.toString('base64'), { mode: 0o600 });
  writeFileSync(copyKeyFile, randomBytes(32).toString('base64'), { mode: 0o600 });
  image = join(dir, 'db-1-vda.raw');
  const data = Buffer.alloc(5 * 1024 * 1024);
  randomBytes(1024 * 1024).copy(data, 1024 * 1024);
  data.fill(0x5a, 3 * 1024 * 1024, 4 * 1024 * 1024 + 17);
  writeFileSync(image, data);
  const repo = await Repository.init(PRIMARY, key, { chunkSize: 1024 * 1024 });
  try {
    await storePoint(repo, {
      group,
      snapshotId,
      vms: [
        { domain: 'db-1', host: 'hva', domainXml: domainXml('db-1'), disks: [{ target: 'vda', image, format: 'raw' }] },
      ],
    });
  } finally {
    repo.close();
  }
  // The copies, then the first bucket gone with everything in it (root: the hosts' account could not do it).
  expect((await copyRepositoryAt(PRIMARY, REPLICA, keyFile)).points[0].status).toBe('copied');
  expect((await copyRepositoryAt(PRIMARY, RESEALED, keyFile, { toKeyFile: copyKeyFile })).resealed).toBe(true);
  const listed = await root.send(new ListObjectsV2Command({ Bucket: 'restore-primary' }));
  for (const o of listed.Contents ?? [])
    await root.send(new DeleteObjectCommand({ Bucket: 'restore-primary', Key: o.Key }));
  await root.send(new DeleteBucketCommand({ Bucket: 'restore-primary' }));
  temporal = await connectTestClient();
}, 120_000);

afterAll(async () => {
  await running?.stop();
  await temporal?.close();
  process.env = { ...saved };
  root?.destroy();
  await s3?.stop();
  host?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** A fake host whose in-process worker holds `hostKeyFile` (the repository key of its worker). */
async function serve(hostKeyFile: string): Promise<void> {
  await running?.stop();
  host?.cleanup();
  host = new FakeHost(uniqueId('crh'));
  imagesDir = join(host.dir, 'images');
  mkdirSync(imagesDir);
  process.env.GROUPSNAP_REPO_KEY_FILE = hostKeyFile;
  process.env.GROUPSNAP_IMAGES_DIR = imagesDir;
  running = await startHosts([{ hostId: host.hostId, hypervisor: host.hypervisor }]);
}

test.each([
  ['the replica (same key)', REPLICA, () => keyFile],
  ['the copy under its own key (a host holding that key)', RESEALED, () => copyKeyFile],
])(
  'after the first bucket is deleted, the group restores from %s bit-identical',
  async (_what, repo, hostKey) => {
    await serve(hostKey());
    const result = await restoreFromRepo(
      temporal.client,
      { group, snapshotId, repo, toHost: host.hostId, format: 'raw', noNetwork: true, start: false },
      { keyFile: hostKey() },
    );
    expect(result.status).toBe('restored');
    const disk = result.vms[0].disks[0];
    expect(readFileSync(disk.file).equals(readFileSync(image))).toBe(true);
  },
  120_000,
);

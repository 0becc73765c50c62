import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { exportGroupSnapshot, initRepository, listRepositoryPoints, verifyRepositoryAt } from '../client/backup';
import { REPO_KEY_FILE_ENV } from '../common/backup-types';
import { S3Server } from './s3-server';

const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(1)} MiB`;

/**
 * The demo's off-host part: a real S3 server (versitygw) on 127.0.0.1, a repository with a fresh key, the export
 * of a group snapshot to it, the listing and a full verification. The server and its data go at the end.
 */
export async function backupTour(client: Client, group: string, snapshotId: string): Promise<void> {
  console.log(`\nStarting an S3 server (versitygw) and exporting snapshot ${snapshotId} off the host ...`);
  const s3 = await S3Server.start();
  const dir = await mkdtemp(join(tmpdir(), 'groupsnap-demo-repo-'));
  const saved = { ...process.env };
  try {
    // The in-process worker reads the key file and the AWS settings when the export runs, as a real host would.
    const keyFile = join(dir, 'repo.key');
    await writeFile(keyFile, randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
    Object.assign(process.env, s3.env, { [REPO_KEY_FILE_ENV]: keyFile });
    await s3.createBucket('groupsnap-demo');
    const repository = 's3://groupsnap-demo/dr';
    await initRepository(repository, keyFile);
    console.log(`groupsnap repo init ${repository} (endpoint ${s3.endpoint})`);
    const result = await exportGroupSnapshot(client, { group, snapshotId, repository });
    console.log(
      `Exported ${snapshotId} to ${repository} in ${(result.durationMs / 1000).toFixed(1)} s: ` +
        `${mib(result.stats!.bytesRead)} read, ${mib(result.stats!.bytesUploaded)} uploaded (workflow ${result.workflowId})`,
    );
    const points = await listRepositoryPoints(repository, keyFile);
    console.log(
      `groupsnap repo list: ${points.map((p) => `${p.group} ${p.snapshotId} (${p.vms.length} VMs)`).join(', ')}`,
    );
    const verified = await verifyRepositoryAt(repository, keyFile, { readData: true });
    console.log(
      `groupsnap repo verify --read-data: ${verified.ok ? 'OK' : 'DAMAGED'}, ${verified.chunksChecked} chunks checked`,
    );
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** `groupsnap repo copy <from-url> <to-url>`: a second copy of points, run here with both keys and credentials. */
import { resolve } from 'node:path';
import { readKeyFile } from '../backup/crypto';
import { Repository, type PointSummary } from '../backup/repository';
import { parseRepositoryUrl } from '../backup/store';
import { Client, Connection } from '@temporalio/client';
import { getGroup } from '../client/groups';
import { readS3CredentialsFile, S3_CREDENTIALS_FILE_ENV } from '../backup/credentials';
import { copyRepositoryAt, type CopyResult } from '../client/copy';
import { temporalSettings, type TemporalOverrides } from '../common/config';
import { COPY_TASK_QUEUE } from '../common/copy-types';
import { BadInputError } from '../common/failures';
import { createCopyWorker } from '../worker/copy-worker';
import { logLine } from './commands';
import { reportError } from './exit';
import { assertSafeName } from '../common/validation';
import { keyFile, mib, progressBar, repoAction, toBadInput, type RepoOptions } from './backup-commands';

export interface CopyCommandOptions extends RepoOptions {
  group?: string;
  points?: string;
  toKeyFile?: string;
  verify?: string;
}

/** Every flag checked before anything is opened (exit 2, nothing written). */
function checkCopyFlags(from: string, to: string, opts: CopyCommandOptions) {
  toBadInput(() => parseRepositoryUrl(from));
  toBadInput(() => parseRepositoryUrl(to));
  const same = (u: string) => u.replace(/\/+$/, '');
  if (same(from) === same(to)) throw new BadInputError('the copy target is the source repository itself');
  if (opts.group !== undefined) assertSafeName('group name', opts.group);
  let points: string[] | undefined;
  if (opts.points !== undefined) {
    points = opts.points.split(',').map((p) => p.trim());
    if (points.length === 0 || points.some((p) => p === '')) throw new BadInputError('--points is id,id,...');
    for (const p of points) assertSafeName('snapshot id', p);
  }
  const verify = opts.verify ?? 'sample';
  if (verify !== 'sample' && verify !== 'all') throw new BadInputError('--verify is sample or all');
  const from_ = keyFile(opts);
  let toKeyFile: string | undefined;
  if (opts.toKeyFile !== undefined) {
    keyFile({ keyFile: opts.toKeyFile });
    toKeyFile = resolve(opts.toKeyFile);
  }
  const creds = process.env[S3_CREDENTIALS_FILE_ENV];
  if (creds) toBadInput(() => readS3CredentialsFile(creds));
  return { keyFile: from_, toKeyFile, points, verify: verify as 'sample' | 'all' };
}

export async function repoCopy(from: string, to: string, opts: CopyCommandOptions): Promise<void> {
  const bar = progressBar(!opts.json);
  await repoAction(
    opts,
    async () => {
      const checked = checkCopyFlags(from, to, opts);
      try {
        return await copyRepositoryAt(from, to, checked.keyFile, {
          ...(checked.toKeyFile ? { toKeyFile: checked.toKeyFile } : {}),
          ...(opts.group ? { group: opts.group } : {}),
          ...(checked.points ? { points: checked.points } : {}),
          verify: checked.verify,
          onProgress: (p) =>
            bar.update(
              `copy ${p.snapshotId} (${p.pointsDone}/${p.pointsTotal})`,
              p.chunksDone,
              p.chunksTotal,
              `${mib(p.bytesUploaded)} uploaded`,
            ),
        });
      } finally {
        bar.end();
      }
    },
    formatCopy,
  );
}

function formatCopy(r: CopyResult & { created: boolean }): string {
  const head =
    `Copied ${r.points.filter((p) => p.status === 'copied').length} point(s) from ${r.from} to ${r.to}` +
    `${r.created ? ' (created)' : ''} in ${(r.durationMs / 1000).toFixed(1)} s: ${r.chunksUploaded} chunk(s), ` +
    `${mib(r.bytesUploaded)} uploaded${r.resealed ? ', resealed under the target key' : ''}`;
  const check =
    r.verify === 'all'
      ? 'every manifest and every chunk read back and authenticated'
      : 'every manifest and a sample of the chunks read back and authenticated';
  return [
    head,
    `  checked: ${check}`,
    ...r.points.map(
      (p) =>
        `  ${p.group} ${p.snapshotId}: ` +
        (p.status === 'present'
          ? 'already in the target'
          : `${p.chunks} chunk(s), ${p.chunksUploaded} uploaded, ${p.chunksVerified} verified`),
    ),
  ].join('\n');
}

/** Where a point exists, for `repo list --copy <url>`. */
export type PointLocation = 'primary' | 'copy';

/**
 * `repo list --copy <url>`: each point of the primary with `locations` (`primary`, and `copy` when the copy has it
 * too), and the points only the copy still has (pruned in the primary, which a copy never follows), in order. The
 * copy opens with `--copy-key-file`, else the primary's key (a replica).
 */
export async function withLocations<P extends { group: string; snapshotId: string; snapshotCreatedAt: string }>(
  points: P[],
  opts: RepoOptions & { group?: string; copy?: string; copyKeyFile?: string },
  shape: (p: PointSummary) => P,
): Promise<(P & { locations: PointLocation[] })[]> {
  const file = opts.copyKeyFile !== undefined ? keyFile({ keyFile: opts.copyKeyFile }) : keyFile(opts);
  const copy = await Repository.open(opts.copy!, readKeyFile(file));
  let inCopy: PointSummary[];
  try {
    inCopy = await copy.listPoints(opts.group ? { group: opts.group } : {});
  } finally {
    copy.close();
  }
  const id = (p: { group: string; snapshotId: string }) => `${p.group}\0${p.snapshotId}`;
  const copied = new Set(inCopy.map(id));
  const primary = new Set(points.map(id));
  const all = [
    ...points.map((p) => ({ ...p, locations: copied.has(id(p)) ? ['primary', 'copy'] : ['primary'] })),
    ...inCopy.filter((p) => !primary.has(id(p))).map((p) => ({ ...shape(p), locations: ['copy'] })),
  ] as (P & { locations: PointLocation[] })[];
  return all.sort(
    (a, b) =>
      a.group.localeCompare(b.group) ||
      a.snapshotCreatedAt.localeCompare(b.snapshotCreatedAt) ||
      a.snapshotId.localeCompare(b.snapshotId),
  );
}

/**
 * `groupsnap copy-worker --key-file <f> [--to-key-file <f>]`: the copy worker on the admin side (worker/copy-worker.ts).
 * The key files (and the credentials file, when set) are checked at start: a bad one stops it with exit 2.
 */
export async function copyWorkerCommand(opts: TemporalOverrides & { keyFile?: string; toKeyFile?: string }) {
  let keys: { keyFile: string; toKeyFile?: string };
  try {
    keys = {
      keyFile: keyFile(opts),
      ...(opts.toKeyFile !== undefined ? { toKeyFile: keyFile({ keyFile: opts.toKeyFile }) } : {}),
    };
    const creds = process.env[S3_CREDENTIALS_FILE_ENV];
    if (creds) toBadInput(() => readS3CredentialsFile(creds));
  } catch (err) {
    process.exitCode = reportError(err);
    return;
  }
  const { connectionOptions, namespace } = temporalSettings(opts);
  const { run, worker } = await createCopyWorker({ connectionOptions, namespace, ...keys });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => worker.shutdown());
  logLine('copy worker started', { taskQueue: COPY_TASK_QUEUE, namespace, address: connectionOptions.address });
  await run();
}

/**
 * `repo list --group <g> --group-copy`: the group's copy target (`group create --copy-to`), read from its entity
 * workflow through Temporal. @throws BadInputError without `--group`, with `--copy`, or for a group without one
 */
export async function groupCopyTarget(opts: TemporalOverrides & { group?: string; copy?: string }): Promise<string> {
  if (!opts.group) throw new BadInputError('--group-copy needs --group <group>');
  if (opts.copy) throw new BadInputError('give either --copy <url> or --group-copy, not both');
  const { connectionOptions, namespace } = temporalSettings(opts);
  const connection = await Connection.connect(connectionOptions as Parameters<typeof Connection.connect>[0]);
  try {
    const def = await getGroup(new Client({ connection, namespace }), opts.group);
    if (!def.copyTo) throw new BadInputError(`group ${opts.group} has no copy target (group create --copy-to)`);
    return def.copyTo;
  } finally {
    await connection.close();
  }
}

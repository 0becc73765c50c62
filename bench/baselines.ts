/**
 * What the restore benches compare groupsnap with, on the same S3 server: restic's restore of the same image files
 * (restic backs them up to the same bucket first), and a plain download with the same SDK of the same bytes put as
 * plain objects (each data chunk's raw content, as a disk manifest lists them). Used by bench/restore.ts and
 * bench/instant.ts.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ImageReader } from '../backup/image-reader';
import type { DiskManifest } from '../backup/manifest';
import { REPO_ROOT } from '../dev/tools';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** The restic the benches compare with: a named version (`@latest` of its module path resolves to 0.10.0, from 2020). */
export const RESTIC_VERSION = 'v0.18.1';

/**
 * restic at {@link RESTIC_VERSION} in `.tools/bin`, installed there with `go install` when missing or of another
 * version; `undefined` (its row skipped, said on stderr) when Go is not available.
 */
export async function resticPath(): Promise<string | undefined> {
  const bin = join(REPO_ROOT, '.tools/bin');
  const local = join(bin, 'restic');
  const version = async () =>
    existsSync(local) ? (await run(local, ['version']).catch(() => ({ stdout: '' }))).stdout : '';
  if (!(await version()).includes(`restic ${RESTIC_VERSION.slice(1)} `)) {
    console.error(`installing restic ${RESTIC_VERSION} into .tools/bin (go install) ...`);
    mkdirSync(bin, { recursive: true });
    try {
      await run('go', ['install', `github.com/restic/restic/cmd/restic@${RESTIC_VERSION}`], {
        env: { ...process.env, GOBIN: bin, CGO_ENABLED: '0' },
        maxBuffer: 64 * MiB,
      });
    } catch (err) {
      console.error(`cannot install restic ${RESTIC_VERSION}: ${(err as Error).message}`);
      return undefined;
    }
  }
  return existsSync(local) ? local : undefined;
}

/** restic's repository on the bench's S3 server, and how its restore is run. */
export interface ResticRepo {
  bin: string;
  env: NodeJS.ProcessEnv;
  /** Whether this restic restores sparse files (`--sparse`). */
  sparse: boolean;
  version: string;
  /** The files backed up (absolute paths: restored under the target with the same path). */
  files: string[];
}

/**
 * restic's repository `<bucket>/<name>` on `endpoint`, holding `files` (nothing when restic is not installed).
 */
export async function prepareRestic(
  bin: string | undefined,
  endpoint: string,
  files: string[],
  bucket = 'bench',
  name = 'restic',
): Promise<ResticRepo | undefined> {
  if (!bin) {
    console.error('restic not found in .tools/bin: its row is skipped');
    return undefined;
  }
  const env = { ...process.env, RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: `s3:${endpoint}/${bucket}/${name}` };
  const sparse = (await run(bin, ['restore', '--help'], { env })).stdout.includes('--sparse');
  const version = (await run(bin, ['version'], { env })).stdout.trim();
  await run(bin, ['init'], { env });
  await run(bin, ['backup', '-q', '--host', 'bench', ...files], { env, maxBuffer: 64 * MiB });
  return { bin, env, sparse, version, files };
}

/** The row's description of a restic restore. */
export const resticWhat = (r: ResticRepo) =>
  `restic restore${r.sparse ? ' --sparse' : ''} of the image file${r.files.length > 1 ? 's' : ''}, then sync ` +
  `(${r.version.split(' ').slice(0, 2).join(' ')})`;

/** restic restores its latest snapshot under `target`, then the restored files are synced (as groupsnap fsyncs). */
export async function resticRestore(r: ResticRepo, target: string): Promise<void> {
  await run(r.bin, ['restore', 'latest', ...(r.sparse ? ['--sparse'] : []), '--target', target], {
    env: r.env,
    maxBuffer: 64 * MiB,
  });
  // restic does not fsync what it restored; groupsnap and the plain download do: the same footing.
  await run(
    'sync',
    r.files.map((f) => join(target, f)),
  );
}

/** A disk's data put as plain objects: what a plain download fetches, and where each object goes in the disk. */
export interface PlainDisk {
  virtualSize: number;
  objects: { key: string; offset: number }[];
  /** Bytes of data (the objects' sizes added up). */
  bytes: number;
}

/**
 * Puts each data chunk of `manifest` (a chunk the manifest lists; holes are not) read from `image` as a plain object
 * `<prefix><chunk index>` in `bucket`.
 */
export async function putPlainChunks(
  client: S3Client,
  image: { file: string; format: 'raw' | 'qcow2' },
  manifest: Pick<DiskManifest, 'chunks' | 'chunkSize' | 'virtualSize'>,
  prefix: string,
  bucket = 'bench',
): Promise<PlainDisk> {
  const disk: PlainDisk = { virtualSize: manifest.virtualSize, objects: [], bytes: 0 };
  const reader = await ImageReader.open(image.file, image.format);
  try {
    for (let i = 0; i < manifest.chunks.length; i++) {
      if (manifest.chunks[i] === null) continue;
      const offset = i * manifest.chunkSize;
      const body = await reader.read(offset, Math.min(manifest.chunkSize, manifest.virtualSize - offset));
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}${i}`, Body: body }));
      disk.objects.push({ key: `${prefix}${i}`, offset });
      disk.bytes += body.length;
    }
  } finally {
    await reader.close();
  }
  return disk;
}

/** What {@link plainDownload} does, for a row's description. */
export const PLAIN_WHAT =
  'plain SDK download of the same bytes (4 MiB GetObject, 4 in flight, SDK defaults, sparse positional writes, fsync)';

/**
 * Downloads each disk's plain objects into its file (sparse: truncated to the virtual size, positional writes),
 * 4 GetObject in flight over all the disks, then fsyncs every file.
 */
export async function plainDownload(
  client: S3Client,
  disks: { disk: PlainDisk; file: string }[],
  bucket = 'bench',
): Promise<void> {
  const files = await Promise.all(disks.map(({ file }) => openFile(file, 'w')));
  try {
    await Promise.all(disks.map(({ disk }, d) => files[d].truncate(disk.virtualSize)));
    const work = disks.flatMap(({ disk }, d) => disk.objects.map((o) => ({ ...o, d })));
    let next = 0;
    await Promise.all(
      [0, 1, 2, 3].map(async () => {
        while (next < work.length) {
          const { key, offset, d } = work[next++];
          const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
          const body = Buffer.from(await out.Body!.transformToByteArray());
          await files[d].write(body, 0, body.length, offset);
        }
      }),
    );
    await Promise.all(files.map((f) => f.sync()));
  } finally {
    await Promise.all(files.map((f) => f.close()));
  }
}

import { execFile } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { promisify } from 'node:util';
import { HypervisorError } from './errors';

const run = promisify(execFile);

/** What groupsnap reads of an image file's header. */
export interface ImageInfo {
  /** `qcow2`, `raw`, ... */
  format: string;
  /** Absolute path of the backing file, when it has one. */
  backing?: string;
  /** Format of the backing file as recorded in the header, when recorded. */
  backingFormat?: string;
}

/** The image file does not exist. */
export class ImageNotFoundError extends Error {
  override readonly name = 'ImageNotFoundError';
  constructor(readonly file: string) {
    super(`image ${file} does not exist`);
  }
}

async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await run('qemu-img', args, { maxBuffer: 16 * 1024 * 1024 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new HypervisorError(`qemu-img ${args[0]} failed: ${(e.stderr || e.message).trim()}`);
  }
}

/**
 * Creates a qcow2 overlay `file` over `backing` (same virtual size). Plain `qemu-img create`: the caller makes sure
 * `file` does not exist yet (qemu-img would overwrite it).
 */
export async function createOverlay(file: string, backing: string, backingFormat: string): Promise<void> {
  await qemuImg(['create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, file]);
}

/** The `nbd+unix://` URL of an export on a unix socket, as QEMU names a backing file. */
export function nbdUrl(socket: string, exportName: string): string {
  // Written as is (QEMU does not decode the query): only names that need no escaping.
  if (!/^[A-Za-z0-9._-]+$/.test(exportName) || !/^\/[A-Za-z0-9._/+-]+$/.test(socket))
    throw new HypervisorError(`NBD export ${JSON.stringify(exportName)} on ${JSON.stringify(socket)}: unsafe name`);
  return `nbd+unix:///${exportName}?socket=${socket}`;
}

/** A byte range of an image. */
export interface ImageRange {
  offset: number;
  length: number;
}

/** `write -z` commands a qemu-io run takes at most (its argument list stays small however fragmented the disk). */
const ZERO_WRITES_PER_RUN = 512;

/**
 * Creates a qcow2 overlay `file` of `virtualSize` bytes whose backing is the raw NBD export on `socket` (`-u`: the
 * export is not opened now), with `zeros` written as zero clusters in the overlay (`qemu-io` on the overlay opened
 * with no backing: qcow2 v3 records a zero flag, so the ranges read as zeros whatever the backing holds and a pull
 * or rebase skips them). The caller makes sure `file` does not exist yet.
 */
export async function createNbdOverlay(
  file: string,
  socket: string,
  exportName: string,
  virtualSize: number,
  zeros: ImageRange[] = [],
) {
  for (const z of zeros)
    if (
      !Number.isSafeInteger(z.offset) ||
      !Number.isSafeInteger(z.length) ||
      z.offset < 0 ||
      z.length <= 0 ||
      z.offset + z.length > virtualSize
    )
      throw new HypervisorError(`zero range ${z.offset}+${z.length} is outside a disk of ${virtualSize} bytes`);
  await qemuImg([
    'create',
    '-q',
    '-u',
    '-f',
    'qcow2',
    '-b',
    nbdUrl(socket, exportName),
    '-F',
    'raw',
    file,
    String(virtualSize),
  ]);
  // The overlay alone (`backing: null`): nothing connects to the export.
  const alone = `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: file }, backing: null })}`;
  for (let i = 0; i < zeros.length; i += ZERO_WRITES_PER_RUN) {
    const cmds = zeros.slice(i, i + ZERO_WRITES_PER_RUN).flatMap((z) => ['-c', `write -z ${z.offset} ${z.length}`]);
    try {
      await run('qemu-io', [...cmds, alone]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new HypervisorError(`qemu-io write -z failed: ${(e.stderr || e.message).trim()}`);
    }
  }
}

/** Copies what the backing chain of `file` shows into it and drops the backing (safe rebase onto nothing). */
export async function hydrateImage(file: string): Promise<void> {
  await qemuImg(['rebase', '-q', '-f', 'qcow2', '-b', '', file]);
}

/**
 * Offline commit of `top` into `base` (`qemu-img commit -b base top`): `base` then holds what `top` showed. Only
 * for files no running QEMU has open (QEMU's image locks make it fail otherwise). `top` is left as it was.
 */
export async function commitImage(top: string, base: string): Promise<void> {
  await qemuImg(['commit', '-q', '-f', 'qcow2', '-b', base, top]);
}

/**
 * Rewrites the backing file recorded in `file`'s header to `newBacking` without copying anything
 * (`qemu-img rebase -u`): only correct when `newBacking` already shows the same content as the old backing file,
 * e.g. right after the old one was committed into it.
 */
export async function rebaseImage(file: string, newBacking: string, backingFormat: string): Promise<void> {
  await qemuImg(['rebase', '-q', '-u', '-f', 'qcow2', '-b', newBacking, '-F', backingFormat, file]);
}

/**
 * Format and backing file of an image (`qemu-img info -U`: the image may be open by a running VM).
 * @throws ImageNotFoundError when the file does not exist
 */
export async function imageInfo(file: string): Promise<ImageInfo> {
  if (!existsSync(file)) throw new ImageNotFoundError(file);
  const info = JSON.parse(await qemuImg(['info', '--output=json', '-U', file])) as Record<string, unknown>;
  const backing = (info['full-backing-filename'] ?? info['backing-filename']) as string | undefined;
  const backingFormat = info['backing-filename-format'] as string | undefined;
  return {
    format: String(info.format),
    ...(backing !== undefined ? { backing } : {}),
    ...(backingFormat !== undefined ? { backingFormat } : {}),
  };
}

/** Removes an image file; no error when it is already gone. */
export async function removeImage(file: string): Promise<void> {
  rmSync(file, { force: true });
}

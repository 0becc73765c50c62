/**
 * `groupsnap repo serve <url> <group> <snapshotId> --vm <name> --disk <target> [--socket <path>]`: one disk of a
 * point, read-only over NBD on a Unix socket, in the foreground (file-level recovery: `qemu-img`, `qemu-nbd`,
 * `guestfish` on it); and `groupsnap repo serve-exports <spec file>`, the detached multi-disk server the host side
 * starts (backup/serve-process.ts).
 */
import { existsSync, lstatSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { readKeyFile } from '../backup/crypto';
import { PERMANENT_REPOSITORY_ERRORS, RepositoryError } from '../backup/errors';
import { RepositoryBusyError } from '../backup/locks';
import { MAX_SOCKET_PATH, parseServeSpec, runServe, ServeInputError, type ServeSpec } from '../backup/serve';
import { runServeProcess } from '../backup/serve-process';
import { parseRepositoryUrl } from '../backup/store';
import { REPO_KEY_FILE_ENV } from '../common/backup-types';
import { BadInputError } from '../common/failures';
import { DISK_TARGET, isDomainName } from '../common/host-requests';
import { logLine } from './commands';

export interface ServeFlags {
  vm?: string;
  disk?: string;
  socket?: string;
  keyFile?: string;
  cacheMib?: number;
  json?: boolean;
}

const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Every problem with the flags (nothing is started when there is one). */
function checkFlags(url: string, group: string, snapshotId: string, opts: ServeFlags): string[] {
  const problems: string[] = [];
  try {
    parseRepositoryUrl(url);
  } catch (err) {
    problems.push((err as Error).message);
  }
  if (!SAFE_ID.test(group)) problems.push(`group '${group}' may only hold letters, digits and . _ : - (at most 128)`);
  if (!SAFE_ID.test(snapshotId))
    problems.push(`snapshot id '${snapshotId}' may only hold letters, digits and . _ : - (at most 128)`);
  if (opts.vm === undefined) problems.push('give --vm <name>: the VM whose disk to serve');
  else if (!isDomainName(opts.vm)) problems.push(`--vm '${opts.vm}' is not a VM name`);
  if (opts.disk === undefined) problems.push('give --disk <target>: the disk to serve (vda, sdb, ...)');
  else if (!DISK_TARGET.test(opts.disk)) problems.push(`--disk '${opts.disk}' is not a disk target such as vda or sdb`);
  if (opts.socket !== undefined) {
    const s = resolve(opts.socket);
    if (Buffer.byteLength(s) > MAX_SOCKET_PATH) problems.push(`--socket path is longer than ${MAX_SOCKET_PATH} bytes`);
    else if (!existsSync(dirname(s)) || !statSync(dirname(s)).isDirectory())
      problems.push(`--socket: directory ${dirname(s)} does not exist`);
    else if (existsSync(s) && !lstatSync(s).isSocket())
      problems.push(`--socket: ${s} exists and is not a socket (it is not replaced)`);
  }
  if (
    opts.cacheMib !== undefined &&
    !(Number.isInteger(opts.cacheMib) && opts.cacheMib >= 16 && opts.cacheMib <= 65536)
  )
    problems.push('--cache-mib is a whole number of MiB from 16 to 65536');
  const keyFile = opts.keyFile ?? process.env[REPO_KEY_FILE_ENV];
  if (!keyFile) problems.push(`give --key-file <file> or set ${REPO_KEY_FILE_ENV}: the repository key`);
  else
    try {
      readKeyFile(keyFile);
    } catch (err) {
      problems.push((err as Error).message);
    }
  return problems;
}

/** The URL a client opens, and the commands that use it. */
export function serveUsage(socket: string, exportName: string): { uri: string; commands: Record<string, string> } {
  const uri = `nbd+unix:///${exportName}?socket=${socket}`;
  const q = `'${uri}'`;
  return {
    uri,
    commands: {
      info: `qemu-img info -f raw ${q}`,
      copy: `qemu-img convert -p -f raw -O qcow2 ${q} restored.qcow2`,
      compare: `qemu-img compare -f raw ${q} <image>`,
      mount: `guestfish --ro --format=raw -a ${q} -i`,
      device: `qemu-nbd --read-only --format=raw --connect=/dev/nbd0 ${q}   # then mount -o ro /dev/nbd0p1 /mnt`,
    },
  };
}

/** `groupsnap repo serve`: serves one disk until Ctrl-C. */
export async function repoServe(url: string, group: string, snapshotId: string, opts: ServeFlags): Promise<void> {
  const problems = checkFlags(url, group, snapshotId, opts);
  if (problems.length > 0) throw new BadInputError(problems.join('; '));
  const own = opts.socket === undefined ? mkdtempSync(join(tmpdir(), 'groupsnap-serve-')) : undefined;
  const socket = own ? join(own, 'nbd.sock') : resolve(opts.socket as string);
  const exportName = `${opts.vm}-${opts.disk}`.replace(/[^A-Za-z0-9._:@-]/g, '_');
  const spec: ServeSpec = parseServeSpec({
    version: 1,
    repo: url,
    keyFile: resolve((opts.keyFile ?? process.env[REPO_KEY_FILE_ENV]) as string),
    group,
    snapshotId,
    exports: [{ domain: opts.vm, target: opts.disk, socket, exportName }],
    dir: own ?? dirname(socket),
    ...(opts.cacheMib ? { cacheBytes: opts.cacheMib * 1024 * 1024 } : {}),
  });
  const controller = new AbortController();
  const stopped = new Promise<void>((r) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => (controller.abort(), r()));
  });
  try {
    let server;
    try {
      server = await runServe(spec, { statusFile: false, signal: controller.signal, log: (m, f) => logLine(m, f) });
    } catch (err) {
      if (controller.signal.aborted) return;
      throw asBadInput(err);
    }
    const usage = serveUsage(socket, exportName);
    if (opts.json) console.log(JSON.stringify({ status: 'serving', socket, exportName, ...usage }, null, 2));
    else
      console.log(
        [
          `Serving ${opts.vm} ${opts.disk} of point ${snapshotId} (group ${group}) read-only over NBD until Ctrl-C`,
          `  socket: ${socket}`,
          `  export: ${exportName}  (the guest-visible disk, raw; ${server.status().exports[0].size} bytes)`,
          `  URL:    ${usage.uri}`,
          '',
          ...Object.entries(usage.commands).map(([k, c]) => `  ${k.padEnd(8)} ${c}`),
        ].join('\n'),
      );
    await stopped;
    await server.close();
  } finally {
    if (own) rmSync(own, { recursive: true, force: true });
  }
}

/** Errors a retry cannot fix, as bad input (exit 2: nothing was started). */
function asBadInput(err: unknown): unknown {
  if (err instanceof ServeInputError || err instanceof RepositoryBusyError) return new BadInputError(err.message);
  if (err instanceof RepositoryError && (PERMANENT_REPOSITORY_ERRORS as readonly string[]).includes(err.name))
    return new BadInputError(err.message);
  return err;
}

/** `groupsnap repo serve-exports <spec file>` (started by the host, detached): exits with the server's code. */
export async function repoServeExports(specFile: string): Promise<void> {
  process.exitCode = await runServeProcess(resolve(specFile), (m, f) => logLine(m, f));
}

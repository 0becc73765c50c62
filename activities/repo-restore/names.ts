/**
 * Names a restore turns into files on this host: a restored disk's path, and the checks of names read from a point's
 * manifests (data, not trusted: they become file names here).
 */
import { join, relative, resolve, sep } from 'node:path';
import type { DiskManifest, VmManifest } from '../../backup/manifest';
import { diskTarget, domainName, isDomainName, safeName } from '../../common/host-requests';
import { bad } from './context';

/**
 * A restored disk's file: `<imagesDir>/<domain>.<target>.<restoreId>.<format>`, only ever a file directly in
 * `imagesDir`.
 * @throws BadInputError-like ApplicationFailure (BAD_INPUT) for a name that is not one, or a path that would leave it.
 */
export function restoredDiskPath(imagesDir: string, domain: string, target: string, restoreId: string, format: string) {
  const problems: string[] = [];
  if (!isDomainName(domain)) problems.push(`VM name ${JSON.stringify(domain)} is not valid`);
  if (!diskTarget.safeParse(target).success) problems.push(`disk target ${JSON.stringify(target)} is not valid`);
  const id = safeName('restore id').safeParse(restoreId);
  if (!id.success) problems.push(id.error.issues[0].message);
  if (format !== 'raw' && format !== 'qcow2') problems.push(`disk format ${JSON.stringify(format)} is not valid`);
  if (problems.length) throw bad(problems.join('; '));
  const file = join(imagesDir, `${domain}.${target}.${restoreId}.${format}`);
  const rel = relative(resolve(imagesDir), resolve(file));
  if (rel === '' || rel.startsWith('..') || rel.includes(sep))
    throw bad(`restored disk ${JSON.stringify(file)} would not be a file of ${imagesDir}`);
  return file;
}

/** Problems of a name read from a repository manifest (data, not trusted: it becomes part of file names here). */
function manifestNameProblems(what: string, value: unknown, schema: { safeParse(v: unknown): { success: boolean } }) {
  return schema.safeParse(value).success ? [] : [`the point's ${what} ${JSON.stringify(value)} is not valid`];
}

/** What is wrong with the names a point's manifests give a VM (they become file names here), and its name here. */
export function vmNameProblems(v: { domain: string; host: string }, vm: VmManifest, domain: string): string[] {
  return [
    ...manifestNameProblems('VM name', v.domain, domainName),
    ...manifestNameProblems('restored VM name', domain, domainName),
    ...manifestNameProblems('host id', v.host, safeName('host id')),
    ...vm.disks.flatMap((d) => manifestNameProblems(`disk target of ${v.domain}`, d.target, diskTarget)),
  ];
}

/** The stored domain XML's UUID (a restore as the original keeps it). */
export function storedUuid(xml: string): string | undefined {
  return /<uuid>([^<]*)<\/uuid>/.exec(xml)?.[1]?.trim().toLowerCase();
}

/** Bytes of a disk's data chunks (zero chunks are holes, written as nothing). */
export function dataBytesOf(disk: DiskManifest): number {
  return disk.chunks.reduce(
    (sum, id, i) => sum + (id === null ? 0 : Math.min(disk.chunkSize, disk.virtualSize - i * disk.chunkSize)),
    0,
  );
}

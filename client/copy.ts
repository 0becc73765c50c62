/**
 * A second copy of a repository's points (`backup/copy.ts`), from TypeScript: runs here, with both keys and both
 * repositories' credentials (the target's from `GROUPSNAP_S3_CREDENTIALS_FILE`, backup/credentials.ts).
 */
import { copyRepository, openCopyTarget, type CopyOptions, type CopyResult } from '../backup/copy';
import { readKeyFile } from '../backup/crypto';
import { Repository } from '../backup/repository';

export type { CopyOptions, CopyResult };

export interface CopyAtOptions extends CopyOptions {
  /** The target's key file; none: the source's key (the target is then a replica of the source). */
  toKeyFile?: string;
}

/**
 * Copies points of the repository at `from` into the one at `to` (created when absent). Returns what was copied,
 * and whether the target was created now.
 */
export async function copyRepositoryAt(
  from: string,
  to: string,
  keyFile: string,
  opts: CopyAtOptions = {},
): Promise<CopyResult & { created: boolean }> {
  const key = readKeyFile(keyFile);
  const toKey = opts.toKeyFile ? readKeyFile(opts.toKeyFile) : undefined;
  const source = await Repository.open(from, key);
  try {
    const { repo: target, created } = await openCopyTarget(source, key, to, toKey);
    try {
      return { ...(await copyRepository(source, target, opts)), created };
    } finally {
      target.close();
    }
  } finally {
    source.close();
  }
}

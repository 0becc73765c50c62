/** The repository as a restore reads it on a host: opened with the host's key, read under a shared lock. */
import { readKeyFile } from '../../backup/crypto';
import {
  DamagedObjectError,
  PointNotFoundError,
  RepositoryInputError,
  RepositoryNotFoundError,
  WrongKeyError,
} from '../../backup/errors';
import { RepositoryLock } from '../../backup/locks';
import { Repository } from '../../backup/repository';
import { failure } from '../../common/failures';
import { bad, REPO_KEY_FILE_ENV, type RepoRestoreContext } from './context';

/**
 * Opens the repository at `url` with this host's key file (read here: the key never passes through Temporal).
 * @throws BAD_INPUT when the host has no key, or the repository is missing, unreadable as given, or of another key
 */
export async function openRepo(ctx: RepoRestoreContext, url: string): Promise<Repository> {
  const keyFile = ctx.keyFile ?? process.env[REPO_KEY_FILE_ENV];
  if (!keyFile)
    throw bad(`host ${ctx.hostId} has no repository key: start its worker with --key-file or ${REPO_KEY_FILE_ENV}`);
  try {
    return await Repository.open(url, readKeyFile(keyFile));
  } catch (err) {
    if (err instanceof RepositoryInputError || err instanceof RepositoryNotFoundError || err instanceof WrongKeyError)
      throw bad(`on host ${ctx.hostId}: ${(err as Error).message}`);
    throw err;
  }
}

/**
 * Runs `fn` on the repository under a shared lock, so a prune does not delete the point while it is read.
 * @throws BAD_INPUT for a point that does not exist; `damagedPoint` for one whose objects are damaged
 */
export async function withRepo<T>(
  ctx: RepoRestoreContext,
  url: string,
  fn: (repo: Repository) => Promise<T>,
): Promise<T> {
  const repo = await openRepo(ctx, url);
  try {
    return await RepositoryLock.holdForReading(repo, () => fn(repo), {
      owner: ctx.hostId,
      onUnlocked: (why) => ctx.log('reading the repository without a lock (read-only store access)', { why }),
    });
  } catch (err) {
    if (err instanceof PointNotFoundError) throw bad(err.message);
    if (err instanceof DamagedObjectError)
      throw failure('damagedPoint', `the point is damaged in the repository: ${err.message}`);
    throw err;
  } finally {
    repo.close();
  }
}

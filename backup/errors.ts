/**
 * The repository's failure model: one base class, a few subclasses that carry what went wrong where. Each class's
 * `name` is its wire type (activities list the permanent ones in `nonRetryableErrorTypes`).
 */
export class RepositoryError extends Error {
  override readonly name: string = 'RepositoryError';
}

/** The repository URL is not `s3://bucket[/prefix]` or `file:///path`, or the key file is unusable: bad input. */
export class RepositoryInputError extends RepositoryError {
  override readonly name: string = 'RepositoryInputError';
}

/** No repository at this URL (no `config` object): `repo init` first. */
export class RepositoryNotFoundError extends RepositoryError {
  override readonly name: string = 'RepositoryNotFoundError';
  constructor(readonly url: string) {
    super(`no groupsnap repository at ${url} (run 'groupsnap repo init ${url}' first)`);
  }
}

/** `repo init` on a URL that already holds a repository. */
export class RepositoryExistsError extends RepositoryError {
  override readonly name: string = 'RepositoryExistsError';
  constructor(readonly url: string) {
    super(`a groupsnap repository already exists at ${url}`);
  }
}

/** The bucket of an `s3://` URL does not exist, or the directory of a `file://` URL's parent is missing. */
export class BucketNotFoundError extends RepositoryError {
  override readonly name: string = 'BucketNotFoundError';
  constructor(
    readonly url: string,
    detail: string,
  ) {
    super(`repository location ${url} does not exist: ${detail}`);
  }
}

/** The store refused the credentials or the operation (S3 403, file permission denied). */
export class StoreAccessDeniedError extends RepositoryError {
  override readonly name: string = 'StoreAccessDeniedError';
  constructor(
    readonly url: string,
    detail: string,
  ) {
    super(`access denied to ${url}: ${detail}`);
  }
}

/** The key does not open this repository (its key check does not match). Nothing was read or written. */
export class WrongKeyError extends RepositoryError {
  override readonly name: string = 'WrongKeyError';
  constructor(readonly url: string) {
    super(`the key does not open the repository at ${url} (wrong key file?)`);
  }
}

/** A stored object is missing, does not decrypt, or does not match its name: the repository is damaged there. */
export class DamagedObjectError extends RepositoryError {
  override readonly name: string = 'DamagedObjectError';
  constructor(
    readonly key: string,
    readonly problem: 'missing' | 'corrupt',
    detail?: string,
  ) {
    super(`object ${key} is ${problem}${detail ? `: ${detail}` : ''}`);
  }
}

/** No point (group manifest) for this group and snapshot id in the repository. */
export class PointNotFoundError extends RepositoryError {
  override readonly name: string = 'PointNotFoundError';
  constructor(
    readonly group: string,
    readonly snapshotId: string,
  ) {
    super(`no exported point ${snapshotId} of group ${group} in the repository`);
  }
}

/**
 * The store failed in a way a retry may fix: network errors, HTTP 5xx, throttling, a response cut short. Retryable
 * (an activity retries it; the CLI exits 1, never 2: the input was not at fault).
 */
export class TransientStoreError extends RepositoryError {
  override readonly name: string = 'TransientStoreError';
}

/**
 * A repository lock this process held was lost (its refresh failed, or another process took it over as stale):
 * the writer must stop before its next write. Retryable (the next attempt takes the lock afresh).
 */
export class LockLostError extends RepositoryError {
  override readonly name: string = 'LockLostError';
}

/** The store refused to delete or change an object version because its Object Lock has not lapsed. */
export class ObjectLockedError extends RepositoryError {
  override readonly name: string = 'ObjectLockedError';
  constructor(
    readonly key: string,
    detail: string,
  ) {
    super(`${key} is protected by its object lock: ${detail}`);
  }
}

/** Error types an activity should not retry: bad input and things a retry cannot fix. */
export const PERMANENT_REPOSITORY_ERRORS = [
  'RepositoryInputError',
  'RepositoryNotFoundError',
  'RepositoryExistsError',
  'BucketNotFoundError',
  'StoreAccessDeniedError',
  'WrongKeyError',
  'PointNotFoundError',
] as const;

/**
 * groupsnap's one failure model: every failure type it raises is declared once in {@link FAILURES}, with the
 * `groupsnap` command's exit code and whether Temporal retries it; {@link failure} is the only place that makes an
 * ApplicationFailure (an ESLint rule keeps it so). Pure (no Node built-ins): workflows, client and CLI all use it.
 *
 *   host activity / workflow input check   -> badInput (non-retryable, nothing changed; exit 2)
 *   a run that failed and was handled       -> a failure whose details[0] is its result (`result: true`; exit 1)
 *   anything else                           -> a declared failure, or the error itself (exit 1)
 *
 *   client: badInput -> BadInputError; a result failure -> its result (status 'failed'); else rethrown
 *   CLI:    exitCodeFor(): 0 done, 1 failed (handled, e.g. compensated), 2 bad input (nothing changed)
 */
import { ApplicationFailure } from '@temporalio/common';

/** Failure type of every bad-input error: never retried, reported with exit code 2 by the CLI. */
export const BAD_INPUT = 'GroupsnapBadInput';

/** Thrown for input that cannot be acted on; nothing was changed when it is thrown. */
export class BadInputError extends Error {
  override readonly name = 'BadInputError';
}

/** Exit codes of the `groupsnap` command. */
export const EXIT = { ok: 0, failed: 1, badInput: 2 } as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

interface FailureSpec {
  /** The ApplicationFailure type: what clients and histories see. */
  type: string;
  exit: ExitCode;
  /** Whether Temporal retries an activity that fails with it. */
  retryable: boolean;
  /** Its details[0] is the run's result (the client returns it instead of throwing). */
  result?: true;
}

const spec = (type: string, exit: ExitCode, retryable = false, result?: true): FailureSpec => ({
  type,
  exit,
  retryable,
  ...(result ? { result } : {}),
});

/** Every failure type groupsnap raises. */
export const FAILURES = {
  /** Bad input: nothing was paused or changed. */
  badInput: spec(BAD_INPUT, EXIT.badInput),
  /** A group snapshot failed and was compensated; details[0] is its GroupSnapshotResult. */
  snapshotFailed: spec('GroupSnapshotFailed', EXIT.failed, false, true),
  /** A snapshot deletion failed on some VMs; details[0] is its DeleteSnapshotResult. */
  deleteFailed: spec('SnapshotDeleteFailed', EXIT.failed, false, true),
  /** A restore failed and was rolled back; details[0] is its RestoreResult. */
  restoreFailed: spec('RestoreFailed', EXIT.failed, false, true),
  /** An export failed; details[0] is its partial ExportResult. */
  exportFailed: spec('ExportFailed', EXIT.failed, false, true),
  /** A copy of points into a second repository failed; details[0] is its CopyPointResult. */
  copyFailed: spec('CopyFailed', EXIT.failed, false, true),
  /** A scheduled run's retention could not be applied (the completed snapshot is in details). */
  retentionFailed: spec('GroupsnapRetentionFailed', EXIT.failed),
  /** A group run failed for a reason without a type of its own. */
  runFailed: spec('RunFailed', EXIT.failed),
  /** A group's snapshot run failed for a reason without a type of its own. */
  groupRunFailed: spec('SnapshotFailed', EXIT.failed),
  /** Planning found problems the caller cannot fix (a host's state). */
  planFailed: spec('PlanFailed', EXIT.failed),
  /** The freeze window's bound passed before the group was released or a VM was resumed by it. */
  freezeDeadline: spec('FreezeDeadline', EXIT.failed),
  /** A host's pause or snapshot failed. */
  freezeFailed: spec('FreezeFailed', EXIT.failed),
  /** The run lost its lease of a VM: it changes nothing more. */
  leaseLost: spec('LeaseLost', EXIT.failed),
  /** Another run holds the lease of a VM: retried. */
  leaseBusy: spec('LockBusyError', EXIT.failed, true),
  /** A host did not answer. */
  hostUnreachable: spec('HostUnreachable', EXIT.failed),
  /** An overlay is not where the snapshot put it: nothing is catalogued. */
  chainMismatch: spec('ChainMismatch', EXIT.failed),
  /** The snapshot was undone by compensation: it is not catalogued. */
  snapshotUndone: spec('SnapshotUndone', EXIT.failed),
  /** Pinning failed on some VMs. */
  pinFailed: spec('PinFailed', EXIT.failed),
  /** Releasing restores failed on some VMs. */
  releaseFailed: spec('ReleaseFailed', EXIT.failed),
  /** A drill's clones were not ready in time. */
  drillNotReady: spec('DrillNotReady', EXIT.failed),
  /** An instant restore's disk still reads from its NBD export: hydration goes on (retried). */
  hydrationIncomplete: spec('HydrationIncomplete', EXIT.failed, true),
  /** A point is damaged in the repository. */
  damagedPoint: spec('DamagedPoint', EXIT.failed),
  /** The host's worker has no repository key file. */
  repoKeyMissing: spec('RepositoryKeyMissing', EXIT.badInput),
  /** Repository errors a retry cannot fix (backup/errors.ts): nothing was written. */
  repositoryInput: spec('RepositoryInputError', EXIT.badInput),
  repositoryNotFound: spec('RepositoryNotFoundError', EXIT.badInput),
  repositoryExists: spec('RepositoryExistsError', EXIT.badInput),
  bucketNotFound: spec('BucketNotFoundError', EXIT.badInput),
  storeAccessDenied: spec('StoreAccessDeniedError', EXIT.badInput),
  wrongKey: spec('WrongKeyError', EXIT.badInput),
  pointNotFound: spec('PointNotFoundError', EXIT.badInput),
} as const satisfies Record<string, FailureSpec>;

export type FailureKind = keyof typeof FAILURES;

const BY_TYPE = new Map<string, FailureSpec>(Object.values(FAILURES).map((f) => [f.type, f]));

/** The declared failure of `type`, if any. */
export function failureSpecOf(type: string | undefined | null): FailureSpec | undefined {
  return type ? BY_TYPE.get(type) : undefined;
}

/**
 * The one way groupsnap makes an ApplicationFailure: the declared kind's type and retryability, `details` as given
 * (a result failure passes its result).
 */
export function failure(kind: FailureKind, message: string, ...details: unknown[]): ApplicationFailure {
  const f: FailureSpec = FAILURES[kind];
  return ApplicationFailure.create({ message, type: f.type, nonRetryable: !f.retryable, details });
}

/**
 * A failure of a declared `type` carried over from a cause (a child run's root failure); an undeclared or missing
 * one becomes `fallback`.
 */
export function failureOfType(
  type: string | undefined | null,
  message: string,
  fallback: FailureKind,
): ApplicationFailure {
  const kind = (Object.keys(FAILURES) as FailureKind[]).find((k) => FAILURES[k].type === type) ?? fallback;
  return failure(kind, message);
}

/** Failure types a retry cannot fix and the CLI reports as bad input (exit 2). */
export const PERMANENT_FAILURE_TYPES: readonly string[] = Object.values(FAILURES)
  .filter((f) => f.exit === EXIT.badInput)
  .map((f) => f.type);

/** Failure types of groupsnap's workflows (the names clients match on). */
export const FAILURE = {
  badInput: FAILURES.badInput.type,
  snapshotFailed: FAILURES.snapshotFailed.type,
  deleteFailed: FAILURES.deleteFailed.type,
  restoreFailed: FAILURES.restoreFailed.type,
} as const;

/** Failure types whose details carry the run's result. */
export const RESULT_FAILURES: readonly string[] = Object.values(FAILURES)
  .filter((f: FailureSpec) => f.result)
  .map((f) => f.type);

/** The non-retryable failure for bad input. */
export function badInputFailure(message: string): ApplicationFailure {
  return failure('badInput', message);
}

/** The one mapping of a thrown error to what a workflow fails with: a {@link BadInputError} becomes BAD_INPUT. */
export function toFailure(err: unknown): unknown {
  return err instanceof BadInputError ? badInputFailure(err.message) : err;
}

/** Runs a check: a {@link BadInputError} it throws becomes the non-retryable BAD_INPUT failure (for workflows). */
export function checked<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toFailure(err);
  }
}

/** `err` and its causes, outermost first (activity and child-workflow failures wrap the real reason). */
export function causeChain(err: unknown): unknown[] {
  const out: unknown[] = [];
  for (let e = err; e !== undefined && e !== null && out.length < 100; e = (e as { cause?: unknown }).cause)
    out.push(e);
  return out;
}

/** Whether bad input is anywhere in the cause chain (also a BadInputError thrown in this process). */
export function isBadInput(err: unknown): boolean {
  return causeChain(err).some(
    (e) => e instanceof BadInputError || (e instanceof ApplicationFailure && e.type === BAD_INPUT),
  );
}

/** The failure that says what happened: bad input anywhere in the chain, else the outermost typed failure. */
export function rootFailure(err: unknown): ApplicationFailure | undefined {
  const typed = causeChain(err).filter((e): e is ApplicationFailure => e instanceof ApplicationFailure && !!e.type);
  return typed.find((e) => e.type === BAD_INPUT) ?? typed[0];
}

/** The type of the innermost typed failure (the original reason, e.g. of a child workflow's failure). */
export function rootType(err: unknown): string | undefined {
  const typed = causeChain(err).filter((e): e is ApplicationFailure => e instanceof ApplicationFailure && !!e.type);
  return typed.at(-1)?.type ?? undefined;
}

/** The message of the innermost cause that has one (wrappers such as "Activity task failed" say nothing). */
export function errorMessage(err: unknown): string {
  const withMessage = causeChain(err).filter((e) => e instanceof Error && e.message);
  return withMessage.length ? (withMessage.at(-1) as Error).message : String(err);
}

/** The result a handled failure carries (see {@link RESULT_FAILURES}), if any. */
export function resultOf<T>(err: unknown): T | undefined {
  const failure = rootFailure(err);
  if (failure && RESULT_FAILURES.includes(failure.type ?? '') && failure.details?.[0] !== undefined)
    return failure.details[0] as T;
  return undefined;
}

/**
 * The CLI's exit code for an error: bad input anywhere in the chain 2, else the code declared for the outermost
 * failure (or error name, e.g. a repository's `WrongKeyError`) the registry knows, else 1.
 */
export function exitCodeFor(err: unknown): ExitCode {
  if (isBadInput(err)) return EXIT.badInput;
  for (const e of causeChain(err)) {
    const type = e instanceof ApplicationFailure ? e.type : e instanceof Error ? e.name : undefined;
    const spec = failureSpecOf(type);
    if (spec) return spec.exit;
  }
  return EXIT.failed;
}

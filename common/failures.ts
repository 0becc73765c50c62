/**
 * groupsnap's one failure model: how a failure travels from a host activity through the workflows to the typed
 * client and the CLI's exit code. Pure (no Node built-ins): workflows, client and CLI all use it.
 *
 *   host activity / workflow input check   -> ApplicationFailure type BAD_INPUT (non-retryable, nothing changed)
 *   a run that failed and was handled       -> ApplicationFailure of a RESULT_FAILURES type, details[0] = its result
 *   anything else                           -> the error itself
 *
 *   client: BAD_INPUT -> BadInputError; a result failure -> its result (status 'failed'); else rethrown
 *   CLI:    exitCodeFor(): 0 done, 1 failed (handled, e.g. compensated), 2 bad input (nothing changed)
 */
import { ApplicationFailure } from '@temporalio/common';
import { BAD_INPUT, BadInputError } from './validation';

export { BAD_INPUT, BadInputError };

/** Failure types of groupsnap's workflows. */
export const FAILURE = {
  /** Bad input: nothing was paused or changed. */
  badInput: BAD_INPUT,
  /** A group snapshot failed and was compensated; details[0] is its GroupSnapshotResult. */
  snapshotFailed: 'GroupSnapshotFailed',
  /** A snapshot deletion failed on some VMs; details[0] is its DeleteSnapshotResult. */
  deleteFailed: 'SnapshotDeleteFailed',
  /** A restore failed and was rolled back; details[0] is its RestoreResult. */
  restoreFailed: 'RestoreFailed',
} as const;

/** Failure types whose details carry the run's result. */
export const RESULT_FAILURES: readonly string[] = [FAILURE.snapshotFailed, FAILURE.deleteFailed, FAILURE.restoreFailed];

/** Exit codes of the `groupsnap` command. */
export const EXIT = { ok: 0, failed: 1, badInput: 2 } as const;

/** The non-retryable failure for bad input. */
export function badInputFailure(message: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(message, BAD_INPUT);
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

/** The CLI's exit code for an error: bad input 2, else 1. */
export function exitCodeFor(err: unknown): (typeof EXIT)[keyof typeof EXIT] {
  return isBadInput(err) ? EXIT.badInput : EXIT.failed;
}

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ActivityFailure, ApplicationFailure, RetryState } from '@temporalio/common';
import {
  BadInputError,
  EXIT,
  exitCodeFor,
  failure,
  failureOfType,
  FAILURES,
  PERMANENT_FAILURE_TYPES,
  RESULT_FAILURES,
  type FailureKind,
} from '../../common/failures';

const ROOT = join(__dirname, '..', '..');
const PRODUCT = ['activities', 'backup', 'cli', 'client', 'common', 'hypervisor', 'worker', 'workflows'];

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sources(p) : n.endsWith('.ts') ? [p] : [];
  });
}

describe('the failure registry (common/failures.ts)', () => {
  const kinds = Object.keys(FAILURES) as FailureKind[];

  it('declares every type once', () => {
    const types = kinds.map((k) => FAILURES[k].type);
    expect(new Set(types).size).toBe(types.length);
  });

  it.each(kinds)('failure(%j) has its declared type and retryability, and the CLI its exit code', (kind) => {
    const f = failure(kind, 'why', { some: 'detail' });
    expect(f).toBeInstanceOf(ApplicationFailure);
    expect(f.type).toBe(FAILURES[kind].type);
    expect(f.nonRetryable).toBe(!FAILURES[kind].retryable);
    expect(f.details).toEqual([{ some: 'detail' }]);
    expect(exitCodeFor(f)).toBe(FAILURES[kind].exit);
  });

  it('finds the declared code through the wrappers Temporal adds, bad input first', () => {
    const wrapped = (cause: Error) =>
      new ActivityFailure('activity failed', 'x', '1', RetryState.NON_RETRYABLE_FAILURE, undefined, cause);
    expect(exitCodeFor(wrapped(failure('wrongKey', 'wrong key')))).toBe(EXIT.badInput);
    expect(exitCodeFor(wrapped(failure('leaseLost', 'lost')))).toBe(EXIT.failed);
    expect(exitCodeFor(new BadInputError('no'))).toBe(EXIT.badInput);
    expect(exitCodeFor(new Error('boom'))).toBe(EXIT.failed);
    // A repository error thrown in the CLI's own process, by its name.
    expect(exitCodeFor(Object.assign(new Error('bad key'), { name: 'WrongKeyError' }))).toBe(EXIT.badInput);
  });

  it('carries a declared type over from a cause, and falls back for an undeclared one', () => {
    expect(failureOfType('FreezeDeadline', 'm', 'runFailed').type).toBe('FreezeDeadline');
    expect(failureOfType('NotDeclared', 'm', 'runFailed').type).toBe(FAILURES.runFailed.type);
    expect(failureOfType(undefined, 'm', 'groupRunFailed').type).toBe(FAILURES.groupRunFailed.type);
  });

  it('derives the permanent and result lists from the declarations', () => {
    expect(PERMANENT_FAILURE_TYPES).toEqual(
      expect.arrayContaining(['GroupsnapBadInput', 'WrongKeyError', 'PointNotFoundError', 'RepositoryKeyMissing']),
    );
    expect(PERMANENT_FAILURE_TYPES).not.toContain('LeaseLost');
    expect([...RESULT_FAILURES].sort()).toEqual(
      ['CopyFailed', 'ExportFailed', 'GroupSnapshotFailed', 'RestoreFailed', 'SnapshotDeleteFailed'].sort(),
    );
  });

  it('no product file makes an ApplicationFailure but through failure()', () => {
    const offenders = PRODUCT.flatMap((d) => sources(join(ROOT, d)))
      .filter((f) => !f.endsWith(join('common', 'failures.ts')))
      .filter((f) =>
        /ApplicationFailure\.(create|nonRetryable|retryable|fromError)\(|new ApplicationFailure\(/.test(
          readFileSync(f, 'utf8'),
        ),
      )
      .map((f) => relative(ROOT, f));
    expect(offenders).toEqual([]);
  });
});

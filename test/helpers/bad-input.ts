import { BadInputError } from '../../common/failures';

/** Runs `fn`, expecting it to throw a BadInputError, and returns that error (for checking its message). */
export function badInput(fn: () => unknown): BadInputError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BadInputError);
    return err as BadInputError;
  }
  throw new Error('expected a BadInputError, but nothing was thrown');
}

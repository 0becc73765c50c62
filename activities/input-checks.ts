import { ApplicationFailure } from '@temporalio/common';
import { failure } from '../common/failures';
import { assertSafeName } from '../common/validation';

/**
 * Checks every host activity makes of its own input, whatever the workflow checked before: anyone who can start a
 * workflow in the namespace can also schedule a host activity directly, so a host never trusts a name, id or path
 * it did not derive itself. Each check adds a sentence to `problems`; {@link failIf} turns them into one
 * non-retryable bad-input failure, before anything was changed.
 */

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Non-retryable failure for input that cannot be acted on: thrown before anything is changed. */
export function badInput(problems: string | string[]): ApplicationFailure {
  return failure('badInput', Array.isArray(problems) ? problems.join('; ') : problems);
}

/** A libvirt domain name: any non-empty text without '/' or NUL (the file names made from it are sanitised). */
export function checkDomain(domain: unknown, problems: string[]): void {
  if (typeof domain !== 'string' || domain === '' || domain.includes('/') || domain.includes('\0'))
    problems.push(`VM name ${JSON.stringify(domain)} is not valid`);
}

/** A name that becomes part of a file name (snapshot ids, clone names, tags, run ids). */
export function checkName(what: string, value: unknown, problems: string[]): void {
  try {
    if (typeof value !== 'string') throw new Error(`${what} must be a string, got ${JSON.stringify(value)}`);
    assertSafeName(what, value);
  } catch (err) {
    problems.push(message(err));
  }
}

/** A list of VM names. */
export function checkDomains(domains: unknown, problems: string[]): void {
  if (!Array.isArray(domains) || domains.length === 0) {
    problems.push('a non-empty list of VM names is required');
    return;
  }
  for (const d of domains) checkDomain(d, problems);
}

/** The owner of a lease: the id of the workflow run that works under it. */
export function checkOwner(owner: unknown, problems: string[]): void {
  if (typeof owner !== 'string' || owner.trim() === '' || owner.length > 200)
    problems.push(`a lease owner (the workflow run id) is required, got ${JSON.stringify(owner)}`);
}

export function failIf(problems: string[]): void {
  if (problems.length > 0) throw badInput(problems);
}

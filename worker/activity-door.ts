/**
 * The one door into a host's activities: every activity the host plugin registers is wrapped so its request is
 * parsed by its declared schema (common/host-requests.ts) before anything else runs on the host. A request that does
 * not parse fails with a non-retryable BAD_INPUT failure naming every issue; nothing was changed. An activity without
 * a schema cannot be registered.
 */
import type { z } from 'zod';
import { describeIssues } from '../common/host-requests';
import { failure } from '../common/failures';

type ActivityFn = (...args: never[]) => Promise<unknown>;

/** Names of `activities` that have no schema in `schemas`. */
export function unguardedActivities(activities: object, schemas: Readonly<Record<string, z.ZodType>>): string[] {
  return Object.keys(activities).filter((name) => !Object.prototype.hasOwnProperty.call(schemas, name));
}

/**
 * `activities`, each wrapped to parse its one argument by its schema and call the activity with the parsed value.
 * @throws TypeError (at worker start) naming every activity without a schema.
 */
export function guardActivities<T extends Record<string, ActivityFn>>(
  activities: T,
  schemas: Readonly<Record<string, z.ZodType>>,
): T {
  const missing = unguardedActivities(activities, schemas);
  if (missing.length)
    throw new TypeError(
      `host activities without a request schema (add one to common/host-requests.ts): ${missing.join(', ')}`,
    );
  const guarded: Record<string, ActivityFn> = {};
  for (const [name, fn] of Object.entries(activities)) {
    const schema = schemas[name];
    // A named function: the worker registers activities under their keys, and stack traces show the name.
    guarded[name] = {
      async [name](...args: unknown[]) {
        if (args.length > 1)
          throw failure('badInput', `bad request to ${name}: it takes one argument, got ${args.length}`);
        const parsed = schema.safeParse(args[0]);
        if (!parsed.success)
          throw failure('badInput', `bad request to ${name}: ${describeIssues(parsed.error).join('; ')}`);
        return (fn as (req: unknown) => Promise<unknown>)(parsed.data);
      },
    }[name] as ActivityFn;
  }
  return guarded as T;
}

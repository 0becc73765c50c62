import { Context } from '@temporalio/activity';

/** Heartbeats the current activity; a no-op outside one (a host step called directly, e.g. by the guard's recovery). */
export function heartbeat(details?: unknown): void {
  try {
    Context.current().heartbeat(details);
  } catch {
    // not in an activity
  }
}

/**
 * Whether the current activity was cancelled (its heartbeat timed out, or the workflow cancelled it): a loop stops
 * then, so an attempt Temporal gave up on does not go on beside its retry. False outside an activity.
 */
export function cancelled(): boolean {
  try {
    return Context.current().cancellationSignal.aborted;
  } catch {
    return false;
  }
}

/** Runs `fn`, heartbeating every second: merges, commits and boots can take a while, and must not be retried while they run. */
export async function beating<T>(fn: () => Promise<T>): Promise<T> {
  heartbeat();
  const timer = setInterval(() => heartbeat(), 1000);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}

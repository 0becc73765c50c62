import type { HostContext } from './context';

/**
 * The freeze deadline: when a VM frozen (its guest quiesced, or paused) at `startedAtMs` must run again, `maxFreezeMs`
 * later; counted from now, by the host's clock, when it has no start yet. The one computation of it on the host: the
 * journal's records (which the timers and the guard enforce), the wait for the group's release and each VM's wait in
 * the `group-paused` order all use it.
 */
export function freezeDeadline(ctx: Pick<HostContext, 'now'>, maxFreezeMs: number, startedAtMs?: number): number {
  return (startedAtMs ?? ctx.now()) + maxFreezeMs;
}

/** Resolves at the freeze deadline of a VM paused at `pausedAtMs` (a safety net: the timers resume it then anyway). */
export function untilDeadline(
  ctx: Pick<HostContext, 'now'>,
  maxFreezeMs: number,
  pausedAtMs: number | undefined,
): Promise<void> {
  const at = freezeDeadline(ctx, maxFreezeMs, pausedAtMs);
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, at - ctx.now())).unref());
}

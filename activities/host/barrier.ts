/**
 * The cross-host barrier, host side (docs/adr/0001, 0006): a freeze tells the workflow its VMs are paused (or
 * snapshotted) and waits for the group's release, through the workflow's `hostFrozen` Update, or, in groups over more
 * hosts than updates may wait at once, through the `hostPaused` signal and the workflow's `releaseFreeze` activity.
 */
import { Context } from '@temporalio/activity';
import { WorkflowNotFoundError, WorkflowUpdateFailedError } from '@temporalio/client';
import type { FreezeRequest, FreezeVmReport, ReleaseRequest } from '../../common/host-types';
import { HOST_ARMED_UPDATE, HOST_FROZEN_UPDATE, HOST_PAUSED_SIGNAL } from '../../common/names';
import { checkName, checkOwner, failIf } from '../input-checks';
import type { HostContext } from './context';
import { freezeDeadline } from './freeze-deadline';
import { runKey } from './undo-memory';

/**
 * Waits for the workflow to release the group (every host snapshotted), at most until the earliest freeze
 * deadline of this host's VMs. Resolves true on release, false when the workflow aborted the cut.
 */
export async function waitForRelease(
  ctx: HostContext,
  req: FreezeRequest,
  reports: FreezeVmReport[],
): Promise<boolean> {
  const activity = Context.current();
  const starts = reports.map((r) => r.pausedAtMs).filter((t): t is number => t !== undefined);
  const deadline = freezeDeadline(ctx, req.maxFreezeMs, starts.length ? Math.min(...starts) : undefined);
  const workflow = activity.info.workflowExecution;
  if (!workflow) throw new Error('the cross-host barrier needs the activity to run for a workflow');
  const handle = activity.client.workflow.getHandle(workflow.workflowId);
  return activity.client.withDeadline(deadline, async () => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await handle.executeUpdate<boolean, [string]>(HOST_FROZEN_UPDATE, { args: [req.host] });
      } catch (err) {
        // The server drops an Update whose workflow task failed or timed out (an overloaded workflow worker) for
        // good: the workflow retries its task, the caller must ask again (issue 29, seen at 64 simulated hosts under
        // load). This host's VMs stay paused meanwhile and the handler only reports the barrier's state, so asking
        // again cannot release anything early; the deadline still bounds the wait.
        if (!updateLostWithItsTask(err) || ctx.now() + 100 >= deadline) throw err;
        ctx.log('barrier update lost with its workflow task, asking again', { host: req.host, attempt });
        await new Promise((r) => setTimeout(r, Math.min(1000, 50 * attempt)));
      }
    }
  });
}

/**
 * The armed barrier's first half: tells the workflow this host is ready to pause (nothing paused yet) and waits for
 * its go, given once every host of the group is ready. Resolves true on go, false when the workflow aborted the run
 * first. Nothing is paused while it waits, so it has no freeze deadline: the activity's own timeouts and its
 * cancellation bound it.
 */
export async function waitForGo(ctx: HostContext, req: FreezeRequest): Promise<boolean> {
  const activity = Context.current();
  const workflow = activity.info.workflowExecution;
  if (!workflow) throw new Error('the armed barrier needs the activity to run for a workflow');
  const handle = activity.client.workflow.getHandle(workflow.workflowId);
  const started = ctx.now();
  return activity.client.withAbortSignal(activity.cancellationSignal, async () => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await handle.executeUpdate<boolean, [string]>(HOST_ARMED_UPDATE, { args: [req.host] });
      } catch (err) {
        // Nothing is paused while this host waits, so anything short of the workflow's own answer is asked again: an
        // Update lost with its workflow task (as in waitForRelease), the server unreachable for a while. Bounded by
        // the activity: its cancellation, or its timeout, after which the workflow has aborted the run anyway.
        const expired = ctx.now() - started > activity.info.startToCloseTimeoutMs;
        if (answeredByWorkflow(err) || activity.cancellationSignal.aborted || expired) throw err;
        ctx.log('armed update not answered, asking again', { host: req.host, attempt, error: String(err) });
        await new Promise((r) => setTimeout(r, Math.min(1000, 50 * attempt)));
      }
    }
  });
}

/** The workflow refused the Update or is gone: asking again cannot help. */
function answeredByWorkflow(err: unknown): boolean {
  if (updateLostWithItsTask(err)) return false;
  return err instanceof WorkflowUpdateFailedError || err instanceof WorkflowNotFoundError;
}

/**
 * An Update the server gave up with its workflow task (not the workflow's answer): rejected as not processed by the
 * worker (`UnprocessedUpdate`), or aborted because the task failed ("unexpected workflow task failure").
 */
export function updateLostWithItsTask(err: unknown): boolean {
  const cause = (err as { cause?: { type?: unknown } } | undefined)?.cause;
  if (err instanceof WorkflowUpdateFailedError && cause?.type === 'UnprocessedUpdate') return true;
  return /unexpected workflow task failure/i.test(String((err as Error | undefined)?.message ?? ''));
}

/**
 * The `signal` barrier: tells the workflow this host's VMs are paused, then waits for its `releaseFreeze` on this
 * host. Resolves true on release, false on an abort.
 */
export async function signalPausedAndWait(ctx: HostContext, req: FreezeRequest): Promise<boolean> {
  const activity = Context.current();
  const workflow = activity.info.workflowExecution;
  if (!workflow) throw new Error('the cross-host barrier needs the activity to run for a workflow');
  const decision = ctx.releases.wait(runKey(req));
  await activity.client.workflow.getHandle(workflow.workflowId, workflow.runId).signal(HOST_PAUSED_SIGNAL, req.host);
  return decision;
}

/** The `signal` barrier's activity, `releaseFreeze`. */
export function createBarrierActivities(ctx: HostContext) {
  return {
    /**
     * The workflow's decision for the `signal` barrier: releases (or aborts) the freeze of `snapshotId` waiting on
     * this host, or the one that will wait. Changes nothing else; a second decision is ignored.
     */
    async releaseFreeze(req: ReleaseRequest): Promise<void> {
      const problems: string[] = [];
      checkName('snapshot id', req.snapshotId, problems);
      checkOwner(req.leaseOwner, problems);
      if (typeof req.release !== 'boolean')
        problems.push(`release must be true or false, got ${JSON.stringify(req.release)}`);
      failIf(problems);
      ctx.releases.decide(runKey(req), req.release);
    },
  };
}

import {
  CancellationScope,
  condition,
  ParentClosePolicy,
  setHandler,
  startChild,
  type ChildWorkflowOptions,
} from '@temporalio/workflow';
import type { RepoRestoreInput, RepoRestoreResult } from '../common/repo-restore';
import { restoreFromRepo, restoreRunningSignal } from './repo-restore';

/** One instant restore started by this workflow. */
interface InstantChild {
  readonly restoreId: string;
  readonly scope: CancellationScope;
  /** Its final result once hydrated; a failure once it failed (or was cancelled). */
  final?: RepoRestoreResult;
  failure?: unknown;
}

/**
 * The instant restores a workflow (a recovery plan's run, a drill) starts as children: each reports its VMs running
 * by a signal, so the parent checks readiness while the child hydrates. The parent then either waits for every
 * hydration to end ({@link hydrated}: a failover that is kept) or stops them ({@link stop}: a test or rollback
 * that removes the VMs next; the serving process is the parent's to stop, `instantStop`, after the VMs are gone).
 */
export class InstantRestores {
  private readonly running = new Map<string, RepoRestoreResult>();
  private readonly children: InstantChild[] = [];

  constructor() {
    setHandler(restoreRunningSignal, (r) => {
      this.running.set(r.restoreId, r);
    });
  }

  get size(): number {
    return this.children.length;
  }

  /**
   * Starts `input` (instant, with its restoreId) as a child; returns its result as soon as every VM runs, or throws
   * its failure (a failure before the VMs ran was rolled back by the child).
   */
  async start(
    input: RepoRestoreInput & { restoreId: string },
    options: Pick<ChildWorkflowOptions, 'workflowId' | 'taskQueue' | 'staticSummary'>,
  ): Promise<RepoRestoreResult> {
    const scope = new CancellationScope();
    const child: InstantChild = { restoreId: input.restoreId, scope };
    const handle = await scope.run(() =>
      startChild(restoreFromRepo, {
        ...options,
        args: [{ ...input, instant: true, reportRunning: true }],
        // A parent that ends without waiting (a failover left for inspection) leaves its hydration to finish.
        parentClosePolicy: ParentClosePolicy.ABANDON,
      }),
    );
    this.children.push(child);
    void handle.result().then(
      (r) => {
        child.final = r;
      },
      (err: unknown) => {
        child.failure = err;
      },
    );
    await condition(
      () => this.running.has(child.restoreId) || child.final !== undefined || child.failure !== undefined,
    );
    const running = this.running.get(child.restoreId) ?? child.final;
    if (running) return running;
    throw child.failure;
  }

  /** Waits until every child has hydrated; returns their final results. @throws the first child's failure */
  async hydrated(): Promise<RepoRestoreResult[]> {
    await condition(() => this.children.every((c) => c.final !== undefined || c.failure !== undefined));
    const failed = this.children.find((c) => c.failure !== undefined);
    if (failed) throw failed.failure;
    return this.children.map((c) => c.final!);
  }

  /** Cancels every hydration still running and waits until each child has ended (never throws; not cancellable). */
  async stop(): Promise<void> {
    await CancellationScope.nonCancellable(async () => {
      for (const c of this.children) if (c.final === undefined && c.failure === undefined) c.scope.cancel();
      await condition(() => this.children.every((c) => c.final !== undefined || c.failure !== undefined));
    });
  }
}

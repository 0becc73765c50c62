/**
 * A saga's compensation list for the DR workflows: a step registers its undo as soon as it may have taken effect;
 * on failure (or cancellation, or always for a drill's teardown) the undos run newest first in a non-cancellable
 * scope, and an undo that fails is logged and reported while the others still run.
 */
import { CancellationScope, log } from '@temporalio/workflow';
import { errorMessage } from '../common/failures';

/** One registered undo: what it undoes (for the log) and how. */
export interface Compensation {
  readonly what: string;
  readonly undo: () => Promise<void>;
}

/**
 * Runs `list` newest first, one at a time; each failure goes to `onError` and the rest still run. Pure (no
 * workflow API), so it is unit-tested alone.
 */
export async function runNewestFirst(
  list: readonly Compensation[],
  onError: (c: Compensation, err: unknown) => void,
): Promise<void> {
  for (const c of [...list].reverse()) {
    try {
      await c.undo();
    } catch (err) {
      onError(c, err);
    }
  }
}

/** The compensation list of one workflow run. */
export class Compensations {
  private readonly list: Compensation[] = [];

  /** Registers `undo`: it runs before every undo registered earlier (newest first). */
  add(what: string, undo: () => Promise<void>): void {
    this.list.push({ what, undo });
  }

  /** Forgets every registered undo: what they would undo is to stay (e.g. VMs whose guests now write). */
  discard(): void {
    this.list.splice(0);
  }

  get size(): number {
    return this.list.length;
  }

  /**
   * Runs every registered undo newest first in a non-cancellable scope (a cancelled run still cleans up); a failing
   * undo is logged, passed to `onError` and does not stop the others. The list is emptied.
   */
  async run(onError: (what: string, err: unknown) => void = () => undefined): Promise<void> {
    const list = this.list.splice(0);
    await CancellationScope.nonCancellable(() =>
      runNewestFirst(list, (c, err) => {
        log.warn('compensation failed', { compensation: c.what, error: errorMessage(err) });
        onError(c.what, err);
      }),
    );
  }
}

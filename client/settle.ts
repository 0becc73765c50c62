/** How the client library runs groupsnap's workflows and turns their failures into what callers handle. */
import { randomBytes } from 'node:crypto';
import { Client, WorkflowFailedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { BAD_INPUT, BadInputError, resultOf, rootFailure } from '../common/failures';

/**
 * Turns a workflow or update failure into what callers handle: a BadInputError for bad input (nothing changed),
 * the result in the failure's details for a failed-and-handled run, else the error itself.
 */
export async function settle<T>(run: Promise<T>): Promise<T> {
  try {
    return await run;
  } catch (err) {
    if (err instanceof WorkflowFailedError || err instanceof WorkflowUpdateFailedError) {
      const failure = rootFailure(err);
      if (failure?.type === BAD_INPUT) throw new BadInputError(failure.message);
      const result = resultOf<T>(err);
      if (result !== undefined) return result;
    }
    throw err;
  }
}

export function shortId(): string {
  return randomBytes(4).toString('hex');
}

/** Runs one of groupsnap's short administrative workflows and returns its result. */
export function execute<T>(client: Client, workflowType: string, idPrefix: string, args: unknown[], summary: string) {
  return settle(
    client.workflow.execute(workflowType, {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: `${idPrefix}/${shortId()}`,
      args,
      staticSummary: summary,
    }) as Promise<T>,
  );
}

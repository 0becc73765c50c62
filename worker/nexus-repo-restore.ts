/** Nexus operation `restoreFromRepo` of groupsnap's service: a group point rebuilt on another host (asynchronous). */
import { WorkflowExecutionAlreadyStartedError, WorkflowIdReusePolicy } from '@temporalio/client';
import { startWorkflow, WorkflowRunOperationHandler } from '@temporalio/nexus';
import * as nexus from 'nexus-rpc';
import type { NexusRestoreFromRepoInput } from '../client/nexus';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { normalizeRepoRestoreInput, repoRestoreWorkflowId, type RepoRestoreResult } from '../common/repo-restore';
import { GroupsnapGroup, GroupsnapSnapshotId } from '../common/search-attributes';
import { BadInputError, failure } from '../common/failures';
import type { restoreFromRepo } from '../workflows';

function badRequest(message: string): nexus.HandlerError {
  return new nexus.HandlerError('BAD_REQUEST', message, {
    cause: failure('badInput', message),
    retryableOverride: false,
  });
}

export const restoreFromRepoOperation = new WorkflowRunOperationHandler<NexusRestoreFromRepoInput, RepoRestoreResult>(
  async (ctx, input) => {
    let n;
    try {
      if (typeof input !== 'object' || input === null || Array.isArray(input))
        throw new BadInputError(`restoreFromRepo takes an object, got ${JSON.stringify(input)}`);
      n = normalizeRepoRestoreInput(input);
    } catch (err) {
      if (err instanceof BadInputError) throw badRequest(err.message);
      throw err;
    }
    const restoreId = n.restoreId ?? `rr-${ctx.requestId.replace(/-/g, '').slice(0, 8)}`;
    try {
      return await startWorkflow<typeof restoreFromRepo>(ctx, 'restoreFromRepo', {
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowId: repoRestoreWorkflowId(n.group, restoreId),
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        args: [{ ...input, restoreId }],
        typedSearchAttributes: [
          { key: GroupsnapGroup, value: n.group },
          { key: GroupsnapSnapshotId, value: n.snapshotId },
        ],
        staticSummary: `Restore ${n.group} ${n.snapshotId} from the repository on ${n.toHost}, asked through Nexus`,
      });
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError)
        throw badRequest(`restore ${JSON.stringify(restoreId)} of group ${n.group} was already run or is running`);
      throw err;
    }
  },
);

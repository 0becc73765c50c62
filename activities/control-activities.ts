import { Context } from '@temporalio/activity';
import { WorkflowNotFoundError } from '@temporalio/client';
import {
  groupWorkflowId,
  HOST_REGISTRY_WORKFLOW_ID,
  type GroupDefinition,
  type RegisteredHost,
} from '../common/groups';
import { failure } from '../common/failures';
import { createRetentionActivities } from './retention-activities';

/**
 * Activities of the control plane, run by the workflow worker on the shared queue: they read the durable state kept
 * in groupsnap's entity workflows (the host registry, the groups) through the worker's Temporal client.
 */
export function createControlActivities() {
  return {
    ...createRetentionActivities(),
    /** Hosts whose worker registered in this namespace (empty before the first worker started). */
    async registeredHosts(): Promise<RegisteredHost[]> {
      const handle = Context.current().client.workflow.getHandle(HOST_REGISTRY_WORKFLOW_ID);
      try {
        return await handle.query<RegisteredHost[]>('hosts');
      } catch (err) {
        if (err instanceof WorkflowNotFoundError) return [];
        throw err;
      }
    },

    /** A group's definition, from its entity workflow. @throws BAD_INPUT for an unknown (or deleted) group. */
    async readGroup(name: string): Promise<GroupDefinition> {
      const handle = Context.current().client.workflow.getHandle(groupWorkflowId(name));
      try {
        const desc = await handle.describe();
        if (desc.status.name !== 'RUNNING') throw new WorkflowNotFoundError('deleted', handle.workflowId, undefined);
        return await handle.query<GroupDefinition>('definition');
      } catch (err) {
        if (err instanceof WorkflowNotFoundError) throw failure('badInput', `unknown group ${JSON.stringify(name)}`);
        throw err;
      }
    },
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;

/** Named groups: create, read, list, show (members resolved now) and delete their definitions. */
import {
  Client,
  ScheduleNotFoundError,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
} from '@temporalio/client';
import {
  groupWorkflowId,
  normalizeGroupDefinition,
  resolveMembers,
  selectorText,
  type GroupDefinition,
  type Inventory,
} from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { scheduleIdFor } from '../common/schedule-spec';
import { GroupsnapGroup } from '../common/search-attributes';
import type { VmRef } from '../common/types';
import { BadInputError } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { inventory } from './hosts';
import { settle } from './settle';

/**
 * Creates a named group (its entity workflow `group/<name>`).
 * @throws BadInputError for an invalid definition or an existing group; nothing is created then.
 */
export async function createGroup(client: Client, def: GroupDefinition): Promise<GroupDefinition> {
  const definition = { ...normalizeGroupDefinition(def), createdAt: new Date().toISOString() };
  try {
    await client.workflow.start('groupEntity', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: groupWorkflowId(definition.name),
      args: [{ definition }],
      typedSearchAttributes: [{ key: GroupsnapGroup, value: definition.name }],
      staticSummary: `Group ${definition.name}: ${selectorText(definition.selector)}`,
      staticDetails: definition.description,
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError)
      throw new BadInputError(`group ${JSON.stringify(definition.name)} already exists`);
    throw err;
  }
  return definition;
}

/** @throws BadInputError for an unknown (or deleted) group. */
export async function getGroup(client: Client, name: string): Promise<GroupDefinition> {
  assertSafeName('group name', name);
  const handle = client.workflow.getHandle(groupWorkflowId(name));
  try {
    const desc = await handle.describe();
    if (desc.status.name === 'RUNNING') return await handle.query<GroupDefinition>('definition');
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
  }
  throw new BadInputError(`unknown group ${JSON.stringify(name)}`);
}

/** Every group of the namespace, by name. */
export async function listGroups(client: Client): Promise<GroupDefinition[]> {
  const names: string[] = [];
  for await (const wf of client.workflow.list({
    query: `WorkflowType = 'groupEntity' AND ExecutionStatus = 'Running'`,
  }))
    if (wf.workflowId.startsWith('group/')) names.push(wf.workflowId.slice('group/'.length));
  const defs = await Promise.all(
    [...new Set(names)].map((n) => client.workflow.getHandle(groupWorkflowId(n)).query<GroupDefinition>('definition')),
  );
  return defs.sort((a, b) => a.name.localeCompare(b.name));
}

/** A group and its members as they resolve now (a tag selector asks every registered host). */
export async function showGroup(
  client: Client,
  name: string,
): Promise<{ definition: GroupDefinition; members: VmRef[]; unreachable: Inventory['unreachable'] }> {
  const definition = await getGroup(client, name);
  if ('vms' in definition.selector) return { definition, members: definition.selector.vms, unreachable: [] };
  const inv = await inventory(client);
  return { definition, members: resolveMembers(definition, inv), unreachable: inv.unreachable };
}

/**
 * Deletes a group definition (its snapshots stay until deleted). A group with a schedule is refused unless
 * `withSchedule`, which deletes the schedule too.
 */
export async function deleteGroup(client: Client, name: string, options: { withSchedule?: boolean } = {}) {
  await getGroup(client, name);
  const schedule = client.schedule.getHandle(scheduleIdFor(name));
  let hasSchedule = true;
  try {
    await schedule.describe();
  } catch (err) {
    if (!(err instanceof ScheduleNotFoundError)) throw err;
    hasSchedule = false;
  }
  if (hasSchedule && !options.withSchedule)
    throw new BadInputError(
      `group ${name} has a schedule (${scheduleIdFor(name)}): delete it first or pass --with-schedule`,
    );
  await settle(client.workflow.getHandle(groupWorkflowId(name)).executeUpdate('deleteGroup', { args: [] }));
  if (hasSchedule) await schedule.delete();
}

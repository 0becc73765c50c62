import type { Client } from '@temporalio/client';
import { describeGroupSchedule, triggerGroupSchedule } from '../../client/dr';
import type { GroupRunResult } from '../../common/groups';

/** Triggers the group's schedule once and waits for that run's result. */
export async function triggerAndWait(client: Client, group: string, timeoutMs = 30_000): Promise<GroupRunResult> {
  const before = (await describeGroupSchedule(client, group)).info.recentActions.length;
  await triggerGroupSchedule(client, group);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const actions = (await describeGroupSchedule(client, group)).info.recentActions;
    if (actions.length > before) {
      const { workflowId } = actions[actions.length - 1].action.workflow;
      return (await client.workflow.getHandle(workflowId).result()) as GroupRunResult;
    }
    if (Date.now() > deadline) throw new Error(`the schedule of ${group} did not start a run within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A group definition of VMs on hosts: `[[hostId, domain], ...]`. */
export function vmsOf(...members: [host: string, domain: string][]) {
  return { vms: members.map(([host, domain]) => ({ domain, host })) };
}

/** The registered hosts, what they have (inventory), and the tags of their VMs. */
import { Client, WorkflowNotFoundError } from '@temporalio/client';
import { HOST_REGISTRY_WORKFLOW_ID, type Inventory, type RegisteredHost } from '../common/groups';
import type { VmRef } from '../common/types';
import { assertSafeName } from '../common/validation';
import { execute } from './settle';

/** What every registered host has: VMs, tags and catalogs. */
export function inventory(client: Client, hosts?: string[]): Promise<Inventory> {
  return execute<Inventory>(client, 'groupsnapInventory', 'inventory', [{ hosts }], 'groupsnap inventory');
}

/** Adds and/or removes tags on a VM (at its host). Returns its tags after. */
export async function tagVm(
  client: Client,
  vm: VmRef,
  change: { add?: string[]; remove?: string[] },
): Promise<string[]> {
  assertSafeName('host id', vm.host);
  for (const t of [...(change.add ?? []), ...(change.remove ?? [])]) assertSafeName('tag', t);
  return execute<string[]>(
    client,
    'setVmTags',
    'tag',
    [{ host: vm.host, domain: vm.domain, ...change }],
    `tags of ${vm.domain}@${vm.host}: ${[...(change.add ?? []).map((t) => `+${t}`), ...(change.remove ?? []).map((t) => `-${t}`)].join(' ')}`,
  );
}

export async function listHosts(client: Client): Promise<RegisteredHost[]> {
  try {
    return await client.workflow.getHandle(HOST_REGISTRY_WORKFLOW_ID).query<RegisteredHost[]>('hosts');
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return [];
    throw err;
  }
}

/** Removes a decommissioned host from the registry. @returns false when it was not registered. */
export function forgetHost(client: Client, hostId: string): Promise<boolean> {
  return client.workflow.getHandle(HOST_REGISTRY_WORKFLOW_ID).executeUpdate<boolean, [string]>('forgetHost', {
    args: [hostId],
  });
}

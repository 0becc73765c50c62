/** The inventory of the registered hosts (what each one's VMs are), and a group's members resolved over it. */
import { control, onHost } from './activity-options';
import { errorMessage, failure } from '../common/failures';
import type { GroupDefinition, Inventory } from '../common/groups';
import { resolveMembers, selectorText } from '../common/groups';
import type { VmRef } from '../common/types';

/** Every registered host's VMs (or of `hosts`), in parallel; hosts that do not answer are listed as unreachable. */
export async function takeInventory(hosts?: string[]): Promise<Inventory> {
  const ids = hosts ?? (await control.registeredHosts()).map((h) => h.hostId);
  const answers = await Promise.allSettled(
    ids.map((h) => onHost(h).read.listVms.executeWithOptions({ summary: `list VMs on ${h}` }, [])),
  );
  const inventory: Inventory = { hosts: [], unreachable: [] };
  answers.forEach((a, i) => {
    if (a.status === 'fulfilled') inventory.hosts.push({ host: ids[i], vms: a.value });
    else inventory.unreachable.push({ host: ids[i], error: errorMessage(a.reason) });
  });
  return inventory;
}

/** Fails a run that needs every host to answer (membership, deletion) when some did not. */
export function requireAllHosts(inventory: Inventory, purpose: string): void {
  if (inventory.unreachable.length === 0) return;
  const names = inventory.unreachable.map((u) => u.host).join(', ');
  throw failure(
    'hostUnreachable',
    `cannot ${purpose}: registered host(s) ${names} did not answer (${inventory.unreachable[0].error}); start their ` +
      `worker, or remove a decommissioned host with 'groupsnap host forget <id>'`,
  );
}

/** A group's members now; a tag selector is resolved over every registered host. */
export async function membersOf(def: GroupDefinition): Promise<VmRef[]> {
  if ('vms' in def.selector) return def.selector.vms;
  const inventory = await takeInventory();
  requireAllHosts(inventory, `resolve the members of group ${def.name}`);
  const members = resolveMembers(def, inventory);
  if (members.length === 0) {
    const hosts = inventory.hosts.map((h) => h.host);
    throw failure(
      'badInput',
      `group ${def.name} (${selectorText(def.selector)}) matches no VM on ` +
        (hosts.length ? `hosts ${hosts.join(', ')}` : 'any host: no host worker has registered yet'),
    );
  }
  return members;
}

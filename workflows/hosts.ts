/** Activity proxies shared by groupsnap's administrative workflows, and the inventory fan-out over hosts. */
import { ApplicationFailure, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities as SagaActivities } from '../activities/host-activities';
import type { HostDrActivities, HostPinActivities } from '../common/dr-types';
import type { GroupDefinition, Inventory } from '../common/groups';
import { resolveMembers, selectorText } from '../common/groups';
import { hostTaskQueue } from '../common/names';
import type { VmRef } from '../common/types';
import { BAD_INPUT } from '../common/validation';

type HostActivities = SagaActivities & HostDrActivities & HostPinActivities;

export const control = proxyActivities<ControlActivities>({
  startToCloseTimeout: '30s',
  retry: { maximumAttempts: 5, nonRetryableErrorTypes: [BAD_INPUT] },
});

const ADMIN_PRESETS: Record<'read' | 'change' | 'merge' | 'cleanup', ActivityOptions> = {
  // A host without a worker is reported within seconds, not waited for.
  read: {
    scheduleToStartTimeout: '10s',
    startToCloseTimeout: '60s',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: [BAD_INPUT] },
  },
  change: {
    scheduleToStartTimeout: '10s',
    startToCloseTimeout: '10m',
    retry: { maximumAttempts: 3, initialInterval: '1s', nonRetryableErrorTypes: [BAD_INPUT] },
  },
  // A block commit copies data: minutes for large layers.
  merge: {
    scheduleToStartTimeout: '30s',
    startToCloseTimeout: '1h',
    retry: { maximumAttempts: 3, initialInterval: '2s', nonRetryableErrorTypes: [BAD_INPUT, 'LockBusyError'] },
  },
  cleanup: {
    startToCloseTimeout: '10m',
    scheduleToCloseTimeout: '1h',
    retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '30s' },
  },
};

/** Activities on `hostId`'s own queue, with timeouts chosen per kind of work. */
export function onHost(hostId: string) {
  const taskQueue = hostTaskQueue(hostId);
  return {
    read: proxyActivities<HostActivities>({ taskQueue, ...ADMIN_PRESETS.read }),
    change: proxyActivities<HostActivities>({ taskQueue, ...ADMIN_PRESETS.change }),
    merge: proxyActivities<HostActivities>({ taskQueue, ...ADMIN_PRESETS.merge }),
    cleanup: proxyActivities<HostActivities>({ taskQueue, ...ADMIN_PRESETS.cleanup }),
    lock: proxyActivities<HostActivities>({
      taskQueue,
      scheduleToStartTimeout: '10s',
      startToCloseTimeout: '10s',
      scheduleToCloseTimeout: '10m',
      retry: { initialInterval: '200ms', backoffCoefficient: 1.5, maximumInterval: '5s' },
    }),
  };
}

export function errorMessage(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  // Activity and child failures wrap the real reason.
  while (e?.cause && (e.cause as { message?: string }).message) e = e.cause as typeof e;
  return e?.message ?? String(err);
}

/** The failure type at the root of an activity or child workflow failure. */
export function rootType(err: unknown): string | undefined {
  let e = err as { cause?: unknown } | undefined;
  let type: string | undefined;
  while (e) {
    if (e instanceof ApplicationFailure) type = e.type ?? type;
    e = e.cause as typeof e;
  }
  return type;
}

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
  throw ApplicationFailure.nonRetryable(
    `cannot ${purpose}: registered host(s) ${names} did not answer (${inventory.unreachable[0].error}); start their ` +
      `worker, or remove a decommissioned host with 'groupsnap host forget <id>'`,
    'HostUnreachable',
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
    throw ApplicationFailure.nonRetryable(
      `group ${def.name} (${selectorText(def.selector)}) matches no VM on ` +
        (hosts.length ? `hosts ${hosts.join(', ')}` : 'any host: no host worker has registered yet'),
      BAD_INPUT,
    );
  }
  return members;
}

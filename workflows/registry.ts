import {
  allHandlersFinished,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { RegisteredHost } from '../common/groups';

export const registerHostSignal = defineSignal<[{ hostId: string; at: string }]>('registerHost');
export const forgetHostUpdate = defineUpdate<boolean, [string]>('forgetHost');
export const hostsQuery = defineQuery<RegisteredHost[]>('hosts');

/**
 * The namespace's host registry (workflow id `groupsnap-hosts`): every host worker signals it at start
 * (signal-with-start), so tag selectors know which hosts to ask. Runs for ever, continuing as new when its history
 * grows.
 */
export async function hostRegistry(state: { hosts: RegisteredHost[] }): Promise<void> {
  const hosts = new Map(state.hosts.map((h) => [h.hostId, h]));
  setHandler(registerHostSignal, ({ hostId, at }) => {
    const known = hosts.get(hostId);
    hosts.set(hostId, { hostId, registeredAt: known?.registeredAt ?? at, lastSeenAt: at });
  });
  setHandler(forgetHostUpdate, (hostId) => hosts.delete(hostId));
  setHandler(hostsQuery, () => [...hosts.values()].sort((a, b) => a.hostId.localeCompare(b.hostId)));
  await condition(() => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > 5_000);
  await condition(allHandlersFinished);
  await continueAsNew<typeof hostRegistry>({ hosts: [...hosts.values()] });
}

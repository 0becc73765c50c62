/** `groupsnap tag|untag` and `groupsnap host list|forget`. */
import { forgetHost, listHosts, tagVm } from '../client/hosts';
import type { VmRef } from '../common/types';
import { BadInputError } from '../common/failures';
import { checkNames, checkTagVm } from './check-input';
import { vmText } from './format';
import { withClient, type CommonOptions } from './with-client';

export function tagCommand(vm: VmRef, tags: string[], remove: boolean, opts: CommonOptions) {
  checkTagVm(vm, tags);
  return withClient(
    opts,
    async (c) => ({ vm: vmText(vm), tags: await tagVm(c, vm, remove ? { remove: tags } : { add: tags }) }),
    (r) => `${r.vm}: ${r.tags.length ? r.tags.join(', ') : 'no tags'}`,
  );
}

export function hostList(opts: CommonOptions) {
  return withClient(opts, listHosts, (hosts) =>
    hosts.length === 0
      ? 'no host registered (start `groupsnap worker` on each hypervisor host)'
      : hosts.map((h) => `${h.hostId}\tlast started ${h.lastSeenAt}`).join('\n'),
  );
}

export function hostForget(hostId: string, opts: CommonOptions) {
  checkNames([['host id', hostId]]);
  return withClient(
    opts,
    async (c) => {
      if (!(await forgetHost(c, hostId))) throw new BadInputError(`host ${hostId} is not registered`);
      return { forgotten: hostId };
    },
    () => `host ${hostId} removed from the registry`,
  );
}

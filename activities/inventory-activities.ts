import type { HostVm } from '../common/dr-types';
import { parseVmMetadata } from '../common/catalog';
import { DomainNotFoundError } from '../hypervisor/errors';
import type { DrContext } from './dr-context';

/** What a host has: its VMs, with their tags and groupsnap catalogs. */
export function createInventoryActivities({ hypervisor }: DrContext) {
  return {
    /** Every VM on this host with its state, tags and groupsnap catalog (snapshots, clones, in-place restores). */
    async listVms(): Promise<HostVm[]> {
      const domains = await hypervisor.listDomains();
      const vms = await Promise.all(
        domains.map(async (d): Promise<HostVm | undefined> => {
          let xml: string | undefined;
          try {
            xml = await hypervisor.getMetadata(d.name);
          } catch (err) {
            if (err instanceof DomainNotFoundError) return undefined; // undefined while listing
            throw err;
          }
          const meta = parseVmMetadata(xml);
          return { domain: d.name, uuid: d.uuid, state: d.state, ...meta };
        }),
      );
      return vms.filter((v): v is HostVm => v !== undefined).sort((a, b) => a.domain.localeCompare(b.domain));
    },
  };
}

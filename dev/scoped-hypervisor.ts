import { DomainNotFoundError } from '../hypervisor/errors';
import type { Hypervisor } from '../hypervisor/hypervisor';

/**
 * A view of one libvirtd that shows only the domains whose names start with `prefix`: two of these over the same
 * libvirtd stand in for two hypervisor hosts, each seeing only its own VMs (as separate machines would).
 */
export function scopedHypervisor(inner: Hypervisor, prefix: string): Hypervisor {
  const inScope = (name: string) => name.startsWith(prefix);
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'listDomains') {
        return async () =>
          (await (target as Hypervisor & { listDomains(): Promise<{ name: string }[]> }).listDomains()).filter((d) =>
            inScope(d.name),
          );
      }
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        // Domain-scoped calls take the domain name first; clones and definitions are created under new names.
        if (typeof args[0] === 'string' && prop !== 'defineDomain' && !String(prop).match(/Image|Overlay/)) {
          if (!inScope(args[0] as string) && !args[0].startsWith('/'))
            return Promise.reject(new DomainNotFoundError(args[0] as string, `no domain ${args[0]} on this host`));
        }
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

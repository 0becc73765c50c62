import type { Hypervisor } from '../../hypervisor/hypervisor';
import { HypervisorError } from '../../hypervisor/errors';

/**
 * Wraps a real hypervisor and makes the next snapshot of chosen VMs fail, as a libvirt error would: the rest of
 * the calls reach libvirt unchanged.
 */
export function failingSnapshots(inner: Hypervisor, failFor: Set<string>): Hypervisor {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'snapshotDisks') {
        return async (domain: string, ...rest: unknown[]) => {
          if (failFor.delete(domain)) throw new HypervisorError(`injected snapshot failure for ${domain}`, domain);
          return (target.snapshotDisks as (...a: unknown[]) => Promise<void>).call(target, domain, ...rest);
        };
      }
      const value = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

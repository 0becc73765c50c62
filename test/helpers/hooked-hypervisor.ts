import type { Hypervisor } from '../../hypervisor/hypervisor';

/**
 * Wraps a real hypervisor and runs `before(domain)` just before each disk snapshot, i.e. while the VM is already
 * paused by the group's freeze: a test uses it to crash or restart a piece of Temporal mid-freeze.
 */
export function beforeSnapshot(inner: Hypervisor, before: (domain: string) => Promise<void>): Hypervisor {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'snapshotDisks') {
        return async (domain: string, ...rest: unknown[]) => {
          await before(domain);
          return (target.snapshotDisks as (...a: unknown[]) => Promise<void>).call(target, domain, ...rest);
        };
      }
      const value = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

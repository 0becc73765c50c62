/**
 * `groupsnap/hypervisor`: the hypervisor port the host plugin takes, its libvirt adapter, the typed errors the
 * adapter translates libvirt's into, and the in-memory fake (failure and latency injection) for tests.
 *
 *   import { LibvirtHypervisor } from 'groupsnap/hypervisor';
 *   const hypervisor = await LibvirtHypervisor.open('qemu:///system');
 */
export type {
  DiskSpec,
  DomainDescription,
  DomainState,
  DomainSummary,
  Hypervisor,
  ImageInfo,
  OverlaySpec,
} from './hypervisor';
export { LibvirtHypervisor } from './libvirt-hypervisor';
export {
  FakeHypervisor,
  type FakeDomain,
  type FakeHypervisorOptions,
  type FakeImage,
  type FakeOp,
} from './fake-hypervisor';
export {
  DomainNotFoundError,
  GuestAgentUnavailableError,
  HypervisorConnectionError,
  HypervisorError,
  InvalidStateError,
} from './errors';
export { ImageNotFoundError } from './images';

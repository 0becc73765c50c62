/** The named VM does not exist on this host. */
export class DomainNotFoundError extends Error {
  override readonly name = 'DomainNotFoundError';
  constructor(
    readonly domain: string,
    detail?: string,
  ) {
    super(`VM ${JSON.stringify(domain)} not found${detail ? `: ${detail}` : ''}`);
  }
}

/** The VM is in a state the operation does not accept (e.g. resuming a running VM). */
export class InvalidStateError extends Error {
  override readonly name = 'InvalidStateError';
  constructor(
    readonly domain: string,
    message: string,
  ) {
    super(`VM ${JSON.stringify(domain)}: ${message}`);
  }
}

/** Quiescing was asked for, but the VM's QEMU guest agent is not configured or does not answer. */
export class GuestAgentUnavailableError extends Error {
  override readonly name = 'GuestAgentUnavailableError';
  constructor(
    readonly domain: string,
    detail: string,
  ) {
    super(`VM ${JSON.stringify(domain)}: guest agent unavailable: ${detail}`);
  }
}

/** The hypervisor connection could not be opened or was lost. */
export class HypervisorConnectionError extends Error {
  override readonly name = 'HypervisorConnectionError';
}

/** Any other hypervisor failure, with libvirt's message. */
export class HypervisorError extends Error {
  override readonly name = 'HypervisorError';
  constructor(
    message: string,
    readonly domain?: string,
    readonly code?: number,
  ) {
    super(message);
  }
}

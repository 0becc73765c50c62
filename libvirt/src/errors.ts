// Typed errors. Every rejection of this package goes through `translateError`, the one place where libvirt's
// error numbers become classes.
import { ErrorCodes, ErrorDomains } from './constants';

export interface LibvirtErrorDetails {
  /** libvirt's virErrorNumber (VIR_ERR_*); 0 when the error did not come from libvirt. */
  code: number;
  /** libvirt's virErrorDomain (VIR_FROM_*): the subsystem that raised the error. */
  errorDomain: number;
  /** Name of the VM the call was about, where known. */
  vmName?: string;
  /** The method that failed, e.g. 'suspend'. */
  operation: string;
}

/** Base class of every error raised by a libvirt call through this package. */
export class LibvirtError extends Error {
  readonly code: number;
  readonly errorDomain: number;
  readonly vmName?: string;
  readonly operation: string;

  constructor(message: string, details: LibvirtErrorDetails) {
    super(message);
    this.name = new.target.name;
    this.code = details.code;
    this.errorDomain = details.errorDomain;
    this.vmName = details.vmName;
    this.operation = details.operation;
  }
}

/** The domain does not exist (VIR_ERR_NO_DOMAIN): unknown name or UUID, or it was undefined meanwhile. */
export class DomainNotFoundError extends LibvirtError {}

/** The call does not apply to the domain's current state (VIR_ERR_OPERATION_INVALID), e.g. resuming a running VM. */
export class OperationInvalidError extends LibvirtError {}

/**
 * The hypervisor connection could not be opened, was lost (RPC/system errors, keepalive timeout), or was
 * closed by this process.
 */
export class HypervisorConnectionError extends LibvirtError {}

/** The guest agent is not configured for the domain, not connected, or not answering. */
export class GuestAgentUnavailableError extends LibvirtError {}

/** No snapshot with that name in libvirt's metadata (VIR_ERR_NO_DOMAIN_SNAPSHOT). */
export class SnapshotNotFoundError extends LibvirtError {}

/** The domain has no metadata element under that namespace (VIR_ERR_NO_DOMAIN_METADATA). */
export class MetadataNotFoundError extends LibvirtError {}

/** The driver or configuration does not support the call (OPERATION_UNSUPPORTED, CONFIG_UNSUPPORTED, NO_SUPPORT). */
export class UnsupportedError extends LibvirtError {}

/** A block job (commit, pivot) failed to start, failed while running, or did not end as expected. */
export class BlockJobError extends LibvirtError {}

interface NativeErrorShape {
  message: string;
  libvirtCode: number;
  libvirtDomain: number;
  kind?: 'closed' | 'freed';
}

// Not `instanceof Error`: the addon's errors come from the main realm, which differs from a vm context's (jest).
function isNativeError(err: unknown): err is NativeErrorShape {
  return typeof err === 'object' && err !== null && typeof (err as Partial<NativeErrorShape>).libvirtCode === 'number';
}

const AGENT_OPERATIONS = new Set(['fsFreeze', 'fsThaw']);
const BLOCK_JOB_OPERATIONS = new Set(['blockCommit', 'blockJobInfo', 'blockJobAbort', 'commit']);
const CONNECTION_CODES = new Set<number>([
  ErrorCodes.NO_CONNECT,
  ErrorCodes.INVALID_CONN,
  ErrorCodes.RPC,
  ErrorCodes.AUTH_FAILED,
  ErrorCodes.AUTH_CANCELLED,
  ErrorCodes.AUTH_UNAVAILABLE,
]);
const CONNECTION_DOMAINS = new Set<number>([ErrorDomains.RPC, ErrorDomains.REMOTE]);

/**
 * Turns a rejection from the addon into the matching typed error. Errors that did not come from libvirt
 * (argument TypeErrors) pass through unchanged.
 */
export function translateError(err: unknown, operation: string, vmName?: string): unknown {
  if (!isNativeError(err)) return err;
  const details: LibvirtErrorDetails = { code: err.libvirtCode, errorDomain: err.libvirtDomain, vmName, operation };
  const message = vmName !== undefined ? `${operation} '${vmName}': ${err.message}` : `${operation}: ${err.message}`;
  const code = err.libvirtCode;

  if (err.kind === 'closed' || operation === 'open') return new HypervisorConnectionError(message, details);
  if (err.kind === 'freed') return new LibvirtError(message, details);
  switch (code) {
    case ErrorCodes.NO_DOMAIN:
      return new DomainNotFoundError(message, details);
    case ErrorCodes.NO_DOMAIN_SNAPSHOT:
      return new SnapshotNotFoundError(message, details);
    case ErrorCodes.NO_DOMAIN_METADATA:
      return new MetadataNotFoundError(message, details);
    case ErrorCodes.AGENT_UNRESPONSIVE:
    case ErrorCodes.AGENT_UNSYNCED:
      return new GuestAgentUnavailableError(message, details);
  }
  // Transport failures are raised on the client side (RPC/REMOTE); errors forwarded from the daemon keep the
  // subsystem that raised them.
  if (CONNECTION_CODES.has(code) || CONNECTION_DOMAINS.has(err.libvirtDomain)) {
    return new HypervisorConnectionError(message, details);
  }
  // QEMU says "QEMU guest agent is not configured" with ARGUMENT_UNSUPPORTED.
  if (AGENT_OPERATIONS.has(operation) && code === ErrorCodes.ARGUMENT_UNSUPPORTED && /agent/i.test(err.message)) {
    return new GuestAgentUnavailableError(message, details);
  }
  if (code === ErrorCodes.OPERATION_INVALID) return new OperationInvalidError(message, details);
  if (BLOCK_JOB_OPERATIONS.has(operation)) return new BlockJobError(message, details);
  switch (code) {
    case ErrorCodes.OPERATION_UNSUPPORTED:
    case ErrorCodes.CONFIG_UNSUPPORTED:
    case ErrorCodes.NO_SUPPORT:
    case ErrorCodes.ARGUMENT_UNSUPPORTED:
      return new UnsupportedError(message, details);
  }
  return new LibvirtError(message, details);
}

/** Awaits a native call and rethrows its failure as a typed error. */
export async function mapped<T>(operation: string, vmName: string | undefined, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw translateError(err, operation, vmName);
  }
}

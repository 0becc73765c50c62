import { LIFECYCLE_DETAILS, LIFECYCLE_EVENTS, LifecycleEventName, DomainStateName, domainStateName } from './constants';
import { Domain } from './domain';
import { mapped } from './errors';
import { native, NativeConnection, NativeLifecycleEvent } from './native';

export interface OpenOptions {
  /** Open read-only (VIR_CONNECT_RO). @default false */
  readOnly?: boolean;
  /** Keepalive probe interval in seconds; 0 disables keepalive. @default 5 */
  keepAliveIntervalSec?: number;
  /** Unanswered probes before the connection is considered dead. @default 3 */
  keepAliveCount?: number;
}

export interface DomainSummary {
  name: string;
  uuid: string;
  /** Hypervisor id while running, -1 when shut off. */
  id: number;
  state: DomainStateName;
  reason: number;
}

export interface LifecycleEvent {
  name: string;
  uuid: string;
  event: LifecycleEventName;
  /** The detail's name for this event type (e.g. 'paused', 'unpaused', 'destroyed'), or its number as a string. */
  detail: string;
  eventCode: number;
  detailCode: number;
  /** Wall clock (ms since the epoch) when the event reached this process, taken on libvirt's event thread. */
  timestampMs: number;
  /** CLOCK_MONOTONIC (ns) at the same moment; comparable to process.hrtime.bigint(). */
  monotonicNs: bigint;
}

export type LifecycleListener = (event: LifecycleEvent) => void;

function toLifecycleEvent(e: NativeLifecycleEvent): LifecycleEvent {
  const known: (typeof LIFECYCLE_EVENTS)[number] | undefined = LIFECYCLE_EVENTS[e.event];
  const event: LifecycleEventName = known ?? 'unknown';
  const details = known === undefined ? undefined : LIFECYCLE_DETAILS[known];
  return {
    name: e.name,
    uuid: e.uuid,
    event,
    detail: details?.[e.detail] ?? String(e.detail),
    eventCode: e.event,
    detailCode: e.detail,
    timestampMs: e.timestampMs,
    monotonicNs: e.monotonicNs,
  };
}

/**
 * Opens a connection to a hypervisor, e.g. 'qemu:///system', 'qemu+ssh://root@host/system', 'test:///default'.
 * @throws HypervisorConnectionError if the connection cannot be opened
 */
export async function open(uri = 'qemu:///system', options: OpenOptions = {}): Promise<Connection> {
  const { readOnly = false, keepAliveIntervalSec = 5, keepAliveCount = 3 } = options;
  const conn = await mapped('open', undefined, () => native.open(uri, readOnly, keepAliveIntervalSec, keepAliveCount));
  return new Connection(conn);
}

/** A libvirt connection. Close it with `close()`; if dropped it is closed when garbage-collected. */
export class Connection {
  /** @internal */
  constructor(private readonly native: NativeConnection) {}

  /** The URI libvirt reports for this connection. */
  get uri(): string {
    return this.native.uri;
  }

  get closed(): boolean {
    return this.native.closed;
  }

  /**
   * Closes the connection and drops its event subscriptions. Calls through it, or through Domains obtained from
   * it, reject with HypervisorConnectionError afterwards.
   */
  close(): Promise<void> {
    return mapped('close', undefined, () => this.native.close());
  }

  /** False once the connection to the daemon is lost (e.g. keepalive timed out). */
  isAlive(): Promise<boolean> {
    return mapped('isAlive', undefined, () => this.native.isAlive());
  }

  hostname(): Promise<string> {
    return mapped('hostname', undefined, () => this.native.hostname());
  }

  /** Every domain with its state. @param flags virConnectListAllDomainsFlags (0 = all) */
  async listAllDomains(flags = 0): Promise<DomainSummary[]> {
    const rows = await mapped('listAllDomains', undefined, () => this.native.listAllDomains(flags));
    return rows.map((r) => ({ ...r, state: domainStateName(r.state) }));
  }

  /** @throws DomainNotFoundError */
  async lookupByName(name: string): Promise<Domain> {
    return new Domain(await mapped('lookupByName', name, () => this.native.lookupByName(name)));
  }

  /** @throws DomainNotFoundError */
  async lookupByUUID(uuid: string): Promise<Domain> {
    return new Domain(await mapped('lookupByUUID', undefined, () => this.native.lookupByUUID(uuid)));
  }

  /** Defines (or redefines) a persistent domain from its XML. */
  async defineXML(xml: string): Promise<Domain> {
    return new Domain(await mapped('defineXML', undefined, () => this.native.defineXML(xml)));
  }

  /**
   * Subscribes to domain lifecycle events (started, suspended, resumed, stopped, ...). Resolves once libvirt has
   * registered the callback, so events caused after that are delivered. The subscription does not keep the
   * process alive; it ends with the returned function or with `close()`. A listener that throws raises an
   * uncaught exception, as an EventEmitter listener would.
   */
  async onLifecycle(listener: LifecycleListener): Promise<() => Promise<void>> {
    const id = await mapped('onLifecycle', undefined, () =>
      this.native.registerLifecycle((e) => listener(toLifecycleEvent(e))),
    );
    let done = false;
    return async () => {
      if (done) return;
      done = true;
      await mapped('onLifecycle', undefined, () => this.native.deregisterEvent(id));
    };
  }
}

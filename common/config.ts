import { hostname } from 'node:os';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { NativeConnectionOptions } from '@temporalio/worker';

/** Defaults, each overridable by an environment variable and then by a CLI flag. */
export const defaults = {
  /** `GROUPSNAP_LIBVIRT_URI` */
  libvirtUri: (): string => process.env.GROUPSNAP_LIBVIRT_URI || 'qemu:///system',
  /** `GROUPSNAP_HOST_ID`; else the machine's hostname. */
  hostId: (): string => process.env.GROUPSNAP_HOST_ID || hostname().split('.')[0],
  /** `GROUPSNAP_STATE_DIR`: freeze journal, VM leases and the guard's pid file, per host id. */
  stateDir: (hostId: string): string => `${process.env.GROUPSNAP_STATE_DIR || '/var/lib/groupsnap'}/hosts/${hostId}`,
};

export interface TemporalOverrides {
  address?: string;
  namespace?: string;
}

/**
 * Temporal connection settings from the standard environment (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`,
 * `TEMPORAL_API_KEY`, `TEMPORAL_TLS_*`, `TEMPORAL_PROFILE` and the CLI's config file) through
 * `@temporalio/envconfig`, with flags taking precedence. Defaults to a local dev server on localhost:7233.
 */
export function temporalSettings(overrides: TemporalOverrides = {}): {
  connectionOptions: NativeConnectionOptions;
  namespace: string;
} {
  const config = loadClientConnectConfig();
  const connectionOptions = { ...config.connectionOptions };
  if (overrides.address) connectionOptions.address = overrides.address;
  connectionOptions.address ??= 'localhost:7233';
  return { connectionOptions, namespace: overrides.namespace ?? config.namespace ?? 'default' };
}

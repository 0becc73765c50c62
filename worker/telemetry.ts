import { isIP } from 'node:net';
import type { RuntimeOptions } from '@temporalio/worker';
import { METRICS, VM_FREEZE_MS_BUCKETS } from '../common/metrics';

/**
 * Runtime telemetry serving the Temporal SDK's metrics (`temporal_*`) and groupsnap's own (`groupsnap_*`, see
 * `common/metrics.ts`) at `http://<bindAddress>/metrics`. Must be given to `Runtime.install` before any worker or
 * connection is created.
 */
export function prometheusTelemetry(bindAddress: string): NonNullable<RuntimeOptions['telemetryOptions']> {
  return {
    metrics: {
      prometheus: { bindAddress, histogramBucketOverrides: { [METRICS.vmFreezeMs]: VM_FREEZE_MS_BUCKETS } },
    },
  };
}

/**
 * Checks a metrics bind address: an IP literal and a port (`0.0.0.0:9464`, `127.0.0.1:9464`, `[::]:9464`), as the
 * SDK's exporter binds a socket address, not a host name.
 */
export function checkMetricsAddress(address: string): string {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(address);
  const ok = m && (m[1] ? isIP(m[1]) === 6 : isIP(m[2]) === 4) && Number(m[3]) <= 65535;
  if (!ok)
    throw new Error(
      `metrics address must be <ip>:<port>, e.g. 0.0.0.0:9464 or [::]:9464; got ${JSON.stringify(address)}`,
    );
  return address;
}

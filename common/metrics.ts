/**
 * groupsnap's own metrics, exported beside the Temporal SDK's (`temporal_*`) by the worker's Prometheus exporter
 * (`groupsnap worker --metrics <host:port>`). Labels stay low-cardinality: host and group, never VM or snapshot.
 */
export const METRICS = {
  /** Histogram, ms: how long each VM stayed paused (pause issued to resume returned, on its host). `host`, `group`. */
  vmFreezeMs: 'groupsnap_vm_freeze_ms',
  /** Counter: group snapshot runs by outcome. `status` (completed, failed, cancelled, rejected), `group`. */
  groupSnapshots: 'groupsnap_group_snapshots_total',
  /** Counter: compensations run (VMs resumed and overlays undone after a failure or cancellation). `group`. */
  compensations: 'groupsnap_compensations_total',
  /**
   * Counter: VMs resumed by a freeze deadline instead of the workflow. `host`; `by`: `timer` (the worker's
   * in-process deadline timer), `guard` (the separate guard process), `recovery` (a restarted worker).
   */
  vmsResumedByGuard: 'groupsnap_vms_resumed_by_guard_total',
  /** Counter, bytes: sealed bytes exports uploaded to repositories. `group`. */
  exportBytesUploaded: 'groupsnap_export_bytes_uploaded_total',
  /** Counter, bytes: bytes exports read from disk images. `group`. */
  exportBytesRead: 'groupsnap_export_bytes_read_total',
  /** Histogram, ms: duration of completed exports. `group`. */
  exportDurationMs: 'groupsnap_export_duration_ms',
  /** Gauge: data chunks of the last exported point over chunks it uploaded new (dedup ratio). `group`. */
  exportDedupRatio: 'groupsnap_export_dedup_ratio',
} as const;

/** Bucket boundaries (ms) of {@link METRICS.vmFreezeMs}: from a fast local freeze up to the largest `--max-freeze`. */
export const VM_FREEZE_MS_BUCKETS = [
  5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 600_000,
];

/** Environment variable read by `groupsnap worker` when `--metrics` is not given. */
export const METRICS_ADDRESS_ENV = 'GROUPSNAP_METRICS_ADDRESS';

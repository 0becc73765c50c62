/** One measured sample of the freeze and cluster benchmarks (their raw results hold a list of them). */
export interface Sample {
  config: string;
  size?: number;
  /** Disk configuration of the disk-size comparison. */
  disk?: string;
  depth?: number;
  hosts?: number;
  /** Simulated hosts: how the group was released. */
  barrier?: 'update' | 'thaw' | 'sharded' | 'update-unarmed' | 'sharded-unarmed';
  /** Simulated hosts: the release order (`group-paused`, or the old `group-snapshotted`). */
  resumeWhen?: string;
  /** The new floor's snapshots in flight. */
  bound?: number;
  contender: string;
  round: number;
  vm: string;
  /** Pause issued to resume returned, measured on the host. */
  freezeMs: number;
  /** Suspended to resumed, from QEMU's lifecycle events as they reached the bench process. */
  qemuFreezeMs?: number;
  endToEndMs: number;
  /** Simulated hosts: the 1-minute load average when the run started. */
  load1?: number;
  /** Floor only: the group's pause-all, snapshot-all and resume-all wall times. */
  phasesMs?: { pause: number; snapshot: number; resume: number };
}

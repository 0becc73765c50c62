/**
 * The host's half of the `signal` barrier (groups over more hosts than updates may wait at once, in the
 * `group-paused` order): each host's freeze signals the workflow once its VMs are paused, then waits here; the
 * workflow's `releaseFreeze` activity on the same host queue decides here, `true` (release) or `false` (abort).
 *
 * A decision may arrive before its freeze waits (an abort sent while a host is still pausing): it is kept, and the
 * freeze finds it when it starts to wait. Decisions no freeze picked up are dropped after `keepMs`.
 */
export class ReleaseGates {
  private readonly gates = new Map<string, Gate>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly keepMs = 60 * 60_000,
  ) {}

  /** Settles with the workflow's decision for `snapshotId` on this host. */
  wait(snapshotId: string): Promise<boolean> {
    return this.gate(snapshotId).decision;
  }

  /** Hands the workflow's decision to the freeze of `snapshotId` (now or when it starts to wait). */
  decide(snapshotId: string, release: boolean): void {
    this.gate(snapshotId).decide(release);
  }

  /** Forgets `snapshotId` once its freeze has ended (a later decision for it is dropped after `keepMs`). */
  close(snapshotId: string): void {
    this.gates.delete(snapshotId);
  }

  /** How many snapshots have a gate (open or decided and not yet picked up). */
  get size(): number {
    return this.gates.size;
  }

  private gate(snapshotId: string): Gate {
    const now = this.now();
    for (const [id, g] of this.gates) if (now - g.createdAtMs > this.keepMs) this.gates.delete(id);
    let g = this.gates.get(snapshotId);
    if (!g) {
      let decide!: (release: boolean) => void;
      const decision = new Promise<boolean>((resolve) => (decide = resolve));
      g = { createdAtMs: now, decision, decide };
      this.gates.set(snapshotId, g);
    }
    return g;
  }
}

interface Gate {
  createdAtMs: number;
  decision: Promise<boolean>;
  /** The first decision counts (an abort sent by compensation after a release changes nothing). */
  decide: (release: boolean) => void;
}

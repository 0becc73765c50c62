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

  /** Settles with the workflow's decision for the freeze `key` (its run and snapshot) on this host. */
  wait(key: string): Promise<boolean> {
    return this.gate(key).decision;
  }

  /** Hands the workflow's decision to the freeze `key` (now or when it starts to wait). */
  decide(key: string, release: boolean): void {
    this.gate(key).decide(release);
  }

  /** Forgets `key` once its freeze has ended (a later decision for it is dropped after `keepMs`). */
  close(key: string): void {
    this.gates.delete(key);
  }

  /** How many freezes have a gate (open, or decided and not yet picked up). */
  get size(): number {
    return this.gates.size;
  }

  private gate(key: string): Gate {
    const now = this.now();
    for (const [k, g] of this.gates) if (now - g.createdAtMs > this.keepMs) this.gates.delete(k);
    let g = this.gates.get(key);
    if (!g) {
      let decide!: (release: boolean) => void;
      const decision = new Promise<boolean>((resolve) => (decide = resolve));
      g = { createdAtMs: now, decision, decide };
      this.gates.set(key, g);
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

import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertSafeName } from '../common/validation';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { parseVmMetadata, renderVmMetadata, type VmMetadata } from '../common/catalog';

/**
 * groupsnap's metadata on the VMs of one host (catalog, tags, clone and restore records), read and changed through
 * one queue per VM: every read-modify-write of a VM's metadata on this host goes through {@link update}, so catalog
 * writes, tags and records never lose each other's update.
 *
 * It also keeps the host's list of snapshot runs undone by compensation (`<stateDir>/undone/<snapshotId>__<run>`):
 * once a run's snapshot is undone, no catalog write of that run can record it again, even one already on its way.
 */
export class VmMetadataStore {
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly undoneDir: string;

  constructor(
    private readonly hypervisor: Hypervisor,
    stateDir: string,
  ) {
    this.undoneDir = join(stateDir, 'undone');
    mkdirSync(this.undoneDir, { recursive: true });
  }

  /** Runs `fn` after every earlier queued change of `domain`'s metadata on this host, and before any later one. */
  serialized<T>(domain: string, fn: () => Promise<T>): Promise<T> {
    const run = (this.queues.get(domain) ?? Promise.resolve()).then(() => fn());
    const tail = run.catch(() => undefined);
    this.queues.set(domain, tail);
    void tail.then(() => {
      if (this.queues.get(domain) === tail) this.queues.delete(domain);
    });
    return run;
  }

  async read(domain: string): Promise<VmMetadata> {
    return parseVmMetadata(await this.hypervisor.getMetadata(domain));
  }

  /** Applies `fn` to the VM's current metadata and stores it when it changed. Returns the metadata after. */
  update(domain: string, fn: (meta: VmMetadata) => void): Promise<VmMetadata> {
    return this.serialized(domain, async () => {
      const meta = await this.read(domain);
      const before = renderVmMetadata(meta);
      fn(meta);
      const after = renderVmMetadata(meta);
      if (after !== before) await this.hypervisor.setMetadata(domain, after);
      return meta;
    });
  }

  private undoneFile(snapshotId: string, run: string): string {
    assertSafeName('snapshot id', snapshotId);
    assertSafeName('run id', run);
    return join(this.undoneDir, `${snapshotId}__${run}`);
  }

  /** Marks snapshot `snapshotId` of run `run` as undone on this host: {@link isUndone} is true from now on. */
  markUndone(snapshotId: string, run: string): void {
    writeFileSync(this.undoneFile(snapshotId, run), `${new Date().toISOString()}\n`);
  }

  isUndone(snapshotId: string, run: string): boolean {
    return existsSync(this.undoneFile(snapshotId, run));
  }

  /** Forgets an undone mark. */
  clearUndone(snapshotId: string, run: string): void {
    rmSync(this.undoneFile(snapshotId, run), { force: true });
  }
}

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeHypervisor, type FakeHypervisorOptions } from '../../hypervisor/fake-hypervisor';
import type { DomainState } from '../../hypervisor/hypervisor';

/** A fake host whose VMs' images live in a temp dir (overlays are created there like libvirt would). */
export class FakeHost {
  readonly hypervisor: FakeHypervisor;
  readonly dir: string;

  constructor(
    readonly hostId: string,
    options: FakeHypervisorOptions = {},
  ) {
    this.hypervisor = new FakeHypervisor(options);
    this.dir = mkdtempSync(join(tmpdir(), `groupsnap-fake-${hostId}-`));
  }

  addVm(name: string, state: DomainState = 'running', disks = 2): void {
    this.hypervisor.addDomain({
      name,
      state,
      disks: Array.from({ length: disks }, (_, i) => ({
        target: `vd${String.fromCharCode(97 + i)}`,
        format: 'qcow2',
        type: 'file',
        device: 'disk',
        chain: [join(this.dir, `${name}-vd${String.fromCharCode(97 + i)}.qcow2`)],
      })),
    });
  }

  chain(vm: string, target = 'vda'): string[] {
    return [...this.hypervisor.domains.get(vm)!.disks.find((d) => d.target === target)!.chain];
  }

  state(vm: string): DomainState {
    return this.hypervisor.domains.get(vm)!.state;
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

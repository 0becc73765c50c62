import { cpus, hostname, loadavg, totalmem } from 'node:os';
import * as libvirt from '@groupsnap/libvirt';
import { virtType } from '../dev/vms';

/** The machine a benchmark ran on, recorded with its raw results and printed in its report. */
export interface MachineDescription {
  hostname: string;
  cores: number;
  cpu: string;
  memoryGiB: number;
  /** 1, 5 and 15 minute load averages when the run started (absent in results recorded before it was added). */
  loadAvgAtStart?: number[];
  /**
   * `kvm`, or `qemu` (TCG) when KVM does not work here: what dev/vms.ts fleets run under (`guest` says what the
   * workload guests run under).
   */
  virtType: string;
  /** libvirt's version number (major * 1e6 + minor * 1e3 + micro). */
  libvirt: number;
  node: string;
  /** Start of the run, ISO 8601. */
  date: string;
  /** The guests the run booted, when it boots any. */
  guest?: string;
}

/** This machine, now; logged on stderr as `machine: {...}` for the run's log. */
export function describeMachine(guest?: string): MachineDescription {
  const machine: MachineDescription = {
    hostname: hostname(),
    cores: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    loadAvgAtStart: loadavg().map((x) => Number(x.toFixed(2))),
    virtType: virtType(),
    libvirt: libvirt.libvirtVersion(),
    node: process.version,
    date: new Date().toISOString(),
    ...(guest ? { guest } : {}),
  };
  console.error(`machine: ${JSON.stringify(machine)}`);
  return machine;
}

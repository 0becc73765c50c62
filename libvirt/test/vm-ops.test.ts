// Real libvirtd + QEMU: firmware-only VMs (no OS), two qcow2 disks each.
import { pbkdf2 } from 'node:crypto';

import {
  Connection,
  DomainXMLFlags,
  GuestAgentUnavailableError,
  LifecycleEvent,
  MetadataNotFoundError,
  OperationInvalidError,
  poolStats,
  resetPoolPeak,
} from '../src';
import { TestVm, VmFleet } from './helpers/vms';

const fleet = new VmFleet();
let conn: Connection;
let vms: TestVm[];

beforeAll(async () => {
  conn = await fleet.connect();
  vms = await fleet.startMany(16);
});

afterAll(() => fleet.cleanup());

async function states(list: TestVm[]): Promise<string[]> {
  return Promise.all(list.map(async (vm) => (await vm.domain.state()).state));
}

describe('suspend and resume', () => {
  it('pauses 8 VMs in parallel, then resumes them all', async () => {
    const eight = vms.slice(0, 8);
    expect(await states(eight)).toEqual(Array(8).fill('running'));
    await Promise.all(eight.map((vm) => vm.domain.suspend()));
    expect(await states(eight)).toEqual(Array(8).fill('paused'));
    await Promise.all(eight.map((vm) => vm.domain.resume()));
    expect(await states(eight)).toEqual(Array(8).fill('running'));
  });

  it('runs 16 suspends at once on its own pool, not behind a saturated libuv threadpool', async () => {
    // Occupy libuv's 4 threads with CPU work that outlasts the suspends by far.
    let libuvDone = 0;
    const libuvBusy = Array.from(
      { length: 4 },
      () =>
        new Promise<void>((resolve, reject) =>
          pbkdf2('x', 'y', 400_000, 64, 'sha512', (err) => {
            libuvDone++;
            if (err) reject(err);
            else resolve();
          }),
        ),
    );
    resetPoolPeak();
    await Promise.all(vms.map((vm) => vm.domain.suspend()));
    const doneWhenSuspended = libuvDone;
    const peak = poolStats().peakBusy;
    await Promise.all(vms.map((vm) => vm.domain.resume()));
    await Promise.all(libuvBusy);

    expect(doneWhenSuspended).toBe(0);
    expect(peak).toBeGreaterThan(4);
    expect(await states(vms)).toEqual(Array(16).fill('running'));
  });

  it('rejects resuming a running VM with OperationInvalidError naming the VM', async () => {
    const vm = vms[0];
    const err = await vm.domain.resume().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OperationInvalidError);
    expect(err).toMatchObject({ code: 55, vmName: vm.name, operation: 'resume' });
  });
});

describe('lifecycle events', () => {
  it('delivers suspended and resumed events with arrival timestamps', async () => {
    const vm = vms[1];
    const events: LifecycleEvent[] = [];
    const received: Array<{ wallMs: number; hr: bigint }> = [];
    let wake: () => void = () => undefined;
    const unsubscribe = await conn.onLifecycle((e) => {
      if (e.name !== vm.name) return;
      events.push(e);
      received.push({ wallMs: Date.now(), hr: process.hrtime.bigint() });
      wake();
    });
    try {
      const wallBefore = Date.now();
      const hrBefore = process.hrtime.bigint();
      await vm.domain.suspend();
      await vm.domain.resume();
      const deadline = Date.now() + 15000;
      while (events.length < 2 && Date.now() < deadline) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 200);
        });
      }
      expect(events.map((e) => [e.event, e.detail])).toEqual([
        ['suspended', 'paused'],
        ['resumed', 'unpaused'],
      ]);
      expect(events[0].uuid).toBe(vm.domain.uuid);
      events.forEach((e, i) => {
        expect(e.timestampMs).toBeGreaterThanOrEqual(wallBefore - 1);
        expect(e.timestampMs).toBeLessThanOrEqual(received[i].wallMs + 1);
        expect(e.monotonicNs).toBeGreaterThanOrEqual(hrBefore);
        expect(e.monotonicNs).toBeLessThanOrEqual(received[i].hr);
      });
      expect(events[1].monotonicNs).toBeGreaterThan(events[0].monotonicNs);
    } finally {
      await unsubscribe();
    }
    // No delivery after unsubscribing.
    const count = events.length;
    await vm.domain.suspend();
    await vm.domain.resume();
    await new Promise((r) => setTimeout(r, 300));
    expect(events.length).toBe(count);
  });
});

describe('metadata', () => {
  const NS = 'https://groupsnap.dev/group';

  it('round-trips metadata on a running VM, live and in its saved config', async () => {
    const { domain } = vms[2];
    await domain.setMetadata(NS, 'gs', '<group name="db" member="1"/>');
    expect(await domain.getMetadata(NS)).toBe('<group name="db" member="1"/>');
    expect(await domain.xml(DomainXMLFlags.INACTIVE)).toContain('<gs:group xmlns:gs="https://groupsnap.dev/group"');
    await domain.removeMetadata(NS);
    await expect(domain.getMetadata(NS)).rejects.toBeInstanceOf(MetadataNotFoundError);
  });

  it('writes metadata of a shut-off VM to its config', async () => {
    const { domain } = await fleet.define(1);
    await domain.setMetadata(NS, 'gs', '<group name="web"/>');
    expect(await domain.getMetadata(NS)).toBe('<group name="web"/>');
  });
});

describe('guest agent', () => {
  it('rejects fsFreeze with GuestAgentUnavailableError when the VM has no agent channel', async () => {
    const err = await vms[3].domain.fsFreeze().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentUnavailableError);
    expect(err).toMatchObject({ vmName: vms[3].name });
  });
});

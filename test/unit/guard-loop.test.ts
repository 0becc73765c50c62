import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeHypervisor } from '../../hypervisor/fake-hypervisor';
import { runGuardReconnecting, type GuardConnection } from '../../worker/guard';

/** The guard process's loop over its libvirt connection: it ends on an abort, and reconnects when the link is lost. */
describe('the guard loop', () => {
  let stateDir: string;
  beforeEach(() => {
    stateDir = mkdtempSync(join(tmpdir(), 'gs-guard-loop-'));
  });
  afterEach(() => rmSync(stateDir, { recursive: true, force: true }));

  const connection = (alive: () => boolean, onClose: () => void): GuardConnection =>
    Object.assign(new FakeHypervisor() as unknown as GuardConnection, {
      connection: { isAlive: async () => alive() },
      close: async () => onClose(),
    });
  const within = (p: Promise<void>, ms: number) =>
    Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

  test('a SIGTERM (abort) that comes while libvirt is being opened still ends it', async () => {
    const controller = new AbortController();
    let closed = 0;
    const done = runGuardReconnecting({
      open: async () => {
        controller.abort();
        return connection(
          () => true,
          () => closed++,
        );
      },
      stateDir,
      signal: controller.signal,
      log: () => {},
    });
    expect(await within(done, 3000)).toBe(true);
    expect(closed).toBe(1);
  });

  test('a lost connection is closed and a new one opened; an abort then ends it', async () => {
    const controller = new AbortController();
    let opened = 0;
    let closed = 0;
    const done = runGuardReconnecting({
      open: async () => {
        opened++;
        // The first connection dies at once; the second stays.
        const first = opened === 1;
        return connection(
          () => !first,
          () => closed++,
        );
      },
      stateDir,
      signal: controller.signal,
      log: () => {},
      aliveEveryMs: 20,
    });
    const until = Date.now() + 3000;
    while (opened < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    expect(opened).toBe(2);
    controller.abort();
    expect(await within(done, 3000)).toBe(true);
    expect(closed).toBe(2);
  });
});

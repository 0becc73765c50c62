import { execFile } from 'node:child_process';
import { chownSync, mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FreezeJournal } from '../activities/freeze-journal';
import { DeadlineTimers } from '../activities/resume';
import { ensureHostUser, type UnixUser } from '../dev/hypervisor-hosts';
import { VmFleet } from '../dev/vms';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { uniqueId } from './helpers/temporal';

const run = promisify(execFile);

/** A libvirt daemon of our own to restart: a dedicated Unix user's session daemon (the system one is shared). */
const USER = 'gsrestart';

async function daemonPids(user: UnixUser): Promise<number[]> {
  const { stdout } = await run('pgrep', ['-u', String(user.uid), '-x', 'libvirtd']).catch(() => ({ stdout: '' }));
  return stdout.split('\n').filter(Boolean).map(Number);
}

/**
 * Issue 13 item 4 on a real libvirtd: the worker's deadline timer keeps trying across a restart of the daemon (its
 * QEMU processes live on), and the libvirt adapter opens a new connection instead of failing for ever.
 */
describe('a libvirtd restart in the middle of a freeze', () => {
  let user: UnixUser;
  let fleet: VmFleet;
  let uri: string;
  let stateDir: string;

  beforeAll(async () => {
    user = await ensureHostUser(USER);
    uri = `qemu+unix:///session?socket=${user.runtimeDir}/libvirt/libvirt-sock`;
    const dir = join(user.home, '.local/share/libvirt/images', uniqueId('gsrs'));
    mkdirSync(dir, { recursive: true });
    chownSync(dir, user.uid, user.gid);
    fleet = await VmFleet.create({
      prefix: uniqueId('gsrs'),
      count: 1,
      disksPerVm: 1,
      uri,
      dir,
      owner: user,
      virtType: 'qemu',
    });
    stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-restart-'));
  }, 120_000);

  afterAll(async () => {
    await ensureHostUser(USER).catch(() => undefined);
    // The fleet's own connection died with the daemon: remove its VM over a new one.
    for (const name of fleet?.names ?? []) {
      await run('virsh', ['-c', uri, 'destroy', name]).catch(() => undefined);
      await run('virsh', ['-c', uri, 'undefine', name]).catch(() => undefined);
    }
    await fleet?.conn.close().catch(() => undefined);
    if (fleet) await rm(fleet.dir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  it('the deadline timer resumes the VM once the daemon is back, over a new connection', async () => {
    const [vm] = fleet.names;
    const hv = await LibvirtHypervisor.open(uri);
    const journal = new FreezeJournal(stateDir);
    const fired: string[] = [];
    const timers = new DeadlineTimers(hv, journal, (r, err) => fired.push(r ? r.state : `error: ${String(err)}`), {
      initial: 200,
      max: 500,
    });
    try {
      await hv.suspend(vm);
      const now = Date.now();
      const rec = { snapshotId: 's-rs', domain: vm, state: 'paused' as const, pausedAtMs: now, deadlineMs: now + 1500 };
      journal.write(rec);
      timers.arm(rec);
      // The daemon goes away before the deadline (QEMU keeps the VM paused meanwhile).
      for (const pid of await daemonPids(user)) process.kill(pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 2500));
      expect(fired.some((f) => f.startsWith('error'))).toBe(true);
      expect(journal.read('s-rs', vm)!.state).toBe('paused');
      // Back: the next retry reconnects and resumes.
      await ensureHostUser(USER);
      const until = Date.now() + 20_000;
      while (journal.read('s-rs', vm)!.state === 'paused' && Date.now() < until)
        await new Promise((r) => setTimeout(r, 100));
      expect(journal.read('s-rs', vm)!.state).toBe('resumed-by-timer');
      expect(await hv.state(vm)).toBe('running');
    } finally {
      timers.disarmAll();
      await hv.close();
    }
  }, 120_000);
});

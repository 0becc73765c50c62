import { mkdtemp, rm } from 'node:fs/promises';
import { chmodSync, chownSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { groupSnapshotResult, snapshotGroup, startGroupSnapshot } from '../client';
import { FreezeJournal } from '../activities/freeze-journal';
import { HOST_PACKAGE_ROOT } from '../dev/host-package';
import { HypervisorHosts, type HostWorker } from '../dev/hypervisor-hosts';
import { startDevServer, type DevServer } from '../dev/temporal-dev-server';
import { REPO_ROOT } from '../dev/tools';
import { VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { runningGuardPid } from '../worker/guard';
import { FakeHost } from './helpers/fake-hosts';
import { uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * The cross-host behaviours on two independent hypervisors: host A is the machine's libvirtd, host B a session
 * libvirtd of its own Unix user (own QEMU processes, definitions and images). Each host's worker and guard run as
 * processes in a network namespace of their own and reach Temporal over a veth pair; the workflows run in this
 * process, in the root namespace.
 */
describe('two independent hypervisors, each host in its own network namespace', () => {
  let fixture: HypervisorHosts;
  let server: DevServer;
  let hostAddress: string;
  let connection: Connection;
  let client: Client;
  let fleetA: VmFleet;
  let fleetB: VmFleet;
  let workerA: HostWorker;
  let workerB: HostWorker;
  let slow: FakeHost;
  let inProcess: RunningHosts;
  const hostA = uniqueId('hva');
  const hostB = uniqueId('hvb');

  const fleetOf = (vm: string) => (fleetA.names.includes(vm) ? fleetA : fleetB);
  const state = async (vm: string) => (await (await fleetOf(vm).conn.lookupByName(vm)).state()).state;
  const sources = async (vm: string) =>
    Object.fromEntries(
      parseDomainXml(await (await fleetOf(vm).conn.lookupByName(vm)).xml()).disks.map((d) => [d.target, d.source]),
    );
  const waitPaused = async (names: string[]) => {
    const deadline = Date.now() + 60_000;
    while (!(await Promise.all(names.map(state))).every((s) => s === 'paused')) {
      if (Date.now() > deadline) throw new Error(`${names.join(', ')} never paused`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  /** Polls until every VM runs again; returns when each was first seen running (epoch ms). */
  const watchResumed = async (names: string[], timeoutMs: number) => {
    const seen: Record<string, number> = {};
    const deadline = Date.now() + timeoutMs;
    while (Object.keys(seen).length < names.length && Date.now() < deadline) {
      for (const n of names) if (!seen[n] && (await state(n)) === 'running') seen[n] = Date.now();
      await new Promise((r) => setTimeout(r, 20));
    }
    return seen;
  };

  beforeAll(async () => {
    fixture = await HypervisorHosts.create({ ids: [hostA, hostB] });
    server = await startDevServer();
    // The hosts reach Temporal over their veth pairs; this process (the workflows, the client) over loopback.
    hostAddress = await fixture.expose(server.address);
    connection = await Connection.connect({ address: server.address });
    client = new Client({ connection });
    const b = fixture.host(hostB);
    [fleetA, fleetB] = await Promise.all([
      VmFleet.create({ prefix: 'gs-2hv-a', count: 4, dir: fixture.host(hostA).imagesDir }),
      VmFleet.create({
        prefix: 'gs-2hv-b',
        count: 4,
        uri: b.uri,
        dir: b.imagesDir,
        virtType: b.virtType,
        owner: b.user,
      }),
    ]);
    workerA = await fixture.worker(hostA, hostAddress);
    workerB = await fixture.worker(hostB, hostAddress);
    await Promise.all([workerA.start(client), workerB.start(client)]);
    // The workflows, and a fake third host that holds the cross-host barrier while a real host is hurt.
    slow = new FakeHost(uniqueId('slow'), { latencyMs: { suspend: 4000 } });
    inProcess = await startHosts([slow], { address: server.address });
  });

  afterAll(async () => {
    await inProcess?.stop();
    slow?.cleanup();
    await workerA?.stop();
    await workerB?.stop();
    await fleetA?.destroy();
    await fleetB?.destroy();
    await connection?.close();
    await server?.stop();
    await fixture?.destroy();
  });

  it('the hosts are independent: each libvirt knows only its own VMs, and host B runs QEMU as its own user', async () => {
    const namesA = (await fleetA.conn.listAllDomains()).map((d) => d.name);
    const namesB = (await fleetB.conn.listAllDomains()).map((d) => d.name);
    for (const n of fleetB.names) expect(namesA).not.toContain(n);
    for (const n of fleetA.names) expect(namesB).not.toContain(n);
    expect(namesB).toEqual(expect.arrayContaining(fleetB.names));
    // The workers run in their namespaces, host B's as host B's user.
    for (const w of [workerA, workerB]) {
      const ns = await import('node:fs').then((fs) => fs.readlinkSync(`/proc/${w.pid}/ns/net`));
      expect(ns).not.toBe((await import('node:fs')).readlinkSync('/proc/self/ns/net'));
    }
    const { statSync } = await import('node:fs');
    expect(statSync(`/proc/${workerB.pid}`).uid).toBe(fixture.host(hostB).user!.uid);
  });

  it('host B runs the packed package installed where its user can read it, nothing of the checkout (issue 25)', () => {
    const args = readFileSync(`/proc/${workerB.pid}/cmdline`, 'utf8').split('\0');
    expect(args[0]).toMatch(new RegExp(`^${HOST_PACKAGE_ROOT}/node-v[\\d.]+/bin/node$`));
    expect(args[1]).toMatch(new RegExp(`^${HOST_PACKAGE_ROOT}/deps-\\w+/node_modules/groupsnap/dist/cli/main\\.js$`));
    expect(args.filter((a) => a.startsWith(REPO_ROOT))).toEqual([]);
    // Its guard too, started by the installed command.
    const guard = readFileSync(`/proc/${runningGuardPid(workerB.stateDir)}/cmdline`, 'utf8').split('\0');
    expect(guard[1]).toBe(args[1]);
  });

  it('scripts/setup-hypervisor-host.sh run again changes nothing and finds the daemon running', async () => {
    const { execFile } = await import('node:child_process');
    const { stdout, stderr } = await promisify(execFile)('bash', [join(REPO_ROOT, 'scripts/setup-hypervisor-host.sh')]);
    expect(stdout.trim()).toBe(fixture.host(hostB).user!.runtimeDir);
    expect(stderr).not.toMatch(/created|starting/);
    expect(stderr).toMatch(/already running/);
  });

  it('snapshots a group spanning both hypervisors: the barrier releases, every VM running on its new overlays', async () => {
    const [a1, a2] = fleetA.names;
    const [b1, b2] = fleetB.names;
    const result = await snapshotGroup(client, {
      group: 'twohv',
      vms: [
        { domain: a1, host: hostA },
        { domain: a2, host: hostA },
        { domain: b1, host: hostB },
        { domain: b2, host: hostB },
      ],
    });
    expect(result.status).toBe('completed');
    for (const vm of result.vms) {
      expect(vm).toMatchObject({ outcome: 'snapshotted', state: 'running' });
      expect(await state(vm.domain)).toBe('running');
      const now = await sources(vm.domain);
      for (const d of vm.disks) {
        expect(now[d.target]).toBe(d.overlay);
        expect(existsSync(d.overlay)).toBe(true);
      }
    }
    // The armed barrier (issue 29): each host reported itself ready, then paused, through the workflow's Updates.
    const events = (await client.workflow.getHandle(result.workflowId).fetchHistory()).events ?? [];
    const updates = events.flatMap((e) => {
      const r = e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input;
      return r ? [r.name] : [];
    });
    expect(updates.sort()).toEqual(['hostArmed', 'hostArmed', 'hostFrozen', 'hostFrozen']);
    // Host B's overlays were made by its own daemon, as its user, in its images dir.
    const { statSync } = await import('node:fs');
    for (const d of result.vms.find((v) => v.domain === b1)!.disks)
      expect(statSync(d.overlay).uid).toBe(fixture.host(hostB).user!.uid);
  });

  it("compensates on both hosts when one host's snapshot really fails (host B cannot write beside a disk)", async () => {
    const [, , a3] = fleetA.names;
    const [, , b3] = fleetB.names;
    // b3's second disk moves into a directory host B's user may read but not write: its overlay cannot be created.
    const b = fixture.host(hostB);
    const locked = await mkdtemp(join(b.imagesDir, 'locked-'));
    chmodSync(locked, 0o755); // owned by root
    const dom = await fleetB.conn.lookupByName(b3);
    const oldVdb = fleetB.vms.find((v) => v.name === b3)!.disks.vdb;
    const newVdb = join(locked, 'vdb.qcow2');
    await dom.destroy();
    const { renameSync } = await import('node:fs');
    renameSync(oldVdb, newVdb);
    chownSync(newVdb, b.user!.uid, b.user!.gid);
    await fleetB.conn.defineXML((await dom.xml()).replace(oldVdb, newVdb));
    await dom.create();
    const before = { [a3]: await sources(a3), [b3]: await sources(b3) };
    try {
      const vms = [
        { domain: a3, host: hostA },
        { domain: b3, host: hostB },
      ];
      // The old order: libvirt on host B fails to create the overlay inside the freeze, after host A snapshotted.
      const result = await snapshotGroup(client, { vms, resumeWhen: 'group-snapshotted' });
      expect(result.status).toBe('failed');
      expect(result.vms.find((v) => v.domain === b3)!.error).toMatch(/permission|denied|could not open/i);
      expect(result.vms.find((v) => v.domain === a3)!.outcome).toBe('rolled-back');
      // The default order makes the overlays before anyone pauses: host B cannot, so nothing is paused at all and
      // host A's prepared overlays are removed again.
      const early = await snapshotGroup(client, { vms });
      expect(early.status).toBe('failed');
      expect(early.error).toMatch(new RegExp(`${b3} disk vdb: cannot make overlay .*(permission|denied)`, 'i'));
      expect(early.vms.every((v) => v.outcome === 'not-snapshotted' && v.pausedAtMs === undefined)).toBe(true);
      for (const vm of [a3, b3]) {
        expect(await state(vm)).toBe('running');
        expect(await sources(vm)).toEqual(before[vm]);
      }
      for (const r of [result, early])
        for (const v of r.vms) for (const d of v.disks) expect(existsSync(d.overlay)).toBe(false);
      expect(
        readdirSync(dirname(fleetA.vms.find((v) => v.name === a3)!.disks.vda)).filter((f) =>
          f.includes(early.snapshotId),
        ),
      ).toEqual([]);
    } finally {
      await dom.destroy().catch(() => undefined);
      renameSync(newVdb, oldVdb);
      await fleetB.conn.defineXML((await dom.xml()).replace(newVdb, oldVdb));
      await dom.create();
      await rm(locked, { recursive: true, force: true });
    }
  });

  it("resumes host B's VMs by the deadline when its worker is SIGKILLed mid-freeze; compensates once it is back", async () => {
    const [, , , b4] = fleetB.names;
    const [, , , a4] = fleetA.names;
    const before = { [a4]: await sources(a4), [b4]: await sources(b4) };
    const fakeVm = uniqueId('f');
    slow.addVm(fakeVm);
    const maxFreezeMs = 2000;
    const handle = await startGroupSnapshot(client, {
      maxFreezeMs,
      vms: [
        { domain: a4, host: hostA },
        { domain: b4, host: hostB },
        { domain: fakeVm, host: slow.hostId },
      ],
    });
    await waitPaused([b4]);
    await workerB.kill('SIGKILL');
    const resumedAt = await watchResumed([b4], maxFreezeMs + 10_000);
    const rec = new FreezeJournal(workerB.stateDir)
      .list()
      .find((r) => r.domain === b4 && r.snapshotId === handle.workflowId.split('/')[2])!;
    expect(rec.state).toBe('resumed-by-guard');
    expect(resumedAt[b4] - rec.pausedAtMs).toBeLessThanOrEqual(maxFreezeMs + 1500);
    await workerB.start(client);
    const result = await groupSnapshotResult(handle);
    expect(result.status).toBe('failed');
    for (const vm of [a4, b4]) {
      expect(await state(vm)).toBe('running');
      expect(await sources(vm)).toEqual(before[vm]);
    }
    expect(result.vms.find((v) => v.domain === b4)).toMatchObject({ resumedByGuard: true, pausedByUs: true });
    expect(slow.state(fakeVm)).toBe('running');
  });

  it('a host cut off from Temporal mid-freeze leaves no VM paused; the saga compensates once it is reachable again', async () => {
    const [a1] = fleetA.names;
    const [b1, b2] = fleetB.names;
    const before = { [a1]: await sources(a1), [b1]: await sources(b1), [b2]: await sources(b2) };
    const fakeVm = uniqueId('f');
    slow.addVm(fakeVm);
    const maxFreezeMs = 2000;
    const handle = await startGroupSnapshot(client, {
      maxFreezeMs,
      vms: [
        { domain: a1, host: hostA },
        { domain: b1, host: hostB },
        { domain: b2, host: hostB },
        { domain: fakeVm, host: slow.hostId },
      ],
    });
    await waitPaused([b1, b2]);
    await fixture.cut(hostB);
    try {
      expect(await fixture.reachable(hostB, hostAddress)).toBe(false);
      expect(await fixture.reachable(hostA, hostAddress)).toBe(true);
      const resumedAt = await watchResumed([b1, b2], maxFreezeMs + 10_000);
      for (const vm of [b1, b2]) {
        const rec = new FreezeJournal(workerB.stateDir)
          .list()
          .find((r) => r.domain === vm && r.snapshotId === handle.workflowId.split('/')[2])!;
        expect(resumedAt[vm]).toBeDefined();
        expect(resumedAt[vm] - rec.pausedAtMs).toBeLessThanOrEqual(maxFreezeMs + 1500);
      }
      expect(await state(a1)).toBe('running');
    } finally {
      await fixture.reconnect(hostB, hostAddress);
    }
    const result = await groupSnapshotResult(handle);
    expect(result.status).toBe('failed');
    for (const vm of [a1, b1, b2]) {
      expect(await state(vm)).toBe('running');
      expect(await sources(vm)).toEqual(before[vm]);
    }
  });
});

import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import type { Client } from '@temporalio/client';
import { snapshotGroup } from '../client';
import { exportGroupSnapshot } from '../client/backup';
import { startRestoreFromRepo } from '../client/repo-restore';
import type { RepoRestoreResult } from '../common/repo-restore';
import type { HypervisorHosts } from '../dev/hypervisor-hosts';
import { VmFleet } from '../dev/vms';
import { diskNbdBacking } from '../hypervisor/domain-xml';
import { startDrFixture, type DrFixture } from './helpers/dr-fixture';
import { contentSha256 } from './helpers/repo-point';

const run = promisify(execFile);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Instant restore from the repository onto another hypervisor, on real VMs (libvirt + QEMU of host B, the serving
 * process on unix sockets of host B): the VMs run while their disks still read from the repository; a write made
 * during hydration stays; after hydration no disk names its export (live or persistent), serving stopped, and every
 * disk is bit-identical to the point (apart from what was written). The serving process killed mid-hydration is
 * restarted and the VMs' disks re-opened (managed save and restore), and hydration still completes. With the S3
 * server (versitygw) stopped mid-hydration the serving process holds the reads (the VMs keep running, nothing fails)
 * and hydration completes once it is back.
 */
describe('instant restore from the repository on another hypervisor (real VMs)', () => {
  let fx: DrFixture;
  let fixture: HypervisorHosts;
  let client: Client;
  let connB: libvirt.Connection;
  let hostA: string;
  let hostB: string;
  const group = 'inst';
  let snapshotId: string;
  const sums: Record<string, string> = {};
  let tmp: string;

  beforeAll(async () => {
    fx = await startDrFixture({ s3: true });
    ({ hosts: fixture, client, hostA, hostB } = fx);
    connB = await libvirt.open(fixture.host(hostB).uri);
    tmp = await mkdtemp(join(tmpdir(), 'gs-instant-'));
    const fleet = await VmFleet.create({
      prefix: 'gs-instant',
      count: 2,
      dir: fixture.host(hostA).imagesDir,
      start: false,
    });
    try {
      for (const [i, vm] of fleet.vms.entries()) {
        await run('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x${(0x21 + i).toString(16)} 1M 4M`, vm.disks.vda]);
        await run('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x${(0x41 + i).toString(16)} 20M 6M`, vm.disks.vdb]);
        await (await fleet.conn.lookupByName(vm.name)).create();
      }
      const snap = await snapshotGroup(client, { group, vms: fleet.names.map((domain) => ({ domain, host: hostA })) });
      expect(snap.status).toBe('completed');
      snapshotId = snap.snapshotId;
      const exported = await exportGroupSnapshot(client, { group, snapshotId, repository: fx.url });
      expect(exported.status).toBe('completed');
      for (const v of snap.vms) for (const d of v.disks) sums[`${v.domain}/${d.target}`] = await contentSha256(d.image);
    } finally {
      await fleet.destroy();
      for (const f of readdirSync(fixture.host(hostA).imagesDir))
        await rm(join(fixture.host(hostA).imagesDir, f), { force: true });
      await fx.workerA.stop();
    }
  });

  afterAll(async () => {
    if (connB) {
      for (const x of (await connB.listAllDomains()).filter((y) => y.name.startsWith('gs-instant'))) {
        const d = await connB.lookupByName(x.name);
        if ((await d.state()).state !== 'shutoff') await d.destroy();
        await d.managedSaveRemove().catch(() => undefined);
        await d.undefine();
      }
      await connB.close();
    }
    await fx?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** A write into a running VM's disk through its own block device (as the guest's would land: the overlay). */
  const guestWrite = (domain: string, dev: string, cmd: string) =>
    run('virsh', [
      '-c',
      fixture.host(hostB).uri,
      'qemu-monitor-command',
      domain,
      '--hmp',
      `qemu-io -d /machine/peripheral/${dev}/virtio-backend "${cmd}"`,
    ]);

  /** Waits until every VM of the restore runs on host B, returning their names. */
  const waitRunning = async (count: number, restoreId: string) => {
    for (let i = 0; i < 600; i++) {
      const doms = (await connB.listAllDomains()).filter((d) => d.name.endsWith(restoreId));
      if (doms.length === count && doms.every((d) => d.state === 'running'))
        return Promise.all(doms.map((d) => connB.lookupByName(d.name)));
      await sleep(200);
    }
    throw new Error('the restored VMs did not run');
  };

  /** After hydration: live and persistent definitions free of the exports, serving gone, disks as the point. */
  const expectHydrated = async (result: RepoRestoreResult, written: { domain: string; target: string }) => {
    expect(result.status).toBe('restored');
    expect(result.hydration?.every((d) => d.hydrated)).toBe(true);
    expect(result.hydratedAfterMs).toBeGreaterThanOrEqual(result.runningAfterMs!);
    const instantDir = join(fx.workerB.stateDir, 'instant', result.restoreId);
    let left: string[] = [];
    try {
      left = readdirSync(instantDir);
    } catch {
      // gone, as it should be
    }
    expect(left).toEqual([]); // sockets and status gone
    for (const v of result.vms) {
      const dom = await connB.lookupByName(v.domain);
      // No QEMU crashed (QEMU 7.2 did when two pulls of one VM ended together: ADR 0013).
      expect(v.state).toBe('running');
      expect((await dom.state()).state).toBe('running');
      expect(await dom.xml()).not.toContain("protocol='nbd'");
      expect(await dom.xml(libvirt.DomainXMLFlags.INACTIVE)).not.toContain('.sock');
      await dom.destroy();
      for (const d of v.disks) {
        let file = d.file;
        if (v.domain === written.domain && d.target === written.target) {
          // The write made during hydration is there; without it, the disk is the point.
          await run('qemu-io', ['-f', 'qcow2', '-c', 'read -q -P 0x77 40M 1M', d.file]);
          file = join(tmp, `${v.domain}.${d.target}.raw`);
          await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', d.file, file]);
          await run('qemu-io', ['-f', 'raw', '-c', 'write -q -z 40M 1M', file]);
          expect(await contentSha256(file, 'raw')).toBe(sums[`${v.source}/${d.target}`]);
        } else expect(await contentSha256(file, d.format)).toBe(sums[`${v.source}/${d.target}`]);
        const info = JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', d.file])).stdout) as {
          'backing-filename'?: string;
        };
        expect(info['backing-filename']).toBeUndefined();
      }
    }
  };

  it('runs the VMs before hydration ends; hydrated disks are the point plus what was written meanwhile', async () => {
    const handle = await startRestoreFromRepo(
      client,
      { group, snapshotId, repo: fx.url, toHost: hostB, instant: true, hydrateParallel: 4, hydrateBandwidthMiB: 6 },
      { keyFile: fx.keyFile },
    );
    const restoreId = handle.workflowId.split('/').pop()!;
    const doms = await waitRunning(2, restoreId);
    // Running while the disks still read from their exports (hydration is not done).
    const backed = await Promise.all(doms.map(async (d) => diskNbdBacking(await d.xml(), 'vdb')));
    expect(backed.some((b) => b !== undefined)).toBe(true);
    await guestWrite(doms[0].name, 'virtio-disk1', 'write -P 0x77 40M 1M');
    const result = (await handle.result()) as RepoRestoreResult;
    await expectHydrated(result, { domain: doms[0].name, target: 'vdb' });
  });

  it('the serving process killed mid-hydration: restarted, disks re-opened, hydration completes', async () => {
    const handle = await startRestoreFromRepo(
      client,
      { group, snapshotId, repo: fx.url, toHost: hostB, instant: true, hydrateParallel: 4, hydrateBandwidthMiB: 6 },
      { keyFile: fx.keyFile },
    );
    const restoreId = handle.workflowId.split('/').pop()!;
    const doms = await waitRunning(2, restoreId);
    await guestWrite(doms[0].name, 'virtio-disk1', 'write -P 0x77 40M 1M');
    // SIGKILL the serving process of this restore while the pulls run.
    const pidFile = join(fx.workerB.stateDir, 'instant', restoreId, 'serve', 'serve.pid');
    process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL');
    const result = (await handle.result()) as RepoRestoreResult;
    expect(result.serverRestarts).toBeGreaterThanOrEqual(1);
    expect(result.reopened).toEqual(expect.arrayContaining(doms.map((d) => d.name)));
    await expectHydrated(result, { domain: doms[0].name, target: 'vdb' });
  });

  it('the S3 server stopped mid-hydration: reads are held, the VMs keep running, hydration completes when it is back', async () => {
    const handle = await startRestoreFromRepo(
      client,
      { group, snapshotId, repo: fx.url, toHost: hostB, instant: true, hydrateParallel: 4, hydrateBandwidthMiB: 6 },
      { keyFile: fx.keyFile },
    );
    const restoreId = handle.workflowId.split('/').pop()!;
    const doms = await waitRunning(2, restoreId);
    await guestWrite(doms[0].name, 'virtio-disk1', 'write -P 0x77 40M 1M');
    await fx.s3!.kill();
    // The serving process notices (a chunk the pulls need is not cached yet) and holds the request.
    const status = join(fx.workerB.stateDir, 'instant', restoreId, 'serve', 'status.json');
    let unreachable = false;
    for (let i = 0; i < 300 && !unreachable; i++) {
      await sleep(100);
      try {
        unreachable =
          (JSON.parse(readFileSync(status, 'utf8')) as { storeReachable: boolean }).storeReachable === false;
      } catch {
        // rewritten meanwhile
      }
    }
    expect(unreachable).toBe(true);
    await sleep(3000);
    for (const d of doms) expect(['running', 'paused']).toContain((await d.state()).state);
    await fx.s3!.resume();
    const result = (await handle.result()) as RepoRestoreResult;
    expect(result.serverRestarts ?? 0).toBe(0);
    await expectHydrated(result, { domain: doms[0].name, target: 'vdb' });
  });
});

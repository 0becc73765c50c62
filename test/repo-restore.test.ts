import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { Client } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createRepoRestoreActivities } from '../activities/repo-restore';
import { snapshotGroup } from '../client';
import { copyRepositoryAt } from '../client/copy';
import { restoreFromRepo } from '../client/repo-restore';
import { BadInputError, errorMessage, EXIT, exitCodeFor } from '../common/failures';
import type { HypervisorHosts } from '../dev/hypervisor-hosts';
import { temporalCliPath } from '../dev/tools';
import { VmFleet } from '../dev/vms';
import type { RepoRestoreResult } from '../common/repo-restore';
import { exportGroupSnapshot } from '../client/backup';
import { RepositoryLock } from '../backup/locks';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { socketLinkPorts } from '../hypervisor/socket-links';
import { startDrFixture, type DrFixture } from './helpers/dr-fixture';
import type { FailureLink, Outcome } from './helpers/nexus-caller-workflows';
import { contentSha256, storePoint, type PointVm } from './helpers/repo-point';
import { uniqueId } from './helpers/temporal';
import { CLI } from './helpers/worker-process';

const run = promisify(execFile);
const CALLER_NS = 'rr-caller';
const ENDPOINT = 'groupsnap-rr';

/**
 * Disaster recovery onto another hypervisor: a group snapshot of VMs on host A (the machine's libvirtd) is stored in
 * the off-host repository; host A's VMs, images and snapshots are destroyed and its worker stopped; the group is
 * rebuilt on host B (another user's libvirt session daemon) from the repository alone.
 */
describe('restore from the repository on another hypervisor', () => {
  let fx: DrFixture;
  let fixture: HypervisorHosts;
  let client: Client;
  let connB: libvirt.Connection;
  let dir: string;
  let url: string;
  let keyFile: string;
  let hostA: string;
  let hostB: string;
  const group = 'rr';
  let snapshotId: string;
  /** The source VMs' names and UUIDs; sha256 of each disk at the point, by `domain/target`. */
  const sources: { name: string; uuid: string }[] = [];
  const sums: Record<string, string> = {};

  const domainsOnB = async () => (await connB.listAllDomains()).map((d) => d.name);
  const filesOnB = () => readdirSync(fixture.host(hostB).imagesDir);
  const cli = (...args: string[]) =>
    run(process.execPath, [CLI, ...args, '--address', fx.server.address]).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
    );
  /** A directory of the recovery host a stored definition shares into the VM. */
  let hostShare: string;
  const removeFromB = async (names: string[]) => {
    for (const n of names) {
      const d = await connB.lookupByName(n).catch(() => undefined);
      if (!d) continue;
      if ((await d.state()).state !== 'shutoff') await d.destroy();
      await d.undefine();
    }
  };

  beforeAll(async () => {
    fx = await startDrFixture({ namespaces: [CALLER_NS] });
    ({ hosts: fixture, client, dir, url, keyFile, hostA, hostB } = fx);
    const repo = await fx.repo();
    connB = await libvirt.open(fixture.host(hostB).uri);
    hostShare = join(dir, 'host-share');
    mkdirSync(hostShare, { recursive: true });

    // Host A: two VMs with data at known places, snapshotted as a group, the point stored in the repository.
    const fleet = await VmFleet.create({ prefix: 'gs-rr', count: 2, dir: fixture.host(hostA).imagesDir, start: false });
    try {
      for (const [i, vm] of fleet.vms.entries()) {
        await run('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x${(0x21 + i).toString(16)} 1M 3M`, vm.disks.vda]);
        await run('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x${(0x41 + i).toString(16)} 20M 5M`, vm.disks.vdb]);
        await run('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x5a 63M 512k`, vm.disks.vdb]);
        await (await fleet.conn.lookupByName(vm.name)).create();
      }
      const snap = await snapshotGroup(client, { group, vms: fleet.names.map((domain) => ({ domain, host: hostA })) });
      expect(snap.status).toBe('completed');
      snapshotId = snap.snapshotId;
      const pointVms: PointVm[] = [];
      for (const v of snap.vms) {
        const dom = await fleet.conn.lookupByName(v.domain);
        sources.push({ name: v.domain, uuid: dom.uuid });
        pointVms.push({
          domain: v.domain,
          host: hostA,
          domainXml: await dom.xml(libvirt.DomainXMLFlags.INACTIVE),
          disks: v.disks.map((d) => ({ target: d.target, image: d.image })),
        });
        // Written after the point: must not show up in the restore.
        await run('qemu-io', ['-U', '-f', 'qcow2', '-c', 'write -q -P 0xee 1M 1M', v.disks[0].overlay]).catch(
          () => undefined,
        );
      }
      // The point goes off host A the way production does it: groupsnap's export (host A's worker holds the key).
      const exported = await exportGroupSnapshot(client, { group, snapshotId, repository: url });
      expect(exported.status).toBe('completed');
      for (const v of snap.vms) for (const d of v.disks) sums[`${v.domain}/${d.target}`] = await contentSha256(d.image);
      // A third point whose VMs are wired by a UDP socket link (0 <-> 1): clones must get fresh, paired ports.
      const udp = (local: number, remote: number) =>
        `<interface type='udp'><source address='127.0.0.1' port='${remote}'>` +
        `<local address='127.0.0.1' port='${local}'/></source><model type='e1000'/></interface>`;
      await storePoint(repo, {
        group,
        snapshotId: `${snapshotId}-sock`,
        vms: pointVms.map((v, i) => ({
          ...v,
          domainXml: v.domainXml.replace('</devices>', `${i === 0 ? udp(40201, 40202) : udp(40202, 40201)}</devices>`),
        })),
      });
      // A second point whose second VM cannot be defined anywhere (a machine type no QEMU has; the stored emulator is
      // not honoured any more: a restored VM runs the target's default): for all-or-none.
      // A point whose VMs' definitions (real ones, from host A's libvirt) also share a host directory and log their
      // serial console: the share is injected into the stored definition, as any holder of the key could write it.
      const share =
        `<filesystem type='mount' accessmode='passthrough'><source dir='${hostShare}'/><target dir='hostshare'/></filesystem>` +
        `<serial type='file'><source path='/var/log/${'gs-rr'}-console.log'/><target port='0'/></serial>`;
      await storePoint(repo, {
        group,
        snapshotId: `${snapshotId}-share`,
        vms: pointVms.map((v) => ({ ...v, domainXml: v.domainXml.replace('</devices>', `${share}</devices>`) })),
      });
      await storePoint(repo, {
        group,
        snapshotId: `${snapshotId}-broken`,
        vms: pointVms.map((v, i) =>
          i === 1
            ? {
                ...v,
                domainXml: v.domainXml.replace(/machine='[^']*'/, "machine='nonexistent'"),
              }
            : v,
        ),
      });
    } finally {
      repo.close();
      // Host A is gone: its VMs (and their libvirt state), every image and snapshot layer, and its worker.
      await fleet.destroy();
      for (const f of readdirSync(fixture.host(hostA).imagesDir))
        await rm(join(fixture.host(hostA).imagesDir, f), { force: true });
      await fx.workerA.stop();
    }
  });

  afterAll(async () => {
    if (connB) {
      const ours = (await connB.listAllDomains()).filter((d) => d.name.startsWith('gs-rr-'));
      await removeFromB(ours.map((d) => d.name));
      await connB.close();
    }
    await fx?.close();
  });

  it('host A is really gone before the restore: no VM, no image, no worker', async () => {
    const connA = await libvirt.open('qemu:///system');
    try {
      const names = (await connA.listAllDomains()).map((d) => d.name);
      for (const s of sources) expect(names).not.toContain(s.name);
    } finally {
      await connA.close();
    }
    expect(readdirSync(fixture.host(hostA).imagesDir)).toEqual([]);
    expect(Object.keys(sums)).toHaveLength(4);
  });

  it('rebuilds the group as clones on host B: bit-identical disks, sparse, new names and UUIDs, all running', async () => {
    const result = await restoreFromRepo(client, { group, snapshotId, repo: url, toHost: hostB }, { keyFile });
    expect(result.status).toBe('restored');
    expect(result.vms).toHaveLength(2);
    const b = fixture.host(hostB);
    for (const vm of result.vms) {
      const src = sources.find((s) => s.name === vm.source)!;
      expect(vm.domain).toBe(`${vm.source}-${result.restoreId}`);
      expect(vm.state).toBe('running');
      const dom = await connB.lookupByName(vm.domain);
      expect((await dom.state()).state).toBe('running');
      expect(dom.uuid.toLowerCase()).not.toBe(src.uuid.toLowerCase());
      for (const d of vm.disks) {
        expect(d.file.startsWith(`${b.imagesDir}/`)).toBe(true);
        expect(await contentSha256(d.file, d.format)).toBe(sums[`${vm.source}/${d.target}`]);
        const st = statSync(d.file);
        expect(st.uid).toBe(b.user!.uid);
        // Sparse: only the few MiB of data are allocated on a 64 MiB disk.
        expect(st.blocks * 512).toBeLessThan(16 * 1024 * 1024);
      }
    }
    expect(result.bytesWritten).toBeGreaterThan(0);
  });

  it('--as-original through the CLI keeps names and UUIDs; a second run is refused up front and changes nothing', async () => {
    const { code, stdout, stderr } = await cli(
      'restore',
      group,
      snapshotId,
      '--from-repo',
      url,
      '--key-file',
      keyFile,
      '--to-host',
      hostB,
      '--as-original',
      '--format',
      'raw',
      '--json',
    );
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const result = JSON.parse(stdout);
    expect(result).toMatchObject({ status: 'restored', mode: 'original' });
    for (const s of sources) {
      const dom = await connB.lookupByName(s.name);
      expect(dom.uuid.toLowerCase()).toBe(s.uuid.toLowerCase());
      expect((await dom.state()).state).toBe('running');
    }
    for (const vm of result.vms)
      for (const d of vm.disks) expect(await contentSha256(d.file, 'raw')).toBe(sums[`${vm.source}/${d.target}`]);

    const domains = await domainsOnB();
    const files = filesOnB();
    const again = await cli(
      'restore',
      group,
      snapshotId,
      '--from-repo',
      url,
      '--key-file',
      keyFile,
      '--to-host',
      hostB,
      '--as-original',
    );
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists on .*refuses to replace it/);
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);
    await removeFromB(sources.map((s) => s.name));
  });

  it('clones of socket-linked VMs get fresh ports from the plan on host B, still paired with each other', async () => {
    const sid = `${snapshotId}-sock`;
    const result = await restoreFromRepo(
      client,
      { group, snapshotId: sid, repo: url, toHost: hostB, suffix: '-sock', start: false },
      { keyFile },
    );
    expect(result.status).toBe('restored');
    const links = async (domain: string) => socketLinkPorts(await (await connB.lookupByName(domain)).xml());
    const [c0, c1] = [await links(result.vms[0].domain), await links(result.vms[1].domain)];
    const port = (ls: typeof c0, role: 'bind' | 'connect') => ls.find((l) => l.role === role)!.port;
    for (const l of [...c0, ...c1]) expect([40201, 40202]).not.toContain(l.port);
    expect(port(c0, 'connect')).toBe(port(c1, 'bind'));
    expect(port(c1, 'connect')).toBe(port(c0, 'bind'));
    await removeFromB(result.vms.map((v) => v.domain));
    for (const v of result.vms) for (const d of v.disks) await rm(d.file, { force: true });
  });

  it('a stored host directory share is refused before anything is written (CLI exit 2, BAD_INPUT), stripped when asked', async () => {
    const sid = `${snapshotId}-share`;
    const domains = await domainsOnB();
    const files = filesOnB();
    const refused = await cli('restore', group, sid, '--from-repo', url, '--key-file', keyFile, '--to-host', hostB);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/<filesystem type="mount".*source dir=".*host-share".*host directory share/);
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);
    await expect(
      restoreFromRepo(client, { group, snapshotId: sid, repo: url, toHost: hostB, suffix: '-sh' }, { keyFile }),
    ).rejects.toThrow(BadInputError);
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);

    const { code, stdout, stderr } = await cli(
      'restore',
      group,
      sid,
      '--from-repo',
      url,
      '--key-file',
      keyFile,
      '--to-host',
      hostB,
      '--suffix',
      '-strip',
      '--strip-host-devices',
      '--json',
    );
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const result = JSON.parse(stdout) as RepoRestoreResult;
    expect(result.status).toBe('restored');
    const images = fixture.host(hostB).imagesDir;
    for (const vm of result.vms) {
      expect(vm.removed).toEqual([expect.stringMatching(/<filesystem type="mount".*host directory share/)]);
      const dom = await connB.lookupByName(vm.domain);
      expect((await dom.state()).state).toBe('running');
      const live = await dom.xml();
      expect(live).not.toContain('<filesystem');
      expect(live).not.toContain(hostShare);
      // Every host file the running VM names lies in host B's image directory (the serial log moved there).
      const paths = [...live.matchAll(/\s(?:file|path|dir)='([^']*)'/g)].map((m) => m[1]);
      expect(paths.length).toBeGreaterThan(0);
      for (const p of paths) expect(p.startsWith(`${images}/`)).toBe(true);
      expect(live).toContain(`${images}/${vm.domain}.gs-rr-console.log`);
    }
    await removeFromB(result.vms.map((v) => v.domain));
    for (const v of result.vms) for (const d of v.disks) await rm(d.file, { force: true });
  });

  it('a define whose completion was lost is retried to success on host B, and compensation by the planned UUID removes it (issue 24 item 10)', async () => {
    const hv = await LibvirtHypervisor.open(fixture.host(hostB).uri);
    const stateDir = await mkdtemp(join(dir, 'rr-idem-'));
    // Host B's QEMU runs as its own user, without /dev/kvm; its worker sees that, this test process (root) would not.
    const virtType = process.env.GROUPSNAP_VIRT_TYPE;
    process.env.GROUPSNAP_VIRT_TYPE = 'qemu';
    try {
      const acts = createRepoRestoreActivities({
        hypervisor: hv,
        hostId: hostB,
        imagesDir: fixture.host(hostB).imagesDir,
        stateDir,
        keyFile,
      });
      const restoreId = `idem-${Date.now().toString(36)}`;
      const point = { repo: url, group, snapshotId, restoreId };
      const plan = await acts.repoRestorePlan({
        ...point,
        mode: 'clone',
        suffix: '-idem',
        format: 'qcow2',
        noNetwork: true,
      });
      const vm = plan.vms[0];
      expect(vm.uuid).toMatch(/^[0-9a-f-]{36}$/);
      const define = {
        ...point,
        vm,
        mode: 'clone' as const,
        networkMap: {},
        noNetwork: true,
        ...(plan.virtType ? { virtType: plan.virtType } : {}),
      };
      const first = await acts.defineRestoredVm(define);
      expect(first.uuid.toLowerCase()).toBe(vm.uuid);
      // The completion is lost: Temporal runs the same request again, which finds the VM it made.
      expect(await acts.defineRestoredVm(define)).toEqual(first);
      expect(await domainsOnB()).toContain(vm.domain);
      // Compensation knows only the plan (never the define's result): the planned UUID removes the VM.
      await acts.removeRestoredVm({ domain: vm.domain, uuid: vm.uuid!, files: vm.disks.map((d) => d.file) });
      expect(await domainsOnB()).not.toContain(vm.domain);
    } finally {
      if (virtType === undefined) delete process.env.GROUPSNAP_VIRT_TYPE;
      else process.env.GROUPSNAP_VIRT_TYPE = virtType;
      await hv.close();
      await rm(stateDir, { recursive: true, force: true });
    }
  });

  it('a prune in progress holds a restore off instead of deleting the point under it; released, the restore runs (issue 24 item 7)', async () => {
    const repo = await fx.repo();
    const prune = await RepositoryLock.acquire(repo, 'prune', 'nightly-prune');
    const domains = await domainsOnB();
    const files = filesOnB();
    try {
      const held = await restoreFromRepo(
        client,
        { group, snapshotId, repo: url, toHost: hostB, suffix: '-pruned', noNetwork: true },
        { keyFile },
      ).then(
        () => undefined,
        (err: unknown) => err,
      );
      // Busy is transient (retried first, then exit 1), never bad input; nothing was made on host B.
      expect(held).toBeDefined();
      expect(held).not.toBeInstanceOf(BadInputError);
      expect(exitCodeFor(held)).toBe(EXIT.failed);
      expect(errorMessage(held)).toMatch(/being pruned/);
      expect(await domainsOnB()).toEqual(domains);
      expect(filesOnB()).toEqual(files);
    } finally {
      await prune.release();
    }
    const result = await restoreFromRepo(
      client,
      { group, snapshotId, repo: url, toHost: hostB, suffix: '-pruned', noNetwork: true },
      { keyFile },
    );
    expect(result.status).toBe('restored');
    await removeFromB(result.vms.map((v) => v.domain));
    repo.close();
  });

  it('all or none: when one VM cannot be defined, every VM and disk the restore made on host B is removed', async () => {
    const domains = await domainsOnB();
    const files = filesOnB();
    const result = await restoreFromRepo(
      client,
      { group, snapshotId: `${snapshotId}-broken`, repo: url, toHost: hostB, suffix: '-broken' },
      { keyFile },
    );
    expect(result.status).toBe('failed');
    expect(result.error).toMatch(/nonexistent/);
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);
    for (const vm of result.vms) for (const d of vm.disks) expect(existsSync(d.file)).toBe(false);
  });

  it('a target without enough space is refused before anything is written', async () => {
    const b = fixture.host(hostB);
    const small = join(dir, 'small');
    mkdirSync(small);
    await run('mount', [
      '-t',
      'tmpfs',
      '-o',
      `size=2m,uid=${b.user!.uid},gid=${b.user!.gid},mode=0755`,
      'tmpfs',
      small,
    ]);
    const smallHost = uniqueId('hvsmall');
    const w = await fixture.worker(hostB, fx.hostAddress, {
      args: ['--key-file', keyFile],
      as: { id: smallHost, imagesDir: small },
    });
    try {
      await w.start(client);
      const domains = await domainsOnB();
      await expect(
        restoreFromRepo(client, { group, snapshotId, repo: url, toHost: smallHost }, { keyFile }),
      ).rejects.toThrow(BadInputError);
      await expect(
        restoreFromRepo(client, { group, snapshotId, repo: url, toHost: smallHost }, { keyFile }),
      ).rejects.toThrow(/not enough space in .* needs \d+ bytes, \d+ are free/);
      expect(readdirSync(small)).toEqual([]);
      expect(await domainsOnB()).toEqual(domains);
    } finally {
      await w.stop();
      await run('umount', [small]);
    }
  });

  it('through Nexus, from a workflow in another namespace: clones restored and running; bad input is BAD_REQUEST', async () => {
    await run(temporalCliPath(), [
      'operator',
      'nexus',
      'endpoint',
      'create',
      '--address',
      fx.server.address,
      '--name',
      ENDPOINT,
      '--target-namespace',
      'default',
      '--target-task-queue',
      'groupsnap',
    ]);
    const callerConnection = await NativeConnection.connect({ address: fx.server.address });
    const callerWorker = await Worker.create({
      connection: callerConnection,
      namespace: CALLER_NS,
      taskQueue: 'rr-caller',
      workflowsPath: require.resolve('./helpers/nexus-caller-workflows'),
    });
    const caller = new Client({ connection: fx.client.connection, namespace: CALLER_NS });
    const callerRun = callerWorker.run();
    const call = (input: unknown) =>
      caller.workflow.execute('tryRestoreFromRepoThroughNexus', {
        taskQueue: 'rr-caller',
        workflowId: uniqueId('nx-rr'),
        args: [ENDPOINT, input],
      }) as Promise<Outcome<RepoRestoreResult>>;
    try {
      const ok = await call({ group, snapshotId, repo: url, toHost: hostB, suffix: '-nx' });
      expect(ok.ok).toBe(true);
      const result = (ok as { result: RepoRestoreResult }).result;
      expect(result.status).toBe('restored');
      for (const vm of result.vms) {
        expect(vm.domain).toBe(`${vm.source}-nx`);
        expect((await (await connB.lookupByName(vm.domain)).state()).state).toBe('running');
        for (const d of vm.disks) expect(await contentSha256(d.file, d.format)).toBe(sums[`${vm.source}/${d.target}`]);
      }
      await removeFromB(result.vms.map((v) => v.domain));
      const badInput = await call({ group, snapshotId, repo: 'http://nope', toHost: hostB });
      expect(badInput.ok).toBe(false);
      const failures = (badInput as { failures: FailureLink[] }).failures;
      expect(failures.some((f) => f.type === 'GroupsnapBadInput' && /repository URL/.test(f.message))).toBe(true);
    } finally {
      callerWorker.shutdown();
      await callerRun;
      await callerConnection.close();
    }
  });

  it('bad input exits 2 before anything starts: wrong key, unknown point, no target host', async () => {
    const wrongKey = join(dir, 'wrong.key');
    writeFileSync(wrongKey, randomBytes(32).toString('base64'), { mode: 0o600 });
    const base = ['restore', group, snapshotId, '--from-repo', url, '--to-host', hostB];
    const wrong = await cli(...base, '--key-file', wrongKey);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/key/i);
    const unknown = await cli(
      'restore',
      group,
      'gs-nope',
      '--from-repo',
      url,
      '--key-file',
      keyFile,
      '--to-host',
      hostB,
    );
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/no exported point gs-nope/);
    const noHost = await cli('restore', group, snapshotId, '--from-repo', url, '--key-file', keyFile);
    expect(noHost.code).toBe(2);
    expect(noHost.stderr).toMatch(/--to-host/);
    const { stdout } = await run('find', [fixture.host(hostB).imagesDir, '-name', '*.part']);
    expect(stdout).toBe('');
    chownSync(wrongKey, 0, 0);
  });

  it('after the first repository is gone, the group restores on host B from its second copy (issue 26)', async () => {
    const copyUrl = pathToFileURL(join(dir, 'copy')).href;
    const copied = await copyRepositoryAt(url, copyUrl, keyFile, { group, points: [snapshotId] });
    expect(copied.points).toMatchObject([{ snapshotId, status: 'copied' }]);
    await rm(join(dir, 'repo'), { recursive: true, force: true });
    const r = await cli(
      'restore',
      group,
      snapshotId,
      '--from-repo',
      copyUrl,
      '--key-file',
      keyFile,
      '--to-host',
      hostB,
      '--json',
    );
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as RepoRestoreResult;
    expect(result.status).toBe('restored');
    try {
      for (const vm of result.vms)
        for (const d of vm.disks) expect(await contentSha256(d.file, d.format)).toBe(sums[`${vm.source}/${d.target}`]);
    } finally {
      await removeFromB(result.vms.map((v) => v.domain));
    }
  });
});

/**
 * Off-host export end to end: real libvirtd + QEMU VMs, a real Temporal server, a real S3 server (versitygw).
 * Incremental exports read only what changed, every point restores byte for byte, and the faults of the issue:
 * wrong key, missing bucket, S3 down mid-export, a worker SIGKILLed mid-export, two exports of one point, and local
 * deletion refused while an export reads the layer.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import type { NexusRepositoryPoints } from '../client/nexus';
import type { VerifyResult } from '../backup/verify';
import { temporalCliPath } from '../dev/tools';
import type { Outcome } from './helpers/nexus-caller-workflows';
import { Repository } from '../backup/repository';
import { verifyRepository } from '../backup/verify';
import { ExportFailedError, exportGroupSnapshot, exportProgress, exportResult, startExport } from '../client/backup';
import { copyResult } from '../client/copy';
import { createGroup, deleteGroup, deleteGroupSnapshot, snapshotNamedGroup } from '../client/dr';
import { snapshotGroup } from '../client';
import { REPO_KEY_FILE_ENV, type ExportDiskReport, type ExportResult } from '../common/backup-types';
import { S3Server } from '../dev/s3-server';
import { VmFleet } from '../dev/vms';
import type { DiskManifest, VmManifest } from '../backup/manifest';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { createCopyWorker } from '../worker/copy-worker';
import { runningGuardPid } from '../worker/guard';
import { writeMarker } from './helpers/markers';
import { scopedHypervisor } from './helpers/scoped-hypervisor';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { WorkerProcess } from './helpers/worker-process';
import { startHosts, type RunningHosts } from './helpers/workers';
import { maybeRecordHistory } from './helpers/histories';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const CHUNK = MiB;

describe('exports of group snapshots to S3 on real VMs', () => {
  let s3: S3Server;
  let tmp: string;
  let keyFile: string;
  let connection: Connection;
  let client: Client;
  let fleet: VmFleet;
  let hosts: RunningHosts;
  let hypervisor: LibvirtHypervisor;
  const saved: Record<string, string | undefined> = {};
  let namespace: string;
  const hostA = uniqueId('exa');
  const prefix = uniqueId('gsexp');
  const group = 'shop';
  const repository = 's3://gs-exports/dr';
  const key = randomBytes(32);

  const disksOf = (r: ExportResult) =>
    Object.fromEntries(
      r.vms.flatMap((v) => v.disks.map((d) => [`${v.domain}/${d.target}`, d as ExportDiskReport] as const)),
    );

  /** Writes `mib` MiB into a disk, each MiB a different byte (so chunks differ), from `offsetMiB` on. */
  async function writeData(domain: string, target: string, offsetMiB: number, mib: number, seed: number) {
    for (let i = 0; i < mib; i++) await writeMarker(domain, target, ((seed + i) % 250) + 1, (offsetMiB + i) * MiB, MiB);
  }

  async function snapshot(vms: { domain: string; host: string }[]) {
    const r = await snapshotGroup(client, { group, vms });
    expect(r.status).toBe('completed');
    return r;
  }

  async function openRepo() {
    return Repository.open(repository, key);
  }

  /** The disk of `snapshotId` as the repository has it, against the raw content of the image that holds it. */
  async function expectRestoresExactly(snapshotId: string, domain: string, target: string, image: string) {
    const repo = await openRepo();
    try {
      const gm = await repo.readGroupManifest(group, snapshotId);
      const vm = await repo.readManifestAt<VmManifest>(gm.vms.find((v) => v.domain === domain)!.manifest);
      expect(vm.domainXml).toContain(`<name>${domain}</name>`);
      const disk = await repo.readManifestAt<DiskManifest>(vm.disks.find((d) => d.target === target)!.manifest);
      const restored = join(tmp, `${domain}.${target}.restored.raw`);
      const expected = join(tmp, `${domain}.${target}.expected.raw`);
      await repo.writeDiskImage(disk, restored);
      await run('qemu-img', ['convert', '-U', '-O', 'raw', image, expected]);
      const [a, b] = [await readFile(restored), await readFile(expected)];
      expect(a.length).toBe(b.length);
      expect(a.equals(b)).toBe(true);
      await rm(restored);
      await rm(expected);
    } finally {
      repo.close();
    }
  }

  beforeAll(async () => {
    s3 = await S3Server.start();
    tmp = await mkdtemp(join(tmpdir(), 'gs-export-test-'));
    keyFile = join(tmp, 'repo.key');
    await writeFile(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    for (const [k, v] of Object.entries({ ...s3.env, [REPO_KEY_FILE_ENV]: keyFile })) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    await s3.createBucket('gs-exports');
    (await Repository.init(repository, key, { chunkSize: CHUNK })).close();
    namespace = await freshNamespace('gsexp');
    connection = await Connection.connect({ address: testServerAddress() });
    client = new Client({ connection, namespace });
    fleet = await VmFleet.create({ prefix, count: 2, disksPerVm: 2, diskSize: '48M' });
    hypervisor = await LibvirtHypervisor.open('qemu:///system');
    hosts = await startHosts([{ hostId: hostA, hypervisor: scopedHypervisor(hypervisor, prefix) }], { namespace });
  });

  afterAll(async () => {
    await hosts?.stop();
    await hypervisor?.close();
    await fleet?.destroy();
    await connection?.close();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await s3?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('the first export reads only allocated extents, the next only what changed; both restore byte for byte', async () => {
    const [v1, v2] = fleet.names;
    const vms = [
      { domain: v1, host: hostA },
      { domain: v2, host: hostA },
    ];
    await writeData(v1, 'vda', 4, 6, 10);
    await writeData(v2, 'vdb', 20, 3, 40);
    const s1 = await snapshot(vms);
    const first = await exportGroupSnapshot(client, { group, snapshotId: s1.snapshotId, repository });
    expect(first.status).toBe('completed');
    await maybeRecordHistory(client, first.workflowId, 'export-completed');
    const d1 = disksOf(first);
    for (const d of Object.values(d1)) {
      expect(d.stats.mode).toBe('full');
      expect(d.stats.bytesRead).toBeLessThan(48 * MiB); // never the whole disk
    }
    // v1/vda: the boot sector chunk and the 6 MiB written; v2/vdb: 3 MiB; v1/vdb: nothing.
    expect(d1[`${v1}/vda`].stats.bytesRead).toBe(7 * MiB);
    expect(d1[`${v2}/vdb`].stats.bytesRead).toBe(3 * MiB);
    expect(d1[`${v1}/vdb`].stats.bytesRead).toBe(0);

    await writeData(v1, 'vda', 30, 2, 90);
    const s2 = await snapshot(vms);
    const second = await exportGroupSnapshot(client, { group, snapshotId: s2.snapshotId, repository });
    const d2 = disksOf(second);
    expect(d2[`${v1}/vda`].stats).toMatchObject({
      mode: 'incremental',
      base: s1.snapshotId,
      bytesRead: 2 * MiB,
      chunksNew: 2,
    });
    for (const k of [`${v1}/vdb`, `${v2}/vda`, `${v2}/vdb`])
      expect(d2[k].stats).toMatchObject({ mode: 'incremental', bytesRead: 0, chunksNew: 0 });
    expect(second.stats).toMatchObject({ bytesRead: 2 * MiB, chunksNew: 2, chunksData: 1 + 6 + 2 + 1 + 3 });

    const repo = await openRepo();
    const points = await repo.listPoints({ group });
    expect(points.map((p) => p.snapshotId)).toEqual([s1.snapshotId, s2.snapshotId]);
    expect(points[1].vms.map((v) => v.domain).sort()).toEqual([v1, v2].sort());
    expect((await verifyRepository(repo, { readData: true })).ok).toBe(true);
    repo.close();
    // A synthetic full: the second point alone gives the whole disk at that point.
    const image = (s: typeof s2, vm: string, t: string) =>
      s.vms.find((v) => v.domain === vm)!.disks.find((d) => d.target === t)!.image;
    await expectRestoresExactly(s2.snapshotId, v1, 'vda', image(s2, v1, 'vda'));
    await expectRestoresExactly(s1.snapshotId, v1, 'vda', image(s1, v1, 'vda'));
    await expectRestoresExactly(s2.snapshotId, v2, 'vdb', image(s2, v2, 'vdb'));

    // Two exports of one point at once: one workflow runs, both callers get its result; nothing new is stored.
    const [h1, h2] = await Promise.all([
      startExport(client, { group, snapshotId: s2.snapshotId, repository }),
      startExport(client, { group, snapshotId: s2.snapshotId, repository }),
    ]);
    expect(h2.firstExecutionRunId).toBe(h1.firstExecutionRunId);
    const [r1, r2] = await Promise.all([exportResult(h1), exportResult(h2)]);
    expect(r2).toEqual(r1);
    expect(r1.stats).toMatchObject({ chunksNew: 0, bytesUploaded: 0 });
  });

  it('a group that names a repository exports each snapshot it takes, after the VMs run again', async () => {
    const [, v2] = fleet.names;
    const named = uniqueId('auto');
    await createGroup(client, {
      name: named,
      selector: { vms: [{ domain: v2, host: hostA }] },
      repository,
    });
    try {
      await writeData(v2, 'vdb', 40, 1, 200);
      const run = await snapshotNamedGroup(client, named);
      expect(run.snapshot.status).toBe('completed');
      expect(run.export).toMatchObject({ repository, status: 'completed' });
      const repo = await openRepo();
      const [point] = await repo.listPoints({ group: named });
      expect(point).toMatchObject({ snapshotId: run.snapshot.snapshotId, vms: [{ domain: v2, host: hostA }] });
      // A snapshot of another VM's group chain is its first in this group: a full read of what is allocated.
      expect(point.stats.bytesRead).toBeLessThan(96 * MiB);
      repo.close();
    } finally {
      await deleteGroup(client, named);
    }
  });

  it('a group with a copy target copies each exported point through the copy worker: the copy restores exactly', async () => {
    const [, v2] = fleet.names;
    const named = uniqueId('copied');
    const copyTo = pathToFileURL(join(tmp, 'copy')).href;
    await createGroup(client, { name: named, selector: { vms: [{ domain: v2, host: hostA }] }, repository, copyTo });
    const native = await NativeConnection.connect({ address: testServerAddress() });
    const copier = await createCopyWorker({ connection: native, namespace, keyFile });
    const copying = copier.run();
    try {
      await writeData(v2, 'vda', 8, 2, 90);
      const groupRun = await snapshotNamedGroup(client, named);
      expect(groupRun.export).toMatchObject({ repository, status: 'completed' });
      expect(groupRun.copy).toMatchObject({ to: copyTo, status: 'started' });
      const copied = await copyResult(client.workflow.getHandle(groupRun.copy!.workflowId));
      expect(copied).toMatchObject({ status: 'completed', point: 'copied', resealed: false });
      const [vm] = groupRun.snapshot.vms;
      const copy = await Repository.open(copyTo, key);
      try {
        for (const d of vm.disks) {
          const disk = await copy.readDiskManifest(named, groupRun.snapshot.snapshotId, vm.domain, d.target);
          const restored = join(tmp, `copy.${d.target}.raw`);
          const expected = join(tmp, `copy.${d.target}.expected.raw`);
          await copy.writeDiskImage(disk, restored);
          await run('qemu-img', ['convert', '-U', '-O', 'raw', d.image, expected]);
          expect((await readFile(restored)).equals(await readFile(expected))).toBe(true);
          await rm(restored);
          await rm(expected);
        }
      } finally {
        copy.close();
      }
    } finally {
      copier.worker.shutdown();
      await copying;
      await native.close();
      await deleteGroup(client, named);
    }
  });

  it('through Nexus from another namespace: exports a point and lists the repository; bad input is BAD_REQUEST', async () => {
    const [v1] = fleet.names;
    const s = await snapshot([{ domain: v1, host: hostA }]);
    const endpoint = uniqueId('gsexp-nx');
    await run(temporalCliPath(), [
      'operator',
      'nexus',
      'endpoint',
      'create',
      '--address',
      testServerAddress(),
      '--name',
      endpoint,
      '--target-namespace',
      namespace,
      '--target-task-queue',
      'groupsnap',
    ]);
    const callerNs = await freshNamespace('gsexpc');
    const callerConnection = await NativeConnection.connect({ address: testServerAddress() });
    const callerWorker = await Worker.create({
      connection: callerConnection,
      namespace: callerNs,
      taskQueue: 'exp-caller',
      workflowsPath: require.resolve('./helpers/nexus-caller-workflows'),
    });
    const caller = new Client({ connection, namespace: callerNs });
    const callerRun = callerWorker.run();
    const call = <T>(workflow: string, args: unknown[]) =>
      caller.workflow.execute(workflow, {
        taskQueue: 'exp-caller',
        workflowId: uniqueId('nx-exp'),
        args,
      }) as Promise<Outcome<T>>;
    try {
      const exported = await call<ExportResult>('tryExportThroughNexus', [
        endpoint,
        { group, snapshotId: s.snapshotId, repository },
      ]);
      expect(exported).toMatchObject({ ok: true, result: { status: 'completed', snapshotId: s.snapshotId } });
      const listed = await call<NexusRepositoryPoints>('tryListRepositoryThroughNexus', [
        endpoint,
        { repository, group },
      ]);
      expect(listed.ok).toBe(true);
      const points = (listed as { result: NexusRepositoryPoints }).result.points;
      expect(points.map((p) => p.snapshotId)).toContain(s.snapshotId);
      const verified = await call<VerifyResult>('tryVerifyRepositoryThroughNexus', [
        endpoint,
        { repository, group, readData: true },
      ]);
      expect(verified).toMatchObject({ ok: true, result: { ok: true, readData: true, problems: [] } });
      const bad = await call<ExportResult>('tryExportThroughNexus', [
        endpoint,
        { group, snapshotId: '../x', repository },
      ]);
      expect(bad.ok).toBe(false);
      expect(JSON.stringify(bad)).toMatch(/BAD_REQUEST/);
    } finally {
      callerWorker.shutdown();
      await callerRun;
      await callerConnection.close();
    }
  });

  it('a wrong key or a missing bucket fails the export at once with a clear error and writes nothing', async () => {
    const [v1] = fleet.names;
    const s = await snapshot([{ domain: v1, host: hostA }]);
    const objects = async () => {
      const names: string[] = [];
      for await (const o of (await openRepo()).store.list('')) names.push(o.key);
      return names.sort();
    };
    const before = await objects();
    const wrong = join(tmp, 'wrong.key');
    await writeFile(wrong, randomBytes(32), { mode: 0o600 });
    process.env[REPO_KEY_FILE_ENV] = wrong;
    try {
      const err = await exportGroupSnapshot(client, { group, snapshotId: s.snapshotId, repository }).catch((e) => e);
      expect(err).toBeInstanceOf(ExportFailedError);
      expect(err.message).toMatch(/key does not open the repository/);
      await maybeRecordHistory(client, err.result.workflowId, 'export-failed-wrong-key');
    } finally {
      process.env[REPO_KEY_FILE_ENV] = keyFile;
    }
    expect(await objects()).toEqual(before);
    const missing = await exportGroupSnapshot(client, {
      group,
      snapshotId: s.snapshotId,
      repository: 's3://no-such-bucket/x',
    }).catch((e) => e);
    expect(missing).toBeInstanceOf(ExportFailedError);
    expect(missing.message).toMatch(/bucket no-such-bucket does not exist/);
  });

  it('S3 down mid-export: the export retries and resumes, local deletion waits for it, the local snapshot is untouched', async () => {
    const [, v2] = fleet.names;
    await writeData(v2, 'vda', 8, 12, 130);
    const s = await snapshot([{ domain: v2, host: hostA }]);
    const vda = s.vms[0].disks.find((d) => d.target === 'vda')!;
    const handle = await startExport(client, {
      group,
      snapshotId: s.snapshotId,
      repository,
      maxBytesPerSecond: 2 * MiB,
    });
    const deadline = Date.now() + 60_000;
    while (!(await exportProgress(handle)).some((p) => p.target === 'vda' && p.bytesDone >= 2 * MiB)) {
      if (Date.now() > deadline) throw new Error('no export progress within 60 s');
      await new Promise((r) => setTimeout(r, 250));
    }
    // The layer being exported cannot be merged away meanwhile.
    const refused = await deleteGroupSnapshot(client, group, s.snapshotId);
    expect(refused.status).toBe('failed');
    expect(JSON.stringify(refused)).toMatch(/an export of snapshot .* still reads it/);

    await s3.kill();
    await new Promise((r) => setTimeout(r, 4000));
    await s3.resume();
    const result = await exportResult(handle);
    expect(result.status).toBe('completed');
    const d = disksOf(result)[`${v2}/vda`];
    expect(d.chunksResumed).toBeGreaterThan(0);
    expect(d.stats.chunksData).toBe(1 + 12);
    await expectRestoresExactly(s.snapshotId, v2, 'vda', vda.image);
    const repo = await openRepo();
    expect((await verifyRepository(repo, { readData: true, group })).ok).toBe(true);
    repo.close();
    expect((await (await fleet.conn.lookupByName(v2)).state()).state).toBe('running');
    // The snapshot is still there, still exportable, and deletable now that no export reads it.
    expect((await deleteGroupSnapshot(client, group, s.snapshotId)).status).toBe('deleted');
  });

  it('two exports of one point to two repositories while its layer is deleted: the deletion waits for both; both restore exactly', async () => {
    const [, v2] = fleet.names;
    const second = 's3://gs-exports/dr-second';
    (await Repository.init(second, key, { chunkSize: CHUNK })).close();
    await writeData(v2, 'vdb', 24, 10, 60);
    const vms = [{ domain: v2, host: hostA }];
    const s = await snapshot(vms);
    const vdb = s.vms[0].disks.find((d) => d.target === 'vdb')!;
    // The point's content, kept aside: once the snapshot is deleted its image holds the later writes too.
    const expected = join(tmp, 'two-repos.expected.raw');
    await run('qemu-img', ['convert', '-U', '-O', 'raw', vdb.image, expected]);
    await writeData(v2, 'vdb', 26, 2, 120); // after the point: what the deletion's merge moves into its image

    const fast = await startExport(client, {
      group,
      snapshotId: s.snapshotId,
      repository,
      vms,
      maxBytesPerSecond: 4 * MiB,
    });
    const slow = await startExport(client, {
      group,
      snapshotId: s.snapshotId,
      repository: second,
      vms,
      maxBytesPerSecond: MiB,
    });
    const deadline = Date.now() + 60_000;
    while (!(await exportProgress(slow)).some((p) => p.target === 'vdb' && p.bytesDone >= MiB)) {
      if (Date.now() > deadline) throw new Error('no export progress within 60 s');
      await new Promise((r) => setTimeout(r, 250));
    }
    const both = await deleteGroupSnapshot(client, group, s.snapshotId);
    expect(both.status).toBe('failed');
    expect(JSON.stringify(both)).toMatch(/an export of snapshot .* still reads it/);

    // The first export ends and releases its own hold only: the other still reads the layer.
    expect((await exportResult(fast)).status).toBe('completed');
    const one = await deleteGroupSnapshot(client, group, s.snapshotId);
    expect(one.status).toBe('failed');
    expect(JSON.stringify(one)).toMatch(/to s3:\/\/gs-exports\/dr-second\) still reads it/);
    expect(JSON.stringify(one)).not.toMatch(/to s3:\/\/gs-exports\/dr\) still reads it/);

    expect((await exportResult(slow)).status).toBe('completed');
    expect((await deleteGroupSnapshot(client, group, s.snapshotId)).status).toBe('deleted');

    const want = await readFile(expected);
    for (const url of [repository, second]) {
      const repo = await Repository.open(url, key);
      try {
        const gm = await repo.readGroupManifest(group, s.snapshotId);
        const vm = await repo.readManifestAt<VmManifest>(gm.vms.find((v) => v.domain === v2)!.manifest);
        const disk = await repo.readManifestAt<DiskManifest>(vm.disks.find((d) => d.target === 'vdb')!.manifest);
        const restored = join(tmp, 'two-repos.restored.raw');
        await repo.writeDiskImage(disk, restored);
        const got = await readFile(restored);
        expect(got.length).toBe(want.length);
        expect(got.equals(want)).toBe(true);
        await rm(restored);
        expect((await verifyRepository(repo, { readData: true, group })).ok).toBe(true);
      } finally {
        repo.close();
      }
    }
  });

  it('exports the definition the VM had when the point was taken, not one changed since (issue 24 item 11)', async () => {
    const [v1] = fleet.names;
    const s = await snapshot([{ domain: v1, host: hostA }]);
    const xml = await hypervisor.domainXml(v1);
    await hypervisor.defineDomain(xml.replace('</name>', '</name><description>changed after the point</description>'));
    expect(await hypervisor.domainXml(v1)).toContain('changed after the point');
    const r = await exportGroupSnapshot(client, { group, snapshotId: s.snapshotId, repository });
    expect(r.status).toBe('completed');
    const repo = await openRepo();
    try {
      const gm = await repo.readGroupManifest(group, s.snapshotId);
      const vm = await repo.readManifestAt<VmManifest>(gm.vms.find((v) => v.domain === v1)!.manifest);
      expect(vm.domainXml).toContain(`<name>${v1}</name>`);
      expect(vm.domainXml).not.toContain('changed after the point');
    } finally {
      repo.close();
    }
  });

  it('a worker SIGKILLed mid-export: the retry goes on from its checkpoint without uploading finished chunks again', async () => {
    const [v1] = fleet.names;
    const killedHost = uniqueId('exk');
    const stateDir = await mkdtemp(join(tmpdir(), 'gs-export-killed-'));
    const worker = new WorkerProcess(killedHost, stateDir, testServerAddress(), {
      args: ['--namespace', client.options.namespace],
    });
    await worker.start(client);
    try {
      await writeData(v1, 'vdb', 2, 14, 170);
      const vms = [{ domain: v1, host: killedHost }];
      const s = await snapshot(vms);
      const handle = await startExport(client, {
        group,
        snapshotId: s.snapshotId,
        repository,
        vms,
        maxBytesPerSecond: 2 * MiB,
      });
      const deadline = Date.now() + 60_000;
      while (!(await exportProgress(handle)).some((p) => p.target === 'vdb' && p.bytesDone >= 3 * MiB)) {
        if (Date.now() > deadline) throw new Error(`no export progress within 60 s:\n${worker.output}`);
        await new Promise((r) => setTimeout(r, 250));
      }
      await worker.kill('SIGKILL');
      // What was uploaded before the kill, and when.
      const repo = await openRepo();
      const chunksAtKill = new Map<string, number>();
      for await (const o of repo.store.list('chunks/')) chunksAtKill.set(o.key, o.lastModified.getTime());
      await worker.start(client);
      const result = await exportResult(handle);
      expect(result.status).toBe('completed');
      const d = disksOf(result)[`${v1}/vdb`];
      expect(d.chunksResumed).toBeGreaterThan(0);
      expect(d.stats.chunksData).toBe(14);
      for await (const o of repo.store.list('chunks/')) {
        if (chunksAtKill.has(o.key)) expect(o.lastModified.getTime()).toBe(chunksAtKill.get(o.key));
      }
      expect((await verifyRepository(repo, { readData: true, group })).ok).toBe(true);
      repo.close();
      await expectRestoresExactly(s.snapshotId, v1, 'vdb', s.vms[0].disks.find((x) => x.target === 'vdb')!.image);
    } finally {
      await worker.kill('SIGTERM');
      const guard = runningGuardPid(stateDir);
      if (guard) process.kill(guard, 'SIGTERM');
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});

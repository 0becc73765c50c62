import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { VmManifest } from '../backup/manifest';
import { Repository } from '../backup/repository';
import { createRepoRestoreActivities, restoredDiskPath } from '../activities/repo-restore';
import { repoRestoreWorkflowId, type RepoRestorePlanRequest } from '../common/repo-restore';
import { BAD_INPUT } from '../common/failures';
import { restoreFromRepo } from '../client/repo-restore';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { FakeHost } from './helpers/fake-hosts';
import { storePoint } from './helpers/repo-point';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';
import { maybeRecordHistory } from './helpers/histories';

/** A stored VM: one raw disk with data, a serial console file. */
const domainXml = (name: string) => `<domain type='kvm'>
  <name>${name}</name>
  <uuid>0b8e5a8e-1111-2222-3333-444455556666</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/srv/a/${name}-vda.raw'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='/srv/a/${name}.console.log'/><target port='0'/></serial>
  </devices>
</domain>`;

/**
 * The target host's side of a restore from the repository, on the fake hypervisor with a real (file) repository:
 * names from manifests checked, only planned files written, only recorded files removed, private modes, and a define
 * keyed by the planned UUID (a retry after a lost completion finds its own VM).
 */
describe('restore from the repository: the host side (fake hypervisor)', () => {
  let dir: string;
  let url: string;
  let keyFile: string;
  let host: FakeHost;
  let imagesDir: string;
  let stateDir: string;
  let acts: ReturnType<typeof createRepoRestoreActivities>;
  let umask: number;
  const group = 'g';
  const snapshotId = 's1';

  beforeAll(async () => {
    // Modes must not depend on the umask: the most permissive one.
    umask = process.umask(0);
    dir = await mkdtemp(join(tmpdir(), 'gs-rrf-'));
    url = pathToFileURL(join(dir, 'repo')).href;
    const key = randomBytes(32);
    keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    const repo = await Repository.init(url, key, { chunkSize: 1024 * 1024 });
    try {
      const image = join(dir, 'db-1-vda.raw');
      const data = Buffer.alloc(3 * 1024 * 1024);
      data.fill(0x5a, 1024 * 1024, 2 * 1024 * 1024);
      writeFileSync(image, data);
      await storePoint(repo, {
        group,
        snapshotId,
        vms: [
          {
            domain: 'db-1',
            host: 'hva',
            domainXml: domainXml('db-1'),
            disks: [{ target: 'vda', image, format: 'raw' }],
          },
        ],
      });
      // A point whose VM manifest names a disk target (and so a file name) that leads out of the images dir.
      await storePoint(repo, {
        group,
        snapshotId: 'evil',
        vms: [
          {
            domain: 'db-1',
            host: 'hva',
            domainXml: domainXml('db-1'),
            disks: [{ target: 'vda', image, format: 'raw' }],
          },
        ],
      });
      const m = await repo.readGroupManifest(group, 'evil');
      const vm = await repo.readManifestAt<VmManifest>(m.vms[0].manifest);
      vm.disks[0].target = '/../../../../etc/x';
      await repo.writeSealedJson(m.vms[0].manifest, vm);
    } finally {
      repo.close();
    }
  });

  afterAll(async () => {
    process.umask(umask);
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(() => {
    host = new FakeHost(uniqueId('rrf'));
    imagesDir = join(host.dir, 'images');
    stateDir = join(host.dir, 'state');
    mkdirSync(stateDir);
    acts = createRepoRestoreActivities({
      hypervisor: host.hypervisor,
      hostId: host.hostId,
      imagesDir,
      stateDir,
      keyFile,
    });
  });

  afterEach(() => host.cleanup());

  /**
   * The fake, whose `defineDomain` defines the VM and then fails as a lost completion would (the worker dies before
   * reporting it): `times` times, or, with `forever`, every later look at the host fails too (so define never
   * completes and the restore is compensated).
   */
  const losingDefine = (inner: Hypervisor, opts: { forever?: boolean } = {}) => {
    let defined = 0;
    return new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'defineDomain')
          return async (xml: string) => {
            const r = await target.defineDomain(xml);
            defined++;
            if (defined === 1 || opts.forever) throw new Error('connection to the worker lost (injected)');
            return r;
          };
        if (prop === 'listDomains' && opts.forever)
          return async () => {
            if (defined > 0) throw new Error('libvirt unreachable (injected)');
            return target.listDomains();
          };
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
  };

  describe('through the workflow', () => {
    let running: RunningHosts | undefined;
    let temporal: Awaited<ReturnType<typeof connectTestClient>>;
    const env = { ...process.env };

    beforeAll(async () => {
      temporal = await connectTestClient();
    });
    afterAll(async () => {
      await temporal.close();
    });
    afterEach(async () => {
      await running?.stop();
      running = undefined;
      process.env = { ...env };
    });

    /** An in-process worker for `host` over `hypervisor`, with the repository key and images dir of this test. */
    const serve = async (hypervisor: Hypervisor) => {
      process.env.GROUPSNAP_REPO_KEY_FILE = keyFile;
      process.env.GROUPSNAP_IMAGES_DIR = imagesDir;
      running = await startHosts([{ hostId: host.hostId, hypervisor }]);
    };

    it('a define whose completion was lost is retried to success: the retry finds its own VM', async () => {
      await serve(losingDefine(host.hypervisor));
      const result = await restoreFromRepo(
        temporal.client,
        { group, snapshotId, repo: url, toHost: host.hostId, format: 'raw', noNetwork: true, start: false },
        { keyFile },
      );
      expect(result.status).toBe('restored');
      const workflowId = repoRestoreWorkflowId(group, result.restoreId);
      await maybeRecordHistory(temporal.client, workflowId, 'repo-restore-define-retried');
      const vm = result.vms[0];
      expect(host.hypervisor.domains.get(vm.domain)?.uuid).toBe(vm.uuid);
      expect(statSync(vm.disks[0].file).mode & 0o777).toBe(0o600);
    });

    it('compensation after a lost define completion removes the VM it made, by the planned UUID', async () => {
      await serve(losingDefine(host.hypervisor, { forever: true }));
      const result = await restoreFromRepo(
        temporal.client,
        { group, snapshotId, repo: url, toHost: host.hostId, format: 'raw', noNetwork: true, start: false },
        { keyFile },
      );
      // Something was made (and rolled back): a failed restore, not bad input.
      expect(result.status).toBe('failed');
      const workflowId = repoRestoreWorkflowId(group, result.restoreId);
      await maybeRecordHistory(temporal.client, workflowId, 'repo-restore-compensated');
      expect([...host.hypervisor.domains.keys()]).toEqual([]);
      for (const d of result.vms[0].disks) expect(existsSync(d.file)).toBe(false);
    });
  });

  const planReq = (restoreId: string, over: Partial<RepoRestorePlanRequest> = {}): RepoRestorePlanRequest => ({
    repo: url,
    group,
    snapshotId,
    restoreId,
    mode: 'clone',
    suffix: `-${restoreId}`,
    format: 'qcow2',
    ...over,
  });
  const mode = (file: string) => statSync(file).mode & 0o777;

  it('a restored disk path never leaves the images dir', () => {
    expect(restoredDiskPath('/img', 'db-1-r1', 'vda', 'r1', 'raw')).toBe('/img/db-1-r1.vda.r1.raw');
    for (const [domain, target] of [
      ['x', '/../../../../etc/x'],
      ['../../etc', 'vda'],
      ['a/b', 'vda'],
      ['..', 'vda'],
    ])
      expect(() => restoredDiskPath('/img', domain, target, 'r1', 'raw')).toThrow(
        expect.objectContaining({ type: BAD_INPUT }),
      );
  });

  it('refuses a point whose manifests name an unsafe disk target, before anything is written or recorded', async () => {
    await expect(acts.repoRestorePlan(planReq('r0', { snapshotId: 'evil' }))).rejects.toMatchObject({
      type: BAD_INPUT,
      message: expect.stringContaining(`disk target of db-1 "/../../../../etc/x" is not valid`),
    });
    expect(existsSync(join(stateDir, 'repo-restores', 'r0.json'))).toBe(false);
  });

  it('writes only the files a restore planned; private files whatever the umask', async () => {
    // Not planned by any restore: refused, nothing written.
    const stray = join(dir, 'stray.qcow2');
    await expect(
      acts.rebuildDisk({ repo: url, group, snapshotId, domain: 'db-1', target: 'vda', file: stray, format: 'qcow2' }),
    ).rejects.toMatchObject({ type: BAD_INPUT });
    expect(existsSync(stray)).toBe(false);

    const plan = await acts.repoRestorePlan(planReq('r1'));
    const record = join(stateDir, 'repo-restores', 'r1.json');
    expect(mode(record)).toBe(0o600);
    const disk = plan.vms[0].disks[0];
    expect(disk.file).toBe(join(imagesDir, 'db-1-r1.vda.r1.qcow2'));
    // A planned file, but claimed for another disk or format: refused.
    await expect(
      acts.rebuildDisk({ repo: url, group, snapshotId, domain: 'db-1', target: 'vda', file: disk.file, format: 'raw' }),
    ).rejects.toMatchObject({ type: BAD_INPUT });
    const r = await acts.rebuildDisk({
      repo: url,
      group,
      snapshotId,
      domain: 'db-1',
      target: 'vda',
      file: disk.file,
      format: 'qcow2',
    });
    expect(r.bytesWritten).toBe(1024 * 1024);
    expect(mode(disk.file)).toBe(0o600);
    expect(existsSync(`${disk.file}.raw.part`)).toBe(false);

    const raw = await acts.repoRestorePlan(planReq('r2', { format: 'raw' }));
    const rawFile = raw.vms[0].disks[0].file;
    await acts.rebuildDisk({
      repo: url,
      group,
      snapshotId,
      domain: 'db-1',
      target: 'vda',
      file: rawFile,
      format: 'raw',
    });
    expect(mode(rawFile)).toBe(0o600);
  });

  it('removes only the files a restore of that VM recorded', async () => {
    const plan = await acts.repoRestorePlan(planReq('r3', { format: 'raw' }));
    const v = plan.vms[0];
    await acts.rebuildDisk({
      repo: url,
      group,
      snapshotId,
      domain: 'db-1',
      target: 'vda',
      file: v.disks[0].file,
      format: 'raw',
    });
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'keep me');
    chmodSync(victim, 0o600);
    await expect(acts.removeRestoredVm({ domain: v.domain, files: [v.disks[0].file, victim] })).rejects.toMatchObject({
      type: BAD_INPUT,
      message: expect.stringContaining(victim),
    });
    expect(existsSync(victim)).toBe(true);
    expect(existsSync(v.disks[0].file)).toBe(true);
    // Another VM's name with this restore's files: refused too.
    await expect(acts.removeRestoredVm({ domain: 'other', files: [v.disks[0].file] })).rejects.toMatchObject({
      type: BAD_INPUT,
    });
    await acts.removeRestoredVm({ domain: v.domain, files: [v.disks[0].file] });
    expect(existsSync(v.disks[0].file)).toBe(false);
  });

  it('defines with the planned UUID; a retried define returns the VM it made; compensation without the define result removes it', async () => {
    const plan = await acts.repoRestorePlan(planReq('r4', { format: 'raw' }));
    const v = plan.vms[0];
    expect(v.uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(v.uuid).not.toBe('0b8e5a8e-1111-2222-3333-444455556666');
    await acts.rebuildDisk({
      repo: url,
      group,
      snapshotId,
      domain: 'db-1',
      target: 'vda',
      file: v.disks[0].file,
      format: 'raw',
    });
    const req = {
      repo: url,
      group,
      snapshotId,
      restoreId: 'r4',
      vm: v,
      mode: 'clone' as const,
      networkMap: {},
      noNetwork: true,
    };
    const first = await acts.defineRestoredVm(req);
    expect(first).toEqual({ domain: v.domain, uuid: v.uuid });
    // The completion of the first was lost: the retry finds the VM of that name and UUID, its own.
    await expect(acts.defineRestoredVm(req)).resolves.toEqual(first);
    // A VM of that name with another UUID is not this restore's: refused.
    await acts.removeRestoredVm({ domain: v.domain, files: [] });
    await host.hypervisor.defineDomain(domainXml(v.domain));
    await expect(acts.defineRestoredVm(req)).rejects.toMatchObject({ type: BAD_INPUT });
    // ... and compensation leaves it alone.
    await acts.removeRestoredVm({ domain: v.domain, files: v.disks.map((d) => d.file) });
    expect(host.hypervisor.domains.has(v.domain)).toBe(true);
    await host.hypervisor.undefine(v.domain);

    // Compensation that never saw define's result (no uuid in its request) removes the VM by the planned UUID.
    await acts.defineRestoredVm(req);
    await acts.removeRestoredVm({ domain: v.domain, files: v.disks.map((d) => d.file) });
    expect(host.hypervisor.domains.has(v.domain)).toBe(false);
    expect(existsSync(v.disks[0].file)).toBe(false);
  });

  it('plans only the VMs asked for (a tier of a recovery plan); a name not in the point is refused, nothing recorded', async () => {
    await expect(acts.repoRestorePlan(planReq('r6', { vms: ['db-1', 'nope'] }))).rejects.toMatchObject({
      type: BAD_INPUT,
      message: expect.stringContaining(`VM "nope" is not in ${group} ${snapshotId}`),
    });
    expect(existsSync(join(stateDir, 'repo-restores', 'r6.json'))).toBe(false);
    const plan = await acts.repoRestorePlan(planReq('r7', { vms: ['db-1'] }));
    expect(plan.vms.map((v) => v.source)).toEqual(['db-1']);
  });

  it('restores as the original with the stored UUID', async () => {
    const plan = await acts.repoRestorePlan(planReq('r5', { mode: 'original', format: 'raw' }));
    expect(plan.vms[0]).toMatchObject({ domain: 'db-1', uuid: '0b8e5a8e-1111-2222-3333-444455556666' });
  });
});

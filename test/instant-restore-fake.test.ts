import { randomBytes } from 'node:crypto';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Repository } from '../backup/repository';
import type { InstantServer, ServeSpec } from '../activities/repo-restore';
import { runDrill } from '../client/drill';
import { restoreFromRepo } from '../client/repo-restore';
import { repoRestoreWorkflowId } from '../common/repo-restore';
import type { FakeHypervisor } from '../hypervisor/fake-hypervisor';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { nbdUrl } from '../hypervisor/images';
import { FakeHost } from './helpers/fake-hosts';
import { storePoint } from './helpers/repo-point';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';
import { maybeRecordHistory } from './helpers/histories';

const diskXml = (name: string, target: string) =>
  `<disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/srv/a/${name}-${target}.raw'/><target dev='${target}' bus='virtio'/></disk>`;

const domainXml = (name: string, targets = ['vda']) => `<domain type='kvm'>
  <name>${name}</name>
  <uuid>${randomBytes(16)
    .toString('hex')
    .replace(/(.{8})(.{4})(.{4})(.{4})(.{12})/, '$1-$2-$3-$4-$5')}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    ${targets.map((t) => diskXml(name, t)).join('\n    ')}
  </devices>
</domain>`;

/**
 * A serving process in memory: "serves" each export by putting the point's data into the fake's image at the
 * export's URL; it can die and lose the store like the real one.
 */
class FakeServer implements InstantServer {
  running = false;
  storeReachable = true;
  starts = 0;
  stops = 0;
  /** How long a start takes (the real one: Node, the repository opened, the sockets). */
  startMs = 0;
  constructor(private readonly hv: FakeHypervisor) {}
  async start(spec: ServeSpec) {
    if (this.startMs) await new Promise((r) => setTimeout(r, this.startMs));
    this.running = true;
    this.starts++;
    for (const e of spec.exports) {
      const url = nbdUrl(e.socket, e.exportName);
      this.hv.images.set(url, { format: 'raw', data: new Map([['point', `${e.domain}:${e.target}`]]), touched: false });
    }
  }
  async status() {
    return { running: this.running, ready: this.running, storeReachable: this.running && this.storeReachable };
  }
  async stop() {
    this.running = false;
    this.stops++;
  }
}

/** The fake with a hook before the first call of `op` (e.g. the first block pull: hydration has begun). */
function hooked(inner: FakeHypervisor, op: keyof Hypervisor, hook: (domain: string) => void): Hypervisor {
  let fired = false;
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      const fn = (value as (...a: unknown[]) => unknown).bind(target);
      if (prop !== op) return fn;
      return async (...args: unknown[]) => {
        const r = await fn(...args);
        if (!fired) {
          fired = true;
          hook(args[0] as string);
        }
        return r;
      };
    },
  });
}

/**
 * Instant restore through the workflow on the fake hypervisor with a real (file) repository and an in-memory serving
 * process: VMs run before hydration, hydration completes (the disks hold the point and the guests' writes, no NBD
 * backing left, serving stopped), a store outage pauses and resumes, a dead server is restarted and the disks
 * re-opened, and a failure before the VMs ran removes everything.
 */
describe('instant restore from the repository (fake hypervisor)', () => {
  let dir: string;
  let url: string;
  let keyFile: string;
  let host: FakeHost;
  let server: FakeServer;
  let running: RunningHosts | undefined;
  let temporal: Awaited<ReturnType<typeof connectTestClient>>;
  const env = { ...process.env };
  const group = 'gi';
  const group2 = 'gi2';
  const snapshotId = 's1';

  beforeAll(async () => {
    temporal = await connectTestClient();
    dir = await mkdtemp(join(tmpdir(), 'gs-instant-'));
    url = pathToFileURL(join(dir, 'repo')).href;
    const key = randomBytes(32);
    keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    const repo = await Repository.init(url, key, { chunkSize: 1024 * 1024 });
    try {
      const image = join(dir, 'vda.raw');
      // 2 MiB of data, then a 1 MiB chunk of zeros (no data in the point: marked in the overlays).
      writeFileSync(image, Buffer.concat([Buffer.alloc(2 * 1024 * 1024, 0x5a), Buffer.alloc(1024 * 1024)]));
      await storePoint(repo, {
        group,
        snapshotId,
        vms: ['db-1', 'app-1'].map((domain) => ({
          domain,
          host: 'hva',
          domainXml: domainXml(domain),
          disks: [{ target: 'vda', image, format: 'raw' as const }],
        })),
      });
      // VMs of two disks, each pulled from its own export.
      await storePoint(repo, {
        group: group2,
        snapshotId,
        vms: ['db-2', 'app-2'].map((domain) => ({
          domain,
          host: 'hva',
          domainXml: domainXml(domain, ['vda', 'vdb']),
          disks: ['vda', 'vdb'].map((target) => ({ target, image, format: 'raw' as const })),
        })),
      });
    } finally {
      repo.close();
    }
  });

  afterAll(async () => {
    await temporal.close();
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(() => {
    host = new FakeHost(uniqueId('inst'));
    server = new FakeServer(host.hypervisor);
    host.hypervisor.pullStep = 40;
  });

  afterEach(async () => {
    await running?.stop();
    running = undefined;
    process.env = { ...env };
    host.cleanup();
  });

  const serve = async (hypervisor: Hypervisor) => {
    process.env.GROUPSNAP_REPO_KEY_FILE = keyFile;
    process.env.GROUPSNAP_IMAGES_DIR = join(host.dir, 'images');
    running = await startHosts([{ hostId: host.hostId, hypervisor, instantServer: server }]);
  };

  const restore = (over: Record<string, unknown> = {}) =>
    restoreFromRepo(
      temporal.client,
      { group, snapshotId, repo: url, toHost: host.hostId, noNetwork: true, instant: true, ...over },
      { keyFile },
    );

  /** Every disk of the result: local (no backing), the point's data and what the guest wrote. */
  const expectHydrated = (result: Awaited<ReturnType<typeof restore>>) => {
    const hv = host.hypervisor;
    for (const v of result.vms) {
      expect(hv.domains.get(v.domain)?.state).toBe('running');
      for (const d of v.disks) {
        expect(hv.images.get(d.file)?.backing).toBeUndefined();
        expect(hv.readData(d.file, 'point')).toBe(`${v.source}:${d.target}`);
        expect(statSync(d.file).mode & 0o777).toBe(0o600);
      }
      // The persistent definition names no socket and no stop policy any more.
      const xml = hv.domains.get(v.domain)!.definedXml!;
      expect(xml).not.toContain("protocol='nbd'");
      expect(xml).not.toContain('.sock');
      expect(xml).not.toContain("error_policy='stop'");
    }
    expect(result.hydration?.every((d) => d.hydrated && d.done === d.total)).toBe(true);
    expect(server.running).toBe(false);
  };

  it('runs every VM on overlays over the exports, then hydrates them; the guests writes stay', async () => {
    let firstDefinition = '';
    await serve(
      hooked(host.hypervisor, 'blockPull', (domain) => {
        // Hydration has begun: the VMs run, defined over their exports with the stop policies.
        firstDefinition = host.hypervisor.domains.get(domain)!.definedXml!;
        host.hypervisor.writeData(domain, 'vda', 'guest', 'written during hydration');
      }),
    );
    const result = await restore();
    expect(result.status).toBe('restored');
    await maybeRecordHistory(temporal.client, repoRestoreWorkflowId(group, result.restoreId), 'repo-restore-instant');
    expect(result.instant).toBe(true);
    expect(result.runningAfterMs).toBeGreaterThan(0);
    expect(result.hydratedAfterMs).toBeGreaterThanOrEqual(result.runningAfterMs!);
    expect(firstDefinition).toContain("protocol='nbd'");
    expect(firstDefinition).toContain("error_policy='stop'");
    expect(firstDefinition).toContain("rerror_policy='stop'");
    // Each overlay was made with the point's zero chunk marked in it.
    for (const d of result.vms.flatMap((v) => v.disks))
      expect(host.hypervisor.overlayZeros.get(d.file)).toEqual([{ offset: 2 * 1024 * 1024, length: 1024 * 1024 }]);
    expectHydrated(result);
    const written = result.vms.find((v) => host.hypervisor.readData(v.disks[0].file, 'guest'));
    expect(written).toBeDefined();
  });

  it('--vm restores a subset of the point', async () => {
    await serve(host.hypervisor);
    const result = await restore({ vms: ['app-1'] });
    expect(result.vms.map((v) => v.source)).toEqual(['app-1']);
    expectHydrated(result);
  });

  it('a store outage pauses the VM (stop policy) until the server reaches the store again', async () => {
    await serve(
      hooked(host.hypervisor, 'blockPull', (domain) => {
        server.storeReachable = false;
        host.hypervisor.pauseOnIoError(domain);
        setTimeout(() => (server.storeReachable = true), 2500);
      }),
    );
    const result = await restore();
    expect(result.status).toBe('restored');
    expectHydrated(result);
    expect(host.hypervisor.calls.filter((c) => c.startsWith('resume:')).length).toBeGreaterThan(result.vms.length);
    expect(result.resumedAfterIoError?.length).toBe(1);
  });

  it('a dead serving process is restarted and the disks re-opened (managed save and restore)', async () => {
    await serve(
      hooked(host.hypervisor, 'blockPull', (domain) => {
        server.running = false;
        host.hypervisor.deadNbd.add(domain);
        host.hypervisor.pauseOnIoError(domain);
      }),
    );
    const result = await restore();
    expect(result.status).toBe('restored');
    expect(server.starts).toBe(2);
    expect(result.serverRestarts).toBe(1);
    expect(result.reopened?.length).toBeGreaterThan(0);
    expect(host.hypervisor.calls.some((c) => c.startsWith('managedSave:'))).toBe(true);
    expectHydrated(result);
  });

  it('a VM whose QEMU crashed during hydration is hydrated offline; its disks keep what it wrote', async () => {
    await serve(
      hooked(host.hypervisor, 'blockPull', (domain) => {
        host.hypervisor.writeData(domain, 'vda', 'guest', 'written before the crash');
        host.hypervisor.domains.get(domain)!.state = 'shutoff';
        host.hypervisor.pulls.clear();
      }),
    );
    const result = await restore();
    expect(result.status).toBe('restored');
    const crashed = result.vms.find((v) => v.state === 'shutoff')!;
    expect(host.hypervisor.readData(crashed.disks[0].file, 'guest')).toBe('written before the crash');
    for (const v of result.vms)
      for (const d of v.disks) {
        expect(host.hypervisor.images.get(d.file)?.backing).toBeUndefined();
        expect(host.hypervisor.readData(d.file, 'point')).toBe(`${v.source}:${d.target}`);
      }
    expect(server.running).toBe(false);
  });

  it('drill --instant: the clones are checked while they hydrate, then hydration stops and everything goes', async () => {
    // Hydration never ends here: the drill passes only if it checks the clones before it has.
    host.hypervisor.pullStep = 0;
    await serve(host.hypervisor);
    const r = await runDrill(temporal.client, {
      group,
      point: snapshotId,
      repo: url,
      toHost: host.hostId,
      instant: true,
      timeoutMs: 20_000,
    });
    expect(r.status).toBe('pass');
    expect(r.restore).toMatchObject({ instant: true, status: 'restored' });
    expect(r.restore?.runningAfterMs).toBeGreaterThan(0);
    expect(r.restore?.hydratedAfterMs).toBeUndefined();
    expect(r.vms.map((v) => v.source).sort()).toEqual(['app-1', 'db-1']);
    // Torn down: hydration cancelled first, then the clones and their overlays, then the serving process.
    const child = await temporal.client.workflow.getHandle(repoRestoreWorkflowId(group, r.drillId)).describe();
    expect(child.status.name).toBe('CANCELLED');
    expect([...host.hypervisor.domains.keys()]).toEqual([]);
    for (const v of r.restore!.vms) for (const d of v.disks) expect(existsSync(d.file)).toBe(false);
    expect(server.running).toBe(false);
    expect(server.stops).toBeGreaterThan(0);
  }, 60_000);

  it('on QEMU 7.2 every VM of two disks keeps running: one pull per VM at a time (two ending together crash it)', async () => {
    host.cleanup();
    host = new FakeHost(uniqueId('inst72'), { qemuVersion: { major: 7, minor: 2 } });
    server = new FakeServer(host.hypervisor);
    const pullsPerVm: number[] = [];
    await serve(
      new Proxy(host.hypervisor, {
        get(target, prop, receiver) {
          const value = Reflect.get(target, prop, receiver) as unknown;
          if (prop !== 'blockPull') return typeof value === 'function' ? value.bind(target) : value;
          return async (domain: string, disk: string, options: object) => {
            await target.blockPull(domain, disk, options);
            pullsPerVm.push([...target.pulls.keys()].filter((k) => k.startsWith(`${domain}\0`)).length);
          };
        },
      }),
    );
    const result = await restore({ group: group2, hydrateParallel: 4 });
    expect(result.status).toBe('restored');
    expect(result.vms).toHaveLength(2);
    expect(pullsPerVm.length).toBe(4);
    expect(Math.max(...pullsPerVm)).toBe(1);
    expectHydrated(result);
  });

  it('a failure before the VMs ran removes everything: VMs, overlays, serving', async () => {
    host.hypervisor.failOn('start', undefined);
    host.hypervisor.failOn('start', undefined);
    host.hypervisor.failOn('start', undefined);
    await serve(host.hypervisor);
    const result = await restore({ vms: ['db-1'] });
    expect(result.status).toBe('failed');
    expect([...host.hypervisor.domains.keys()]).toEqual([]);
    for (const d of result.vms[0].disks) expect(existsSync(d.file)).toBe(false);
    expect(server.running).toBe(false);
  });

  it('a define that fails while the point is still being served removes everything once serving has started', async () => {
    // The VMs are defined while the serving process starts: the compensations wait for both, so the server that
    // comes up after the failure is stopped too, and no overlay is left.
    server.startMs = 8000;
    for (let i = 0; i < 3; i++) host.hypervisor.failOn('define', undefined);
    await serve(host.hypervisor);
    const result = await restore({ vms: ['db-1'] });
    expect(result.status).toBe('failed');
    expect(server.starts).toBe(1);
    expect(server.running).toBe(false);
    expect([...host.hypervisor.domains.keys()]).toEqual([]);
    for (const d of result.vms[0].disks) expect(existsSync(d.file)).toBe(false);
  });
});

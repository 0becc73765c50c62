import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { Repository } from '../backup/repository';
import { waitForHostWorkers } from '../client';
import { createGroup, getGroup } from '../client/groups';
import { applyPlan, decideRecovery, recoveryProgress, startRecovery, type RecoverProgress } from '../client/plans';
import { recoverWorkflowId } from '../common/plans';
import { restartablePort } from '../dev/free-port';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { FakeHost } from './helpers/fake-hosts';
import { maybeRecordHistory } from './helpers/histories';
import { storePoint } from './helpers/repo-point';
import { RestartableServer } from './helpers/server-outage';
import { uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';

/**
 * A recovery plan through an outage of its orchestrator (issue 27): the Temporal server is SIGKILLed while the plan
 * runs and started again 2 s later on the same port and data. The run must go on where it was: tier 2 only after
 * tier 1 is ready, every tier restored once, each VM defined and started once, and the commit as without the outage.
 */
jest.setTimeout(120_000);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const domainXml = (name: string) => `<domain type='kvm'>
  <name>${name}</name>
  <uuid>${randomUUID()}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/srv/a/${name}-vda.raw'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>`;

/** When each domain was defined and started on a host (performance.now()), and `hook` before each define. */
interface Calls {
  defined: Map<string, number[]>;
  started: Map<string, number[]>;
}

function watched(inner: Hypervisor, calls: Calls, hook: (domain: string) => void): Hypervisor {
  const note = (m: Map<string, number[]>, d: string) => m.set(d, [...(m.get(d) ?? []), performance.now()]);
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      if (prop === 'defineDomain')
        return async (xml: string) => {
          const name = /<name>([^<]+)<\/name>/.exec(xml)?.[1] ?? '?';
          hook(name);
          const out = await inner.defineDomain(xml);
          note(calls.defined, name);
          return out;
        };
      if (prop === 'start')
        return async (domain: string, options?: { paused?: boolean }) => {
          await inner.start(domain, options);
          note(calls.started, domain);
        };
      return value.bind(target);
    },
  });
}

describe('recovery plan through a Temporal server outage (fake hypervisors, real Temporal SIGKILLed and restarted)', () => {
  let dir: string;
  let url: string;
  let imagesDir: string;
  let image: string;
  let key: Buffer;
  let server: RestartableServer;
  let hvb: FakeHost;
  let hvc: FakeHost;
  let hosts: RunningHosts;
  const calls: Calls = { defined: new Map(), started: new Map() };
  /** Per test: run before each define on a host. */
  let onDefine: (domain: string) => void = () => {};
  const env = { ...process.env };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gs-plans-outage-'));
    url = pathToFileURL(join(dir, 'repo')).href;
    key = randomBytes(32);
    const keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    (await Repository.init(url, key, { chunkSize: 1024 * 1024 })).close();
    image = join(dir, 'disk.raw');
    writeFileSync(image, Buffer.alloc(1024 * 1024, 0x5a));
    imagesDir = join(dir, 'images');
    mkdirSync(imagesDir);
    process.env.GROUPSNAP_REPO_KEY_FILE = keyFile;
    process.env.GROUPSNAP_IMAGES_DIR = imagesDir;
    server = await RestartableServer.start(await restartablePort(), join(dir, 'temporal.db'));
    hvb = new FakeHost(uniqueId('po-b'));
    hvc = new FakeHost(uniqueId('po-c'));
    hosts = await startHosts(
      [
        { hostId: hvb.hostId, hypervisor: watched(hvb.hypervisor, calls, (d) => onDefine(d)) },
        { hostId: hvc.hostId, hypervisor: watched(hvc.hypervisor, calls, (d) => onDefine(d)) },
      ],
      { address: server.address, allowDrillChecks: true },
    );
  }, 120_000);

  afterAll(async () => {
    await hosts?.stop();
    await server?.stop();
    hvb?.cleanup();
    hvc?.cleanup();
    process.env = { ...env };
    await rm(dir, { recursive: true, force: true });
  });

  /** `fn` with a client on a connection of its own (a connection made before a restart is not reused). */
  async function withClient<T>(fn: (c: Client) => Promise<T>): Promise<T> {
    const connection = await Connection.connect({ address: server.address });
    try {
      return await fn(new Client({ connection }));
    } finally {
      await connection.close();
    }
  }

  async function progressUntil(runId: string, ok: (p: RecoverProgress) => boolean): Promise<RecoverProgress> {
    for (let i = 0; i < 1200; i++) {
      const p = await withClient((c) => recoveryProgress(c, runId)).catch(() => undefined);
      if (p && ok(p)) return p;
      if (p && ['failed', 'stopped', 'committed', 'rolled-back', 'passed'].includes(p.state))
        throw new Error(`the run ended elsewhere: ${JSON.stringify(p)}`);
      await sleep(100);
    }
    throw new Error('progress never got there');
  }

  /** A group db, app1, app2 with point s1 in the repository, and its plan: db on B, then app1 on B and app2 on C. */
  async function newGroup(): Promise<{ g: string; marker: string }> {
    const g = uniqueId('po');
    const repo = await Repository.open(url, key);
    try {
      await storePoint(repo, {
        group: g,
        snapshotId: 's1',
        vms: ['db', 'app1', 'app2'].map((n) => ({
          domain: `${g}-${n}`,
          host: 'site-a',
          domainXml: domainXml(`${g}-${n}`),
          disks: [{ target: 'vda', image, format: 'raw' }],
        })),
      });
    } finally {
      repo.close();
    }
    const marker = join(dir, `${g}-db-ready`);
    await withClient(async (c) => {
      await createGroup(c, {
        name: g,
        selector: { vms: ['db', 'app1', 'app2'].map((n) => ({ domain: `${g}-${n}`, host: 'site-a' })) },
        repository: url,
      });
      await applyPlan(c, {
        name: `${g}-plan`,
        group: g,
        repository: url,
        placement: { default: hvb.hostId, vms: { [`${g}-app2`]: hvc.hostId } },
        tiers: [
          { name: 'db', vms: [{ vm: `${g}-db`, check: { command: `test -e ${marker}`, timeout: '90s' } }] },
          { name: 'app', vms: [{ vm: `${g}-app1` }, { vm: `${g}-app2` }] },
        ],
        decision: { timeout: '10m', onTimeout: 'rollback' },
      });
    });
    return { g, marker };
  }

  /** After the run: committed, in order, each tier restored once, each VM defined and started once, nothing else. */
  async function expectCommittedOnce(g: string, runId: string, dbReadyAt: number): Promise<void> {
    const p = await progressUntil(runId, (x) => x.state === 'awaiting-decision');
    expect(p.tiers.map((t) => t.state)).toEqual(['ready', 'ready']);
    expect(p.tiers[1].startedMs!).toBeGreaterThanOrEqual(p.tiers[0].readyMs!);
    // What the Temporal UI shows after the outage: the summary, and the progress (tier, VM, state, time to ready)
    // as the current details.
    const ui = await withClient(async (c) => {
      const h = c.workflow.getHandle(recoverWorkflowId(runId));
      const summary = await (await h.describe()).staticSummary();
      const meta = await h.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
      return { summary, details: meta.currentDetails ?? '' };
    });
    expect(ui.summary).toBe(
      `Failover recovery of ${g} by plan ${g}-plan (latest): 2 tiers on ${hvb.hostId}, ${hvc.hostId}`,
    );
    expect(ui.details).toMatch(
      new RegExp(`recovery ${runId} of ${g} by plan ${g}-plan, point s1: \\*\\*awaiting-decision`),
    );
    for (const [tier, vm, host] of [
      ['db', 'db', hvb.hostId],
      ['app', 'app1', hvb.hostId],
      ['app', 'app2', hvc.hostId],
    ])
      expect(ui.details).toMatch(
        new RegExp(`\\| ${tier} \\(ready\\) \\| ${g}-${vm} \\| ${host} \\| ${g}-${vm} \\| ready \\| \\d+\\.\\d s \\|`),
      );
    const r = await withClient((c) => decideRecovery(c, runId, 'commit'));
    expect(r.state).toBe('committed');
    expect(r.restores.map((x) => x.restoreId).sort()).toEqual([`${runId}-t1-h1`, `${runId}-t2-h1`, `${runId}-t2-h2`]);
    const vms = { db: `${g}-db`, app1: `${g}-app1`, app2: `${g}-app2` };
    for (const d of Object.values(vms)) {
      expect({ d, defined: calls.defined.get(d)?.length, started: calls.started.get(d)?.length }).toEqual({
        d,
        defined: 1,
        started: 1,
      });
    }
    // Tier 2's VMs were defined only after tier 1's check could pass.
    expect(calls.defined.get(vms.app1)![0]).toBeGreaterThan(dbReadyAt);
    expect(calls.defined.get(vms.app2)![0]).toBeGreaterThan(dbReadyAt);
    expect(hvb.state(vms.db)).toBe('running');
    expect(hvb.state(vms.app1)).toBe('running');
    expect(hvc.state(vms.app2)).toBe('running');
    expect(readdirSync(imagesDir).filter((f) => f.startsWith(g)).length).toBe(3);
    expect((await withClient((c) => getGroup(c, g))).selector).toEqual({
      vms: [
        { domain: vms.db, host: hvb.hostId },
        { domain: vms.app1, host: hvb.hostId },
        { domain: vms.app2, host: hvc.hostId },
      ],
    });
  }

  const runIdOf = (workflowId: string) => workflowId.split('/').at(-1)!;

  it("killed during tier 1's check, which passes while the server is down: the plan goes on from there", async () => {
    const { g, marker } = await newGroup();
    const handle = await withClient((c) => startRecovery(c, `${g}-plan`, { mode: 'failover' }));
    const runId = runIdOf(handle.workflowId);
    await progressUntil(runId, (p) => p.tiers[0]?.vms[0].state === 'checking');
    const restarted = server.outage();
    writeFileSync(marker, '');
    const dbReadyAt = performance.now();
    await restarted;
    await withClient((c) => waitForHostWorkers(c, [hvb.hostId, hvc.hostId]));
    await expectCommittedOnce(g, runId, dbReadyAt);
    await withClient((c) => maybeRecordHistory(c, handle.workflowId, 'recover-committed-after-outage'));
  });

  it("killed as tier 2's first VM is defined: tier 2 is restored once, the plan completes", async () => {
    const { g, marker } = await newGroup();
    writeFileSync(marker, '');
    let restarted: Promise<void> | undefined;
    let dbReadyAt = 0;
    onDefine = (d) => {
      if (d === `${g}-db`) dbReadyAt = performance.now();
      if (d === `${g}-app1` && !restarted) restarted = server.outage();
    };
    try {
      const handle = await withClient((c) => startRecovery(c, `${g}-plan`, { mode: 'failover' }));
      for (let i = 0; i < 600 && !restarted; i++) await sleep(100);
      expect(restarted).toBeDefined();
      await restarted;
      await withClient((c) => waitForHostWorkers(c, [hvb.hostId, hvc.hostId]));
      await expectCommittedOnce(g, runIdOf(handle.workflowId), dbReadyAt);
    } finally {
      onDefine = () => {};
    }
  });
});

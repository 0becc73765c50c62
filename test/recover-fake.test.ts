import { randomBytes, randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { readDrillRecord } from '../activities/drill';
import { Repository } from '../backup/repository';
import { createGroup, getGroup } from '../client/groups';
import { forgetHost, listHosts } from '../client/hosts';
import {
  applyPlan,
  createRecoveryTestSchedule,
  decideRecovery,
  getPlan,
  listPlans,
  recover,
  recoveryProgress,
  recoveryResult,
  startRecovery,
  type RecoverProgress,
} from '../client/plans';
import { BadInputError } from '../common/failures';
import { repoRestoreWorkflowId } from '../common/repo-restore';
import { scheduleIdFor } from '../common/schedule-spec';
import { FakeHost } from './helpers/fake-hosts';
import { maybeRecordHistory } from './helpers/histories';
import { storePoint } from './helpers/repo-point';
import { connectTestClient, uniqueId } from './helpers/temporal';
import { startHosts, type RunningHosts } from './helpers/workers';
import { CLI, WorkerProcess } from './helpers/worker-process';
import { testServerAddress } from './helpers/temporal';
import { snapshotNamedGroup } from '../client/snapshots';

const exec = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const domainXml = (name: string, uuid: string) => `<domain type='kvm'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/srv/a/${name}-vda.raw'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>`;

/**
 * Recovery plans on fake hypervisors with a real (file) repository and real Temporal: tiers in order, each VM's
 * check before the next tier, a failed check, commit, rollback, test runs, the decision's timeout policy, bad plans.
 */
describe('recovery plans (fake hypervisors)', () => {
  let dir: string;
  let url: string;
  let keyFile: string;
  let image: string;
  let imagesDir: string;
  let hva: FakeHost;
  let hvb: FakeHost;
  let hvc: FakeHost;
  /** The workflow worker, in a process of its own so a test can SIGKILL it mid-plan. */
  let workflows: WorkerProcess;
  let workflowsStateDir: string;
  let running: RunningHosts;
  let temporal: Awaited<ReturnType<typeof connectTestClient>>;
  let server: Server;
  let port: number;
  const env = { ...process.env };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gs-plans-'));
    url = pathToFileURL(join(dir, 'repo')).href;
    const key = randomBytes(32);
    keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    (await Repository.init(url, key, { chunkSize: 1024 * 1024 })).close();
    image = join(dir, 'disk.raw');
    writeFileSync(image, Buffer.alloc(1024 * 1024, 0x5a));
    imagesDir = join(dir, 'images');
    mkdirSync(imagesDir);
    hva = new FakeHost(uniqueId('plans-a'));
    hvb = new FakeHost(uniqueId('plans-b'));
    hvc = new FakeHost(uniqueId('plans-c'));
    process.env.GROUPSNAP_REPO_KEY_FILE = keyFile;
    process.env.GROUPSNAP_IMAGES_DIR = imagesDir;
    temporal = await connectTestClient();
    running = await startHosts(
      [
        { hostId: hva.hostId, hypervisor: hva.hypervisor },
        { hostId: hvb.hostId, hypervisor: hvb.hypervisor },
        { hostId: hvc.hostId, hypervisor: hvc.hypervisor },
      ],
      { allowDrillChecks: true, workflows: false },
    );
    workflowsStateDir = join(dir, 'wf-state');
    mkdirSync(workflowsStateDir);
    workflows = new WorkerProcess(uniqueId('plans-wf'), workflowsStateDir, testServerAddress(), {
      workflows: true,
      args: ['--no-guard'],
    });
    await workflows.start(temporal.client, 180_000);
    // The TCP check's target: a listener on loopback.
    server = createServer((s) => s.end());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
  });

  afterAll(async () => {
    server.close();
    await workflows?.kill('SIGTERM');
    await running.stop();
    await temporal.close();
    hva.cleanup();
    hvb.cleanup();
    hvc.cleanup();
    process.env = { ...env };
    await rm(dir, { recursive: true, force: true });
  });

  /** A group of three VMs (db, app1, app2) with one point `s1` in the repository. */
  async function newGroup(): Promise<string> {
    const g = uniqueId('rp');
    const repo = await Repository.open(url, Buffer.from(readFileSync(keyFile, 'utf8'), 'base64'));
    try {
      await storePoint(repo, {
        group: g,
        snapshotId: 's1',
        vms: ['db', 'app1', 'app2'].map((n) => ({
          domain: `${g}-${n}`,
          host: 'site-a',
          domainXml: domainXml(`${g}-${n}`, randomUUID()),
          disks: [{ target: 'vda', image, format: 'raw' }],
        })),
      });
    } finally {
      repo.close();
    }
    await createGroup(temporal.client, {
      name: g,
      selector: { vms: ['db', 'app1', 'app2'].map((n) => ({ domain: `${g}-${n}`, host: 'site-a' })) },
      repository: url,
    });
    return g;
  }

  /** db on host B first (ready when its marker file exists), then app1 on B and app2 on C (TCP on loopback). */
  const planDoc = (g: string, over: Record<string, unknown> = {}) => ({
    name: `${g}-plan`,
    group: g,
    repository: url,
    placement: { default: hvb.hostId, vms: { [`${g}-app2`]: hvc.hostId } },
    tiers: [
      { name: 'db', vms: [{ vm: `${g}-db`, check: { command: `test -e ${dir}/${g}-db-ready`, timeout: '60s' } }] },
      {
        name: 'app',
        vms: [
          { vm: `${g}-app1`, check: { running: true, timeout: '30s' } },
          { vm: `${g}-app2`, check: { tcp: port, address: '127.0.0.1', timeout: '30s' } },
        ],
      },
    ],
    decision: { timeout: '10m', onTimeout: 'rollback' },
    ...over,
  });

  const ready = (g: string) => writeFileSync(join(dir, `${g}-db-ready`), '');
  const runIdOf = (workflowId: string) => workflowId.split('/').at(-1)!;

  async function progressUntil(runId: string, ok: (p: RecoverProgress) => boolean): Promise<RecoverProgress> {
    for (let i = 0; ; i++) {
      const p = await recoveryProgress(temporal.client, runId).catch(() => undefined);
      if (p && ok(p)) return p;
      if (i > 600 || (p && ['failed', 'committed', 'rolled-back', 'passed'].includes(p.state)))
        throw new Error(`progress never got there: ${JSON.stringify(p)}`);
      await sleep(100);
    }
  }

  /** What of group `g` is left on the recovery hosts: VMs, and files in the images dir. */
  const leftOf = (g: string) => ({
    vms: [hva, hvb, hvc].flatMap((h) => [...h.hypervisor.domains.keys()]).filter((d) => d.startsWith(g)),
    files: readdirSync(imagesDir).filter((f) => f.startsWith(g)),
  });

  it('failover: tier 2 starts only once tier 1 is ready; commit leaves the group running and protected', async () => {
    const g = await newGroup();
    await applyPlan(temporal.client, planDoc(g, { commit: { schedule: { cron: '0 3 * * *' } } }));
    const handle = await startRecovery(temporal.client, `${g}-plan`, { mode: 'failover' });
    const runId = runIdOf(handle.workflowId);
    await progressUntil(runId, (p) => p.tiers[0]?.vms[0].state === 'checking');
    // Tier 1's VM runs, as the original; tier 2's VMs do not exist, and stay so while tier 1 is not ready.
    expect(hvb.state(`${g}-db`)).toBe('running');
    await sleep(2000);
    const waiting = await recoveryProgress(temporal.client, runId);
    expect(waiting.tiers.map((t) => t.state)).toEqual(['checking', 'waiting']);
    expect(hvb.hypervisor.domains.has(`${g}-app1`)).toBe(false);
    expect(hvc.hypervisor.domains.has(`${g}-app2`)).toBe(false);
    ready(g);
    const p = await progressUntil(runId, (x) => x.state === 'awaiting-decision');
    expect(p.tiers.map((t) => t.state)).toEqual(['ready', 'ready']);
    expect(p.tiers[1].startedMs!).toBeGreaterThanOrEqual(p.tiers[0].readyMs!);
    expect(p.rtoMs).toBeDefined();
    expect(hvb.state(`${g}-app1`)).toBe('running');
    expect(hvc.state(`${g}-app2`)).toBe('running');

    const r = await decideRecovery(temporal.client, runId, 'commit');
    expect(r).toMatchObject({ state: 'committed', decidedBy: 'update' });
    // The group is now the recovered VMs on their recovery hosts, still exported, with a schedule; its plan stays.
    const def = await getGroup(temporal.client, g);
    expect(def.selector).toEqual({
      vms: [
        { domain: `${g}-db`, host: hvb.hostId },
        { domain: `${g}-app1`, host: hvb.hostId },
        { domain: `${g}-app2`, host: hvc.hostId },
      ],
    });
    expect(def.repository).toBe(url);
    expect((await getPlan(temporal.client, `${g}-plan`)).group).toBe(g);
    const schedule = temporal.client.schedule.getHandle(scheduleIdFor(g));
    expect((await schedule.describe()).spec.calendars?.length ?? 0).toBeGreaterThanOrEqual(0);
    await schedule.delete();
    expect(leftOf(g).vms.sort()).toEqual([`${g}-app1`, `${g}-app2`, `${g}-db`]);
  });

  it('failover: rollback removes everything the run made', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g));
    const handle = await startRecovery(temporal.client, `${g}-plan`, { mode: 'failover' });
    const runId = runIdOf(handle.workflowId);
    await progressUntil(runId, (x) => x.state === 'awaiting-decision');
    expect(leftOf(g).vms).toHaveLength(3);
    const r = await decideRecovery(temporal.client, runId, 'rollback');
    expect(r.state).toBe('rolled-back');
    expect(leftOf(g)).toEqual({ vms: [], files: [] });
    // The group is as it was.
    expect((await getGroup(temporal.client, g)).selector).toEqual({
      vms: ['db', 'app1', 'app2'].map((n) => ({ domain: `${g}-${n}`, host: 'site-a' })),
    });
  });

  it('failover: with no answer, the timeout policy applies (rollback)', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g, { decision: { timeout: '2s', onTimeout: 'rollback' } }));
    const r = await recover(temporal.client, `${g}-plan`, { mode: 'failover' });
    expect(r).toMatchObject({ state: 'rolled-back', decidedBy: 'timeout' });
    expect(leftOf(g)).toEqual({ vms: [], files: [] });
  });

  it('test: isolated clones, checked tier by tier, torn down, the result recorded beside the point', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g));
    const r = await recover(temporal.client, `${g}-plan`, { mode: 'test' });
    expect(r.state).toBe('passed');
    expect(r.tiers.map((t) => t.state)).toEqual(['ready', 'ready']);
    // Clones: the run's suffix, no network interfaces.
    expect(r.tiers[0].vms[0].domain).toBe(`${g}-db-${r.runId}`);
    expect(r.restores.every((x) => x.mode === 'clone')).toBe(true);
    expect(r.tiers.flatMap((t) => t.vms.map((v) => v.state))).toEqual(['removed', 'removed', 'removed']);
    expect(leftOf(g)).toEqual({ vms: [], files: [] });
    const repo = await Repository.open(url, Buffer.from(readFileSync(keyFile, 'utf8'), 'base64'));
    try {
      const record = (await readDrillRecord(repo, g, 's1')) as unknown as Record<string, unknown>;
      expect(record).toMatchObject({ drillId: r.runId, status: 'pass', readiness: 'plan', plan: `${g}-plan` });
      expect(record.rtoMs).toBe(r.rtoMs);
      expect(record.tiers).toHaveLength(2);
    } finally {
      repo.close();
    }
  });

  const restoreIdsOf = (runId: string) => [`${runId}-t1-h1`, `${runId}-t2-h1`, `${runId}-t2-h2`];
  const childStatus = async (g: string, restoreId: string) =>
    (await temporal.client.workflow.getHandle(repoRestoreWorkflowId(g, restoreId)).describe()).status.name;

  it('restore: instant: each tier is checked while its restore hydrates; a test run stops hydrating and tears down', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g, { restore: 'instant' }));
    // Hydration never ends: the plan gets past a tier only if it checks the VMs while they hydrate.
    for (const h of [hvb, hvc]) h.hypervisor.pullStep = 0;
    try {
      const r = await recover(temporal.client, `${g}-plan`, { mode: 'test' });
      expect(r.state).toBe('passed');
      for (const restoreId of restoreIdsOf(r.runId)) {
        const history = await temporal.client.workflow.getHandle(repoRestoreWorkflowId(g, restoreId)).fetchHistory();
        const payload = history.events![0].workflowExecutionStartedEventAttributes!.input!.payloads![0];
        const input = JSON.parse(Buffer.from(payload.data!).toString('utf8')) as Record<string, unknown>;
        expect(input).toMatchObject({ instant: true, restoreId, mode: 'clone' });
        // Torn down: the hydration was cancelled before the VMs were removed.
        expect(await childStatus(g, restoreId)).toBe('CANCELLED');
      }
      expect(r.restores.every((x) => x.instant && x.runningAfterMs !== undefined && !x.hydratedAfterMs)).toBe(true);
      expect(leftOf(g)).toEqual({ vms: [], files: [] });
    } finally {
      for (const h of [hvb, hvc]) h.hypervisor.pullStep = 50;
    }
    // Torn down once hydrated: nothing left.
    expect(leftOf(g)).toEqual({ vms: [], files: [] });
  });

  it('instant: each tier is checked while its VMs hydrate, the next tier starts before; commit waits for the hydration', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g, { restore: 'instant' }));
    // Hydration in 25 polls of a second each: far longer than the plan takes to get every tier ready.
    for (const h of [hvb, hvc]) h.hypervisor.pullStep = 4;
    try {
      const handle = await startRecovery(temporal.client, `${g}-plan`, { mode: 'failover' });
      const runId = runIdOf(handle.workflowId);
      const p = await progressUntil(runId, (x) => x.state === 'awaiting-decision');
      expect(p.tiers.map((t) => t.state)).toEqual(['ready', 'ready']);
      const restore = (k: string) => temporal.client.workflow.getHandle(repoRestoreWorkflowId(g, `${runId}-${k}`));
      // Tier 1's restore still hydrates: tier 2 did not wait for it.
      expect((await restore('t1-h1').describe()).status.name).toBe('RUNNING');
      const r = await decideRecovery(temporal.client, runId, 'commit');
      expect(r.state).toBe('committed');
      expect(r.error).toBeUndefined();
      for (const k of ['t1-h1', 't2-h1', 't2-h2']) {
        const d = await restore(k).describe();
        expect({ k, status: d.status.name }).toEqual({ k, status: 'COMPLETED' });
      }
      // Committed once hydrated: every disk local, no backing over the repository's export.
      for (const [h, vm] of [
        [hvb, `${g}-db`],
        [hvb, `${g}-app1`],
        [hvc, `${g}-app2`],
      ] as const)
        expect(h.chain(vm)).toHaveLength(1);
      await maybeRecordHistory(temporal.client, handle.workflowId, 'recover-instant-committed');
      await maybeRecordHistory(
        temporal.client,
        repoRestoreWorkflowId(g, `${runId}-t1-h1`),
        'repo-restore-instant-in-plan',
      );
    } finally {
      for (const h of [hvb, hvc]) h.hypervisor.pullStep = 50;
    }
  });

  it('instant: a rollback while the VMs hydrate cancels the hydration, then removes everything', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g, { restore: 'instant' }));
    for (const h of [hvb, hvc]) h.hypervisor.pullStep = 10;
    try {
      const handle = await startRecovery(temporal.client, `${g}-plan`, { mode: 'failover' });
      const runId = runIdOf(handle.workflowId);
      await progressUntil(runId, (x) => x.state === 'awaiting-decision');
      const t1 = temporal.client.workflow.getHandle(repoRestoreWorkflowId(g, `${runId}-t1-h1`));
      expect((await t1.describe()).status.name).toBe('RUNNING');
      const r = await decideRecovery(temporal.client, runId, 'rollback');
      expect(r.state).toBe('rolled-back');
      expect(r.error).toBeUndefined();
      expect((await t1.describe()).status.name).toBe('CANCELLED');
      expect(leftOf(g)).toEqual({ vms: [], files: [] });
    } finally {
      for (const h of [hvb, hvc]) h.hypervisor.pullStep = 50;
    }
  });

  it('a failed check stops the plan: test mode tears down; failover leaves the VMs until rollback', async () => {
    const g = await newGroup();
    const failing = planDoc(g, {
      tiers: [
        { name: 'db', vms: [{ vm: `${g}-db`, check: { command: 'echo no database; exit 3', timeout: '1s' } }] },
        { name: 'app', vms: [{ vm: `${g}-app1` }, { vm: `${g}-app2` }] },
      ],
    });
    await applyPlan(temporal.client, failing);
    const t = await recover(temporal.client, `${g}-plan`, { mode: 'test' });
    expect(t.state).toBe('failed');
    expect(t.error).toContain('not ready');
    expect(t.tiers[0].vms[0].reason).toContain('check exited 3: no database');
    expect(t.tiers[1].state).toBe('waiting');
    expect(t.restores).toHaveLength(1);
    expect(leftOf(g)).toEqual({ vms: [], files: [] });

    const handle = await startRecovery(temporal.client, `${g}-plan`, { mode: 'failover' });
    const runId = runIdOf(handle.workflowId);
    const stopped = await progressUntil(runId, (x) => x.state === 'stopped');
    expect(stopped.tiers.map((x) => x.state)).toEqual(['failed', 'waiting']);
    // Left for inspection: tier 1's VM only.
    expect(leftOf(g).vms).toEqual([`${g}-db`]);
    await expect(decideRecovery(temporal.client, runId, 'commit')).rejects.toThrow(BadInputError);
    const r = await decideRecovery(temporal.client, runId, 'rollback');
    expect(r.state).toBe('rolled-back');
    expect(leftOf(g)).toEqual({ vms: [], files: [] });
    await recoveryResult(handle);
  });

  it('a workflow worker SIGKILLed mid-plan: the run resumes where it was, each tier restored once', async () => {
    const g = await newGroup();
    await applyPlan(temporal.client, planDoc(g));
    const handle = await startRecovery(temporal.client, `${g}-plan`, { mode: 'failover' });
    const runId = runIdOf(handle.workflowId);
    await progressUntil(runId, (p) => p.tiers[0]?.vms[0].state === 'checking');
    await workflows.kill('SIGKILL');
    const killed = workflows.hostId;
    ready(g);
    workflows = new WorkerProcess(uniqueId('plans-wf'), workflowsStateDir, testServerAddress(), {
      workflows: true,
      args: ['--no-guard'],
    });
    await workflows.start(temporal.client, 180_000);
    // The killed worker's (unused) host leaves the registry, as an operator would remove a host that is gone.
    await forgetHost(temporal.client, killed);
    await progressUntil(runId, (x) => x.state === 'awaiting-decision');
    const r = await decideRecovery(temporal.client, runId, 'commit');
    expect(r.state).toBe('committed');
    // One restore per tier and host: nothing was restored twice.
    expect(r.restores.map((x) => x.restoreId).sort()).toEqual([`${runId}-t1-h1`, `${runId}-t2-h1`, `${runId}-t2-h2`]);
    expect(leftOf(g).vms.sort()).toEqual([`${g}-app1`, `${g}-app2`, `${g}-db`]);
  });

  it('failback: snapshot and export on the recovery side after a commit, then a plan back to the original site', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g));
    const there = await startRecovery(temporal.client, `${g}-plan`, { mode: 'failover' });
    await progressUntil(runIdOf(there.workflowId), (x) => x.state === 'awaiting-decision');
    expect((await decideRecovery(temporal.client, runIdOf(there.workflowId), 'commit')).state).toBe('committed');
    // Hosts other test files registered and stopped would fail the export's inventory (it asks every registered
    // host): forget them, as an operator removes hosts that are gone.
    const ours = new Set([hva.hostId, hvb.hostId, hvc.hostId]);
    for (const h of await listHosts(temporal.client))
      if (!ours.has(h.hostId)) await forgetHost(temporal.client, h.hostId);
    // Protected on the recovery side: a snapshot of the recovered VMs, exported to the repository as a new point.
    const snap = await snapshotNamedGroup(temporal.client, g);
    expect(snap.snapshot.status).toBe('completed');
    expect(snap.export?.error).toBeUndefined();
    expect(snap.export).toMatchObject({ status: 'completed' });
    // The plan back: every VM to the original site (host A), in the same order.
    const back = planDoc(g, {
      name: `${g}-back`,
      placement: { default: hva.hostId },
      tiers: [
        { name: 'db', vms: [{ vm: `${g}-db` }] },
        { name: 'app', vms: [{ vm: `${g}-app1` }, { vm: `${g}-app2` }] },
      ],
    });
    await applyPlan(temporal.client, back);
    const test = await recover(temporal.client, `${g}-back`, { mode: 'test', point: snap.snapshot.snapshotId });
    expect(test.state).toBe('passed');
    const home = await startRecovery(temporal.client, `${g}-back`, {
      mode: 'failover',
      point: snap.snapshot.snapshotId,
    });
    await progressUntil(runIdOf(home.workflowId), (x) => x.state === 'awaiting-decision');
    expect((await decideRecovery(temporal.client, runIdOf(home.workflowId), 'commit')).state).toBe('committed');
    expect((await getGroup(temporal.client, g)).selector).toEqual({
      vms: ['db', 'app1', 'app2'].map((n) => ({ domain: `${g}-${n}`, host: hva.hostId })),
    });
    expect([...hva.hypervisor.domains.keys()].filter((d) => d.startsWith(g)).sort()).toEqual([
      `${g}-app1`,
      `${g}-app2`,
      `${g}-db`,
    ]);
  });

  it('the CLI: a test run with --watch prints the progress as it changes; test runs on a Schedule', async () => {
    const g = await newGroup();
    ready(g);
    await applyPlan(temporal.client, planDoc(g));
    const env = { ...process.env, TEMPORAL_ADDRESS: testServerAddress(), TEMPORAL_NAMESPACE: 'default' };
    const { stdout } = await exec(process.execPath, [CLI, 'recover', `${g}-plan`, '--mode', 'test', '--watch'], {
      env,
    });
    expect(stdout).toMatch(/recovery rc-\w+ started/);
    // Printed as it changed: more than one state of the run, the last one with every tier ready.
    expect(stdout.match(/^--- /gm)!.length).toBeGreaterThanOrEqual(2);
    expect(stdout).toMatch(/: (STARTING|RECOVERING)\n/);
    expect(stdout).toMatch(/tier app: ready/);
    expect(stdout).toMatch(/: PASSED, last tier ready after/);
    const printed = await exec(
      process.execPath,
      [CLI, 'plan', 'define', `${g}-flags`, '--group', g, '--repo', url, '--host', hvb.hostId, '--tier', `db:${g}-db`],
      { env },
    );
    expect(printed.stdout).toBe(`plan ${g}-flags of group ${g} created\n`);
    expect((await getPlan(temporal.client, `${g}-flags`)).tiers).toEqual([
      { name: 'db', vms: [{ vm: `${g}-db`, check: { kind: 'running', timeoutMs: 300_000 } }] },
    ]);
    // A plan file through the CLI: stored as written, and shown back as YAML that applies again.
    const shown = await exec(process.execPath, [CLI, 'plan', 'show', `${g}-plan`], { env });
    const file = join(dir, `${g}-plan.yaml`);
    writeFileSync(file, shown.stdout);
    const applied = await exec(process.execPath, [CLI, 'plan', 'apply', file], { env });
    expect(applied.stdout).toBe(`plan ${g}-plan of group ${g} replaced\n`);
    const list = await exec(process.execPath, [CLI, 'plan', 'list'], { env });
    expect(list.stdout).toContain(`${g}-plan  group ${g}  db(1) -> app(2)`);

    const scheduleId = await createRecoveryTestSchedule(temporal.client, `${g}-plan`, { cron: '0 4 * * 6' });
    const schedule = temporal.client.schedule.getHandle(scheduleId);
    try {
      await schedule.pause();
      await schedule.trigger();
      let done: string | undefined;
      for (let i = 0; i < 600 && !done; i++) {
        const recent = (await schedule.describe()).info.recentActions;
        const started = recent[0]?.action.workflow;
        if (started) {
          const h = temporal.client.workflow.getHandle(started.workflowId, started.firstExecutionRunId);
          if ((await h.describe()).status.name === 'COMPLETED') done = (await recoveryResult(h)).state;
        }
        if (!done) await sleep(200);
      }
      expect(done).toBe('passed');
    } finally {
      await schedule.delete();
    }
    expect(leftOf(g)).toEqual({ vms: [], files: [] });
  });

  it('bad plans are refused naming every problem, and nothing is stored (client, and the CLI with exit 2)', async () => {
    const g = await newGroup();
    const bad = {
      ...planDoc(g),
      repository: 'http://x',
      restore: 'sometimes',
      tiers: [
        { name: 'db', vms: [{ vm: `${g}-db`, check: { tcp: 70000, timeout: '1s' } }] },
        { name: 'db', vms: [{ vm: `${g}-db`, check: { serial: '(', command: 'true' } }] },
      ],
      placement: { vms: { other: 'h' } },
      extra: 1,
    };
    const err = await applyPlan(temporal.client, bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BadInputError);
    const message = (err as Error).message;
    for (const want of [
      'repository',
      'restore',
      'tiers.0.vms.0.check.tcp',
      "a tcp check needs the VM's address",
      'tiers.1.vms.0.check.serial',
      'give exactly one check',
      `VM ${g}-db is listed twice`,
      'has no recovery host',
      'VM other is in no tier',
      'tier names must differ',
      'extra',
    ])
      expect(message).toContain(want);
    // A plan of a group that does not exist.
    await expect(applyPlan(temporal.client, { ...planDoc(g), group: `${g}-none` })).rejects.toThrow(/unknown group/);
    expect((await listPlans(temporal.client)).filter((p) => p.group === g)).toEqual([]);

    const file = join(dir, `${g}-bad.yaml`);
    writeFileSync(file, `name: ${g}-plan\ngroup: ${g}\nrepository: ftp://x\ntiers: []\n`);
    const cli = await exec(process.execPath, [CLI, 'plan', 'apply', file], {
      env: { ...process.env, TEMPORAL_ADDRESS: '127.0.0.1:1' },
    }).catch((e: { code: number; stderr: string }) => e);
    expect(cli).toMatchObject({ code: 2 });
    expect((cli as { stderr: string }).stderr).toMatch(/repository.*tiers|tiers.*repository/s);
    expect((await listPlans(temporal.client)).filter((p) => p.group === g)).toEqual([]);
  });
});

import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { readDrillRecord } from '../activities/drill';
import { snapshotGroup } from '../client';
import { createGroup } from '../client/groups';
import { snapshotNamedGroup } from '../client/snapshots';
import { applyPlan, decideRecovery, recoveryProgress, recoveryResult, startRecovery } from '../client/plans';
import { getGroup } from '../client/groups';
import { ensureGuestImage, workloadDomainXml } from '../dev/guest';
import { storePoint, type PointVm } from './helpers/repo-point';
import { startDrFixture, type DrFixture } from './helpers/dr-fixture';
import { uniqueId } from './helpers/temporal';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const READY = 'GROUPSNAP-RECOVERY .* ok=1';

/**
 * A 2-tier recovery plan on two real hypervisors: two crash-consistency workload guests run on host A and are
 * group-snapshotted; the point goes to the repository and host A's VMs are destroyed; a test run of the plan then
 * brings `db` back on host B first, waits for its boot-time self-check line on its serial log, and only then restores
 * and starts `app`. The order is checked from libvirt (the binding has no lifecycle events: the test polls host B's
 * domains and their states, and the db clone's serial log, as the run goes), then the run tears everything down.
 */
describe('recovery plans on real hypervisors', () => {
  let fx: DrFixture;
  let connB: libvirt.Connection;
  const group = uniqueId('plans-rv');
  let snapshotId: string;
  const names = { db: `${group}-db`, app: `${group}-app` };

  beforeAll(async () => {
    const bootDir = (await ensureGuestImage()).dir;
    fx = await startDrFixture({ workerArgsB: ['--allow-drill-checks', '--boot-files-dir', bootDir] });
    connB = await libvirt.open(fx.hosts.host(fx.hostB).uri);
    const a = fx.hosts.host(fx.hostA);
    const connA = await libvirt.open(a.uri);
    const repo = await fx.repo();
    const doms: libvirt.Domain[] = [];
    try {
      const vms: PointVm[] = [];
      const logs: string[] = [];
      for (const name of Object.values(names)) {
        const disks = { vda: join(a.imagesDir, `${name}-vda.qcow2`), vdb: join(a.imagesDir, `${name}-vdb.qcow2`) };
        const consoleLog = join(a.imagesDir, `${name}.console.log`);
        for (const f of Object.values(disks)) await run('qemu-img', ['create', '-q', '-f', 'qcow2', f, '64M']);
        const xml = workloadDomainXml({ name, role: 'solo', disks, image: await ensureGuestImage(), consoleLog });
        const dom = await connA.defineXML(xml);
        await dom.create();
        doms.push(dom);
        logs.push(consoleLog);
      }
      // Both write a while before the cut.
      const deadline = Date.now() + 150_000;
      while (!logs.every((l) => /gs: solo n=\d*[1-9]/.test(readFileSync(l, 'latin1')))) {
        if (Date.now() > deadline) throw new Error('the workloads never got going');
        await sleep(500);
      }
      const snap = await snapshotGroup(fx.client, {
        group,
        vms: Object.values(names).map((domain) => ({ domain, host: fx.hostA })),
      });
      expect(snap.status).toBe('completed');
      snapshotId = snap.snapshotId;
      for (const [i, dom] of doms.entries())
        vms.push({
          domain: Object.values(names)[i],
          host: fx.hostA,
          domainXml: await dom.xml(libvirt.DomainXMLFlags.INACTIVE),
          disks: snap.vms
            .find((v) => v.domain === Object.values(names)[i])!
            .disks.map((d) => ({ target: d.target, image: d.image })),
        });
      await storePoint(repo, { group, snapshotId, vms });
      const b = fx.hosts.host(fx.hostB).user!;
      await run('chown', ['-R', `${b.uid}:${b.gid}`, join(fx.dir, 'repo')]);
    } finally {
      for (const dom of doms) {
        await dom.destroy().catch(() => undefined);
        await dom.undefine().catch(() => undefined);
      }
      repo.close();
      await connA.close();
      await fx.workerA.stop();
    }
    await createGroup(fx.client, {
      name: group,
      selector: { vms: Object.values(names).map((domain) => ({ domain, host: fx.hostA })) },
    });
  });

  afterAll(async () => {
    await connB?.close();
    await fx?.close();
  });

  it("a 2-tier test run: tier 2 is defined and started on host B only after tier 1's VM is ready; nothing left", async () => {
    const imagesB = fx.hosts.host(fx.hostB).imagesDir;
    const before = { domains: (await connB.listAllDomains()).map((d) => d.name).sort(), files: readdirSync(imagesB) };
    await applyPlan(fx.client, {
      name: `${group}-plan`,
      group,
      repository: fx.url,
      placement: { default: fx.hostB },
      tiers: [
        { name: 'db', vms: [{ vm: names.db, check: { serial: READY, timeout: '200s' } }] },
        { name: 'app', vms: [{ vm: names.app, check: { serial: READY, timeout: '200s' } }] },
      ],
    });
    // libvirt's lifecycle events on host B, and, as each of the app clone's arrives, whether the db clone's serial
    // log already held its ready line.
    const events: { name: string; event: string; timestampMs: number; dbReady?: boolean }[] = [];
    const runId = uniqueId('rc');
    const clone = { db: `${names.db}-${runId}`, app: `${names.app}-${runId}` };
    const dbReadyNow = () => {
      const log = readdirSync(imagesB).find((f) => f.startsWith(clone.db) && f.endsWith('.log'));
      return !!log && new RegExp(READY).test(readFileSync(join(imagesB, log), 'latin1'));
    };
    const stopEvents = await connB.onLifecycle((e) =>
      events.push({ name: e.name, event: e.event, timestampMs: e.timestampMs, dbReady: dbReadyNow() }),
    );
    const handle = await startRecovery(fx.client, `${group}-plan`, { mode: 'test', point: snapshotId, runId });
    // What libvirt on host B shows, polled while the run goes: when each clone was first defined and first running,
    // and when the db clone's serial log first held its ready line.
    const seen: Record<string, { defined?: number; running?: number }> = { [clone.db]: {}, [clone.app]: {} };
    let dbReadyLine: number | undefined;
    let tick = 0;
    for (;;) {
      tick++;
      for (const d of await connB.listAllDomains()) {
        const s = seen[d.name];
        if (!s) continue;
        s.defined ??= tick;
        if (d.state === 'running') s.running ??= tick;
      }
      if (dbReadyLine === undefined) {
        const log = readdirSync(imagesB).find((f) => f.startsWith(clone.db) && f.endsWith('.log'));
        if (log && new RegExp(READY).test(readFileSync(join(imagesB, log), 'latin1'))) dbReadyLine = tick;
      }
      if ((await handle.describe()).status.name !== 'RUNNING') break;
      await sleep(250);
    }
    await stopEvents();
    const result = await recoveryResult(handle);
    expect(result.error).toBeUndefined();
    expect(result).toMatchObject({ state: 'passed', snapshotId });
    expect(result.tiers.map((t) => t.state)).toEqual(['ready', 'ready']);
    // The order, from libvirt: db running, then its ready line, and only then the app clone defined and started.
    expect(seen[clone.db].running).toBeDefined();
    expect(dbReadyLine).toBeDefined();
    expect(seen[clone.app].defined).toBeDefined();
    expect(seen[clone.db].running!).toBeLessThanOrEqual(dbReadyLine!);
    expect(seen[clone.app].defined!).toBeGreaterThan(dbReadyLine!);
    expect(seen[clone.app].running!).toBeGreaterThan(dbReadyLine!);
    // From the lifecycle events: db defined and started before app was defined; when app's define and start
    // arrived, db's ready line was already in its serial log.
    const at = (name: string, event: string) => events.find((e) => e.name === name && e.event === event);
    expect(at(clone.db, 'started')).toBeDefined();
    expect(at(clone.app, 'defined')).toMatchObject({ dbReady: true });
    expect(at(clone.app, 'started')).toMatchObject({ dbReady: true });
    expect(at(clone.app, 'defined')!.timestampMs).toBeGreaterThanOrEqual(at(clone.db, 'started')!.timestampMs);
    // And from the run: tier 2 started after tier 1 was ready.
    expect(result.tiers[1].startedMs!).toBeGreaterThanOrEqual(result.tiers[0].readyMs!);
    expect((await recoveryProgress(fx.client, runId)).state).toBe('passed');
    // Torn down, and recorded beside the point.
    expect((await connB.listAllDomains()).map((d) => d.name).sort()).toEqual(before.domains);
    expect(readdirSync(imagesB).sort()).toEqual(before.files.sort());
    const repo = await fx.repo();
    try {
      expect(await readDrillRecord(repo, group, snapshotId)).toMatchObject({ drillId: runId, status: 'pass' });
    } finally {
      repo.close();
    }
  });

  it('failover as the original VMs: rollback leaves nothing on host B; commit leaves a group that snapshots there', async () => {
    const imagesB = fx.hosts.host(fx.hostB).imagesDir;
    const before = { domains: (await connB.listAllDomains()).map((d) => d.name).sort(), files: readdirSync(imagesB) };
    await applyPlan(fx.client, {
      name: `${group}-fo`,
      group,
      repository: fx.url,
      placement: { default: fx.hostB },
      tiers: [
        { name: 'db', vms: [{ vm: names.db, check: { serial: READY, timeout: '200s' } }] },
        { name: 'app', vms: [{ vm: names.app, check: { serial: READY, timeout: '200s' } }] },
      ],
      decision: { timeout: '10m', onTimeout: 'rollback' },
    });
    const untilDecision = async (runId: string) => {
      for (;;) {
        const p = await recoveryProgress(fx.client, runId);
        if (p.state === 'awaiting-decision') return p;
        if (['failed', 'stopped', 'rolled-back', 'committed'].includes(p.state)) throw new Error(JSON.stringify(p));
        await sleep(500);
      }
    };
    const first = await startRecovery(fx.client, `${group}-fo`, { mode: 'failover', point: snapshotId });
    const firstId = first.workflowId.split('/').at(-1)!;
    await untilDecision(firstId);
    expect((await connB.listAllDomains()).map((d) => d.name)).toEqual(expect.arrayContaining([names.db, names.app]));
    expect((await decideRecovery(fx.client, firstId, 'rollback')).state).toBe('rolled-back');
    expect((await connB.listAllDomains()).map((d) => d.name).sort()).toEqual(before.domains);
    expect(readdirSync(imagesB).sort()).toEqual(before.files.sort());

    const second = await startRecovery(fx.client, `${group}-fo`, { mode: 'failover', point: snapshotId });
    const secondId = second.workflowId.split('/').at(-1)!;
    await untilDecision(secondId);
    try {
      expect((await decideRecovery(fx.client, secondId, 'commit')).state).toBe('committed');
      expect((await getGroup(fx.client, group)).selector).toEqual({
        vms: [names.db, names.app].map((domain) => ({ domain, host: fx.hostB })),
      });
      // Protected on the recovery side: the group snapshots there.
      const snap = await snapshotNamedGroup(fx.client, group);
      expect(snap.snapshot.status).toBe('completed');
      expect(snap.members).toEqual([names.db, names.app].map((domain) => ({ domain, host: fx.hostB })));
    } finally {
      for (const name of [names.db, names.app]) {
        const dom = await connB.lookupByName(name).catch(() => undefined);
        await dom?.destroy().catch(() => undefined);
        await dom?.undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA).catch(() => undefined);
      }
    }
  });

  it("host B's worker SIGKILLed during tier 1's check: the run resumes on its restarted worker and passes", async () => {
    const imagesB = fx.hosts.host(fx.hostB).imagesDir;
    const before = { domains: (await connB.listAllDomains()).map((d) => d.name).sort(), files: readdirSync(imagesB) };
    const handle = await startRecovery(fx.client, `${group}-plan`, { mode: 'test', point: snapshotId });
    const runId = handle.workflowId.split('/').at(-1)!;
    for (;;) {
      const p = await recoveryProgress(fx.client, runId);
      if (p.tiers[0]?.vms[0].state === 'checking') break;
      if (p.state !== 'starting' && p.state !== 'recovering') throw new Error(JSON.stringify(p));
      await sleep(250);
    }
    await fx.workerB.kill('SIGKILL');
    await fx.workerB.start(fx.client);
    const result = await recoveryResult(handle);
    expect(result.error).toBeUndefined();
    expect(result.state).toBe('passed');
    // Each tier restored once; everything torn down.
    expect(result.restores.map((r) => r.restoreId)).toEqual([`${runId}-t1-h1`, `${runId}-t2-h1`]);
    expect((await connB.listAllDomains()).map((d) => d.name).sort()).toEqual(before.domains);
    expect(readdirSync(imagesB).sort()).toEqual(before.files.sort());
  });
});

import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as libvirt from '@groupsnap/libvirt';
import { readDrillRecord } from '../activities/drill';
import { snapshotGroup } from '../client';
import { createDrillSchedule, lastDrill, runDrill } from '../client/drill';
import { drillScheduleId, drillWorkflowId } from '../common/drill';
import type { DrillResult } from '../common/drill';
import { ensureGuestImage, workloadDomainXml } from '../dev/guest';
import { storePoint } from './helpers/repo-point';
import { startDrFixture, type DrFixture } from './helpers/dr-fixture';
import { uniqueId } from './helpers/temporal';
import { maybeRecordHistory } from './helpers/histories';
import { repoRestoreWorkflowId } from '../common/repo-restore';
import { CLI } from './helpers/worker-process';

const run = promisify(execFile);

/**
 * DR drills on two real hypervisors: a crash-consistency workload guest (kernel + busybox, writing dependent records
 * to its two disks) runs on host A and is group-snapshotted; the point goes to the repository and host A's VM is
 * destroyed; drills then restore it on host B as isolated clones, boot them, wait for the guest's boot-time
 * self-check on its serial console (or a check command), record the outcome and tear the clones down.
 */
describe('DR drills of a repository point on another hypervisor', () => {
  let fx: DrFixture;
  let connB: libvirt.Connection;
  const group = 'drill';
  const shareGroup = 'drill-share';
  let snapshotId: string;

  const domainsOnB = async () => (await connB.listAllDomains()).map((d) => d.name).sort();
  const filesOnB = () => readdirSync(fx.hosts.host(fx.hostB).imagesDir).sort();
  const cli = (...args: string[]) =>
    run(process.execPath, [CLI, ...args, '--address', fx.server.address]).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
    );

  beforeAll(async () => {
    // The guest boots its kernel directly: host B's worker allows that directory's read-only boot files.
    const bootDir = (await ensureGuestImage()).dir;
    fx = await startDrFixture({ workerArgsB: ['--allow-drill-checks', '--boot-files-dir', bootDir] });
    connB = await libvirt.open(fx.hosts.host(fx.hostB).uri);
    // Host A: one workload guest, snapshotted while it writes; the point stored; then the VM is gone.
    const a = fx.hosts.host(fx.hostA);
    const connA = await libvirt.open(a.uri);
    const name = uniqueId('gs-drill');
    const disks = { vda: join(a.imagesDir, `${name}-vda.qcow2`), vdb: join(a.imagesDir, `${name}-vdb.qcow2`) };
    const consoleLog = join(a.imagesDir, `${name}.console.log`);
    const repo = await fx.repo();
    try {
      for (const f of Object.values(disks)) await run('qemu-img', ['create', '-q', '-f', 'qcow2', f, '64M']);
      const xml = workloadDomainXml({
        name,
        role: 'solo',
        disks,
        image: await ensureGuestImage(),
        consoleLog,
        ring: 2000,
      });
      const dom = await connA.defineXML(xml);
      await dom.create();
      // Let the workload write a while.
      const { readFileSync } = await import('node:fs');
      const deadline = Date.now() + 120_000;
      while (!/gs: solo n=\d*[1-9]/.test(readFileSync(consoleLog, 'latin1'))) {
        if (Date.now() > deadline)
          throw new Error(`the workload never got going:\n${readFileSync(consoleLog, 'latin1')}`);
        await new Promise((r) => setTimeout(r, 500));
      }
      const snap = await snapshotGroup(fx.client, { group, vms: [{ domain: name, host: fx.hostA }] });
      expect(snap.status).toBe('completed');
      snapshotId = snap.snapshotId;
      const stored = {
        domain: name,
        host: fx.hostA,
        domainXml: await dom.xml(libvirt.DomainXMLFlags.INACTIVE),
        disks: snap.vms[0].disks.map((d) => ({ target: d.target, image: d.image })),
      };
      await storePoint(repo, { group, snapshotId, vms: [stored] });
      // The same point in another group, its stored definition also sharing a host directory (injected, as any
      // holder of the key could write it): a drill refuses it, or strips the share when asked.
      const share = `<filesystem type='mount'><source dir='${fx.dir}'/><target dir='hostshare'/></filesystem>`;
      await storePoint(repo, {
        group: shareGroup,
        snapshotId,
        vms: [{ ...stored, domainXml: stored.domainXml.replace('</devices>', `${share}</devices>`) }],
      });
      await dom.destroy();
      await dom.undefine();
      // Host B's worker writes the drill records: the repository is its user's (as a host's would be).
      const b = fx.hosts.host(fx.hostB).user!;
      await run('chown', ['-R', `${b.uid}:${b.gid}`, join(fx.dir, 'repo')]);
    } finally {
      repo.close();
      await connA.close();
      await fx.workerA.stop();
    }
  });

  afterAll(async () => {
    await connB?.close();
    await fx?.close();
  });

  it("passes on the guest's boot-time self-check line; records the times beside the point; leaves nothing behind", async () => {
    const domains = await domainsOnB();
    const files = filesOnB();
    const { code, stdout, stderr } = await cli(
      'drill',
      group,
      '--repo',
      fx.url,
      '--to-host',
      fx.hostB,
      '--serial-line',
      'GROUPSNAP-RECOVERY .* ok=1',
      '--timeout',
      '240',
      '--json',
    );
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const result = JSON.parse(stdout) as DrillResult;
    expect(result).toMatchObject({ status: 'pass', snapshotId, readiness: 'serial-line' });
    expect(result.recordError).toBeUndefined();
    // A verdict, not the console's text (which stays on the host).
    expect(result.evidence).toEqual(['serial line /GROUPSNAP-RECOVERY .* ok=1/ seen on 1/1 VMs']);
    expect(result.rtoMs).toBeGreaterThanOrEqual(result.restoreMs! + result.readyMs! - 1);
    // Isolated: the clone had no network interface.
    expect(result.restore!.vms[0].domain).toBe(`${result.restore!.vms[0].source}-${result.drillId}`);
    // Torn down.
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);
    // Recorded beside the point in the repository, and findable in Temporal.
    const repo = await fx.repo();
    try {
      expect(await readDrillRecord(repo, group, snapshotId)).toMatchObject({
        drillId: result.drillId,
        status: 'pass',
        rtoMs: result.rtoMs,
      });
    } finally {
      repo.close();
    }
    expect((await lastDrill(fx.client, group))?.drillId).toBe(result.drillId);
  });

  it('--instant: the clone passes its self-check over the point served from the repository; nothing is left', async () => {
    const domains = await domainsOnB();
    const files = filesOnB();
    const { code, stdout, stderr } = await cli(
      'drill',
      group,
      '--repo',
      fx.url,
      '--to-host',
      fx.hostB,
      '--instant',
      '--serial-line',
      'GROUPSNAP-RECOVERY .* ok=1',
      '--timeout',
      '240',
      '--json',
    );
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const result = JSON.parse(stdout) as DrillResult;
    expect(result).toMatchObject({ status: 'pass', snapshotId, readiness: 'serial-line' });
    expect(result.restore).toMatchObject({ instant: true, status: 'restored' });
    // The restore time is the time to running (the guest checked itself over the export, hydrating or not).
    expect(result.restoreMs).toBeGreaterThanOrEqual(result.restore!.runningAfterMs!);
    // Torn down: the clone, its overlays, and the serving process's state.
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);
    expect(existsSync(join(fx.workerB.stateDir, 'instant', result.drillId))).toBe(false);
  });

  it('fails (and still tears down) when the check command never succeeds', async () => {
    const domains = await domainsOnB();
    const result = await runDrill(fx.client, {
      group,
      repo: fx.url,
      toHost: fx.hostB,
      check: 'echo "VMs: $GROUPSNAP_DRILL_VMS"; exit 3',
      timeoutMs: 3000,
    });
    expect(result.status).toBe('fail');
    await maybeRecordHistory(fx.client, drillWorkflowId(group, result.drillId), 'drill-fail-torn-down');
    expect(result.error).toMatch(/not ready after 3000 ms: check exited 3: VMs: gs-drill-/);
    expect(await domainsOnB()).toEqual(domains);
    const repo = await fx.repo();
    try {
      expect(await readDrillRecord(repo, group, snapshotId)).toMatchObject({ drillId: result.drillId, status: 'fail' });
    } finally {
      repo.close();
    }
  });

  it('passes on a check command run on the target host (virsh of that host sees the clones running)', async () => {
    const result = await runDrill(fx.client, {
      group,
      point: snapshotId,
      repo: fx.url,
      toHost: fx.hostB,
      check:
        'for vm in $GROUPSNAP_DRILL_VMS; do virsh -c qemu:///session domstate "$vm" | grep -qx running || exit 1; done',
      timeoutMs: 60_000,
    });
    expect(result.error).toBeUndefined();
    expect(result.status).toBe('pass');
    await maybeRecordHistory(fx.client, drillWorkflowId(group, result.drillId), 'drill-pass-check');
    const restoreId = repoRestoreWorkflowId(group, result.drillId);
    await maybeRecordHistory(fx.client, restoreId, 'drill-pass-check-restore');
  });

  it('runs on a Temporal Schedule: a triggered scheduled drill drills the latest point', async () => {
    const scheduleId = await createDrillSchedule(
      fx.client,
      { group, repo: fx.url, toHost: fx.hostB, timeoutMs: 60_000 },
      { cron: '0 3 * * *', paused: true },
    );
    expect(scheduleId).toBe(drillScheduleId(group));
    const handle = fx.client.schedule.getHandle(scheduleId);
    try {
      await handle.trigger();
      const deadline = Date.now() + 30_000;
      let workflowId: string | undefined;
      while (!workflowId) {
        workflowId = (await handle.describe()).info.recentActions.at(-1)?.action.workflow.workflowId;
        if (Date.now() > deadline) throw new Error('the drill schedule started nothing');
        await new Promise((r) => setTimeout(r, 200));
      }
      const result = (await fx.client.workflow.getHandle(workflowId).result()) as DrillResult;
      expect(result).toMatchObject({ status: 'pass', snapshotId, readiness: 'running' });
    } finally {
      await handle.delete();
    }
  });

  it('a stored host directory share: refused with exit 2 (nothing made); with --strip-host-devices the drill passes and lists it', async () => {
    const domains = await domainsOnB();
    const files = filesOnB();
    const args = ['drill', shareGroup, '--repo', fx.url, '--to-host', fx.hostB, '--point', snapshotId];
    const refused = await cli(...args);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/<filesystem type="mount".*host directory share/);
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);
    const { code, stdout, stderr } = await cli(
      ...args,
      '--strip-host-devices',
      '--serial-line',
      'GROUPSNAP-RECOVERY .* ok=1',
      '--timeout',
      '240',
      '--json',
    );
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const result = JSON.parse(stdout) as DrillResult;
    expect(result.status).toBe('pass');
    expect(result.restore!.vms[0].removed).toEqual([
      expect.stringMatching(/<filesystem type="mount".*host directory share/),
    ]);
    expect(await domainsOnB()).toEqual(domains);
    expect(filesOnB()).toEqual(files);
  });

  it('bad input exits 2: no --to-host, an unknown point', async () => {
    expect((await cli('drill', group, '--repo', fx.url)).code).toBe(2);
    const unknown = await cli('drill', group, '--repo', fx.url, '--to-host', fx.hostB, '--point', 'gs-nope');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/gs-nope/);
  });
});

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import * as libvirt from '@groupsnap/libvirt';
import { createGroup, deleteGroupSnapshot, listGroupSnapshots, restoreGroup, snapshotNamedGroup } from '../client/dr';
import type { GroupRunResult } from '../common/groups';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import type { PinGroupSnapshotResult, ReleaseRestoreRecordsResult, RestoreRecordListing } from '../common/pins';
import { backingChain, VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { readsMarker, writeMarker } from './helpers/markers';
import { scopedHypervisor } from './helpers/scoped-hypervisor';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { vmsOf } from './helpers/schedules';
import { CLI } from './helpers/worker-process';
import { startHosts, type RunningHosts } from './helpers/workers';

const exec = promisify(execFile);

/**
 * Pinning and restore records on real libvirtd + QEMU VMs, driven through the CLI (built dist/): a pinned snapshot
 * outlives scheduled retention runs and refuses deletion, a clone built on it keeps it after it is unpinned, and
 * once the clone is released through `restore release` retention merges it away with the VMs' data intact
 * (markers written into the disks through QEMU before and after the snapshot).
 */
describe('snapshot pin / restore release on real VMs', () => {
  let connection: Connection;
  let client: Client;
  let namespace: string;
  let fleet: VmFleet;
  let hosts: RunningHosts;
  let hypervisor: LibvirtHypervisor;
  const hostId = uniqueId('pinh');
  const prefix = uniqueId('gspin');

  async function groupsnap(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await exec(process.execPath, [
        CLI,
        ...args,
        '--address',
        testServerAddress(),
        '--namespace',
        namespace,
      ]);
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }
  const json = async <T>(...args: string[]): Promise<T> => {
    const run = await groupsnap(...args, '--json');
    if (run.code !== 0) throw new Error(`groupsnap ${args.join(' ')} exited ${run.code}: ${run.stderr}${run.stdout}`);
    return JSON.parse(run.stdout) as T;
  };

  const activeSource = async (domain: string, target = 'vdb') =>
    parseDomainXml(await (await fleet.conn.lookupByName(domain)).xml()).disks.find((d) => d.target === target)!.source!;
  const exists = async (domain: string) => (await fleet.conn.listAllDomains()).some((d) => d.name === domain);

  beforeAll(async () => {
    namespace = await freshNamespace('gspinl');
    connection = await Connection.connect({ address: testServerAddress() });
    client = new Client({ connection, namespace });
    fleet = await VmFleet.create({ prefix, count: 2 });
    hypervisor = await LibvirtHypervisor.open('qemu:///system');
    hosts = await startHosts([{ hostId, hypervisor: scopedHypervisor(hypervisor, prefix) }], { namespace });
  });

  afterAll(async () => {
    await hosts?.stop();
    if (fleet) {
      for (const d of await fleet.conn.listAllDomains()) {
        if (!d.name.startsWith(prefix) || fleet.names.includes(d.name)) continue;
        const dom = await fleet.conn.lookupByName(d.name);
        await dom.destroy().catch(() => undefined);
        await dom.undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA).catch(() => undefined);
        dom.free();
      }
    }
    await hypervisor?.close();
    await fleet?.destroy();
    await connection?.close();
  });

  it('keeps a pinned snapshot through retention, then a clone built on it, until the clone is released', async () => {
    const [a, b] = fleet.names;
    const group = uniqueId('pinned');
    await createGroup(client, { name: group, selector: vmsOf([hostId, a], [hostId, b]) });
    const run = (): Promise<GroupRunResult> =>
      client.workflow.execute('groupSnapshotRun', {
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowId: uniqueId(`group-run/${group}/test`),
        args: [{ group, trigger: 'schedule', retention: { keepLast: 1 } }],
      }) as Promise<GroupRunResult>;

    for (const vm of [a, b]) await writeMarker(vm, 'vdb', 0x51, 0);
    const s1 = (await snapshotNamedGroup(client, group)).snapshot.snapshotId;
    for (const vm of [a, b]) await writeMarker(vm, 'vdb', 0x52, 65536);

    const pinned = await json<PinGroupSnapshotResult>('snapshot', 'pin', group, s1);
    expect(pinned.vms.map((v) => v.domain).sort()).toEqual([a, b].sort());
    expect((await listGroupSnapshots(client, group)).find((s) => s.snapshotId === s1)?.pinned).toBe(true);

    // Scheduled runs with "keep the last 1": the pinned snapshot stays, the runs' own older ones go.
    const runs: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await run();
      expect(r.snapshot.status).toBe('completed');
      expect(r.retention).toMatchObject({ failed: [], skipped: [{ snapshotId: s1, reason: 'pinned' }] });
      runs.push(r.snapshot.snapshotId);
    }
    expect((await listGroupSnapshots(client, group)).map((s) => s.snapshotId)).toEqual([runs[1], s1]);
    // base + s1's overlay (the last run's image) + the active layer.
    expect(await backingChain(await activeSource(a))).toHaveLength(3);
    await expect(deleteGroupSnapshot(client, group, s1)).rejects.toThrow(/pinned/);

    // A clone of the pinned snapshot reads its content: the marker before it, not the one after.
    const clone = await restoreGroup(client, { group, snapshotId: s1, mode: 'clone', suffix: '-p' });
    expect(clone.status).toBe('restored');
    for (const v of clone.vms) {
      const disk = v.disks.find((d) => d.target === 'vdb')!.overlay;
      expect(await readsMarker(disk, 0x51, 0)).toBe(true);
      expect(await readsMarker(disk, 0x52, 65536)).toBe(false);
    }
    const records = await json<RestoreRecordListing[]>('restore', 'list', group);
    expect(records.map((r) => [r.kind, r.domain, r.id, r.blocks]).sort()).toEqual(
      [
        ['clone', a, `${a}-p`, [s1]],
        ['clone', b, `${b}-p`, [s1]],
      ].sort(),
    );

    // Unpinned, it is still kept: the clones are built on it.
    const unpinned = await groupsnap('snapshot', 'unpin', group, s1);
    expect(unpinned.code).toBe(0);
    expect(unpinned.stdout).toContain('unpinned on 2 VM(s)');
    const kept = await run();
    expect(kept.retention?.deleted).toEqual([runs[1]]);
    expect(kept.retention?.skipped).toEqual([{ snapshotId: s1, reason: expect.stringMatching(/clone/) }]);

    // Release asks for confirmation, then removes the clones and their disks.
    const unconfirmed = await groupsnap('restore', 'release', `${a}-p`, `${b}-p`);
    expect(unconfirmed.code).toBe(2);
    expect(unconfirmed.stderr).toContain('--yes');
    expect(await exists(`${a}-p`)).toBe(true);
    const released = await json<ReleaseRestoreRecordsResult>('restore', 'release', `${a}-p`, `${b}-p`, '--yes');
    expect(released.released.map((r) => r.id).sort()).toEqual([`${a}-p`, `${b}-p`].sort());
    for (const r of released.released) for (const f of r.removed) expect(existsSync(f)).toBe(false);
    expect(await exists(`${a}-p`)).toBe(false);
    expect(await exists(`${b}-p`)).toBe(false);
    expect(await json<RestoreRecordListing[]>('restore', 'list', group)).toEqual([]);

    // Now retention merges it away; the VMs run on with both markers.
    const last = await run();
    expect(last.retention).toMatchObject({ failed: [], skipped: [] });
    expect(last.retention?.deleted.sort()).toEqual([s1, kept.snapshot.snapshotId].sort());
    expect((await listGroupSnapshots(client, group)).map((s) => s.snapshotId)).toEqual([last.snapshot.snapshotId]);
    for (const vm of [a, b]) {
      const active = await activeSource(vm);
      expect(await backingChain(active)).toHaveLength(2);
      expect(await readsMarker(active, 0x51, 0)).toBe(true);
      expect(await readsMarker(active, 0x52, 65536)).toBe(true);
      expect((await (await fleet.conn.lookupByName(vm)).state()).state).toBe('running');
    }
  }, 900_000);

  it('releases an in-place restore: it no longer blocks retention, and deleting its snapshots cleans up the old layers', async () => {
    const [a] = fleet.names;
    const group = uniqueId('inplace');
    await createGroup(client, { name: group, selector: vmsOf([hostId, a]) });
    await writeMarker(a, 'vdb', 0x61, 2 * 65536);
    const t1 = (await snapshotNamedGroup(client, group)).snapshot.snapshotId;
    await writeMarker(a, 'vdb', 0x62, 3 * 65536);
    const t2 = (await snapshotNamedGroup(client, group)).snapshot.snapshotId;
    await writeMarker(a, 'vdb', 0x63, 4 * 65536);

    const ip = await restoreGroup(client, { group, snapshotId: t2, mode: 'in-place', confirmInPlace: true });
    expect(ip.status).toBe('restored');
    const discarded = ip.vms[0].disks.find((d) => d.target === 'vdb')!.discarded!;
    const records = await json<RestoreRecordListing[]>('restore', 'list', group);
    expect(records).toEqual([
      // Built on t2's image, which is t1's overlay: it blocks both.
      expect.objectContaining({ kind: 'in-place', domain: a, id: ip.restoreId, snapshotId: t2 }),
    ]);
    expect([...records[0].blocks].sort()).toEqual([t1, t2].sort());
    const released = await json<ReleaseRestoreRecordsResult>('restore', 'release', ip.restoreId, '--yes');
    // The discarded layer (written after t2) is t2's overlay: kept until t2 goes.
    expect(released.released).toEqual([expect.objectContaining({ kind: 'in-place', id: ip.restoreId, removed: [] })]);
    const allDiscarded = ip.vms[0].disks.map((d) => d.discarded!);
    expect([...released.released[0].kept].sort()).toEqual(allDiscarded.sort());
    expect(existsSync(discarded)).toBe(true);
    expect(await json<RestoreRecordListing[]>('restore', 'list', group)).toEqual([]);

    const r = (await client.workflow.execute('groupSnapshotRun', {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: uniqueId(`group-run/${group}/test`),
      args: [{ group, trigger: 'schedule', retention: { keepLast: 1 } }],
    })) as GroupRunResult;
    expect(r.retention).toMatchObject({ failed: [], skipped: [] });
    expect(r.retention?.deleted.sort()).toEqual([t1, t2].sort());
    for (const f of allDiscarded) expect(existsSync(f)).toBe(false);
    const active = await activeSource(a);
    expect(await readsMarker(active, 0x61, 2 * 65536)).toBe(true);
    expect(await readsMarker(active, 0x62, 3 * 65536)).toBe(true);
    expect(await readsMarker(active, 0x63, 4 * 65536)).toBe(false);
    expect((await (await fleet.conn.lookupByName(a)).state()).state).toBe('running');
  }, 900_000);
});

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libvirt from '@groupsnap/libvirt';
import { parseVmMetadata } from '../common/catalog';
import { createHost } from '../activities/host-activities';
import type { SnapshotDisk } from '../common/dr-types';
import { BAD_INPUT } from '../common/failures';
import { backingChain, VmFleet } from '../dev/vms';
import { parseDomainXml } from '../hypervisor/domain-xml';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { readsMarker, writeMarker } from './helpers/markers';
import { mergeSocketPortChoices } from '../common/socket-ports';
import { freePort } from '../dev/free-port';
import { socketLinkPorts } from '../hypervisor/socket-links';

/**
 * Snapshot deletion (online and offline block commits), clone and in-place restores on real libvirtd + QEMU VMs,
 * through the host activities alone (no Temporal). Markers written into the VMs' disks through QEMU before each
 * snapshot show which content each image holds afterwards.
 */
describe('DR host activities on real VMs', () => {
  let fleet: VmFleet;
  let hv: LibvirtHypervisor;
  let host: ReturnType<typeof createHost>;
  let acts: ReturnType<typeof createHost>['activities'];
  let dir: string;
  let stateDir: string;

  // Marker 0x41 (A) at 64 KiB, 0x42 (B) at 128 KiB, ...: each at its own offset of vdb.
  const offset = (byte: number) => (byte - 0x40) * 65536;
  const mark = (vm: string, byte: number) => writeMarker(vm, 'vdb', byte, offset(byte));
  /** Which of the markers `bytes` image `file` reads. */
  const markers = async (file: string, bytes = [0x41, 0x42, 0x43, 0x44]) => {
    const out: string[] = [];
    for (const b of bytes) if (await readsMarker(file, b, offset(b))) out.push(String.fromCharCode(b));
    return out.join('');
  };
  const dom = (name: string) => fleet.conn.lookupByName(name);
  const state = async (name: string) => (await (await dom(name)).state()).state;
  const source = async (name: string, target = 'vdb') =>
    parseDomainXml(await (await dom(name)).xml()).disks.find((d) => d.target === target)!.source!;
  const meta = async (name: string) => parseVmMetadata(await hv.getMetadata(name));

  async function snap(vm: string, id: string): Promise<SnapshotDisk[]> {
    const planned = await acts.planVms({ snapshotId: id, domains: [vm], quiesce: 'none' });
    const leaseOwner = `run-${id}`;
    await acts.acquireLocks({ owner: leaseOwner, domains: [vm], ttlMs: 60_000 });
    const [report] = await acts.freezeVms({
      snapshotId: id,
      vms: planned,
      maxFreezeMs: 5000,
      release: 'local',
      host: 'h',
      quiesce: 'none',
      leaseOwner,
    });
    expect(report.error).toBeUndefined();
    await acts.recordCatalog({
      entry: { snapshotId: id, group: 'dr', createdAt: new Date().toISOString() },
      host: 'h',
      vms: planned.map((p) => ({ domain: p.domain, uuid: p.uuid, disks: p.disks })),
      leaseOwner,
    });
    await acts.releaseLocks({ owner: leaseOwner, domains: [vm] });
    return planned[0].disks;
  }

  /** Markers A before S1, B before S2, C before S3 (when `n` is 3), then the next one after the last snapshot. */
  async function history(vm: string, n: 2 | 3) {
    const snaps: SnapshotDisk[][] = [];
    for (let i = 0; i < n; i++) {
      await mark(vm, 0x41 + i);
      snaps.push(await snap(vm, `s${i + 1}`));
    }
    await mark(vm, 0x41 + n);
    return snaps.map((s) => s.find((d) => d.target === 'vdb')!);
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gs-drl-'));
    stateDir = await mkdtemp(join(tmpdir(), 'gs-drl-state-'));
    fleet = await VmFleet.create({ prefix: 'gs-drl', count: 6, dir });
    hv = await LibvirtHypervisor.open('qemu:///system');
    host = createHost({ hypervisor: hv, hostId: 'h', stateDir });
    acts = host.activities;
  });

  afterAll(async () => {
    host?.shutdown();
    // Clones live beside the fleet's VMs: remove them before the fleet goes.
    if (fleet) {
      for (const d of await fleet.conn.listAllDomains()) {
        if (!d.name.startsWith('gs-drl-') || fleet.names.includes(d.name)) continue;
        const clone = await fleet.conn.lookupByName(d.name);
        await clone.destroy().catch(() => undefined);
        await clone.undefine(libvirt.UndefineFlags.NVRAM).catch(() => undefined);
        clone.free();
      }
    }
    await hv?.close();
    await fleet?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it('deletes a middle snapshot of a running VM online: S1 keeps A, S3 holds A+B+C, the chain shrinks', async () => {
    const vm = fleet.names[0];
    const [s1, s2, s3] = await history(vm, 3);
    expect(await backingChain(await source(vm))).toHaveLength(4);
    expect(await markers(s3.image)).toBe('ABC');

    const report = await acts.deleteSnapshot({ owner: 'delete/s2', snapshotId: 's2', domain: vm });
    expect(report).toMatchObject({ domain: vm, outcome: 'deleted' });
    expect(report.removed).toEqual(expect.arrayContaining([s2.overlay]));
    expect(await state(vm)).toBe('running');
    expect(existsSync(s2.overlay)).toBe(false);
    expect(await backingChain(await source(vm))).toEqual([s3.overlay, s2.image, s1.image]);
    expect(await markers(s1.image)).toBe('A');
    expect(await markers(s2.image)).toBe('ABC'); // now S3's image
    const m = await meta(vm);
    expect(m.snapshots.map((s) => s.snapshotId)).toEqual(['s1', 's3']);
    expect(m.snapshots[1].disks.find((d) => d.target === 'vdb')).toEqual({ ...s3, image: s2.image });

    // The newest: active commit and pivot onto S3's image (now S2's), the guest's later write kept.
    const newest = await acts.deleteSnapshot({ owner: 'delete/s3', snapshotId: 's3', domain: vm });
    expect(newest.outcome).toBe('deleted');
    expect(await source(vm)).toBe(s2.image);
    expect(existsSync(s3.overlay)).toBe(false);
    expect(await backingChain(s2.image)).toEqual([s2.image, s1.image]);
    await writeMarker(vm, 'vdb', 0x45, offset(0x45)); // still writable through QEMU on the new active layer
    expect(await markers(s2.image, [0x41, 0x42, 0x43, 0x44, 0x45])).toBe('ABCDE');
    expect(await markers(s1.image)).toBe('A');
    expect(await state(vm)).toBe('running');
    // Retried: absent, nothing changes.
    expect((await acts.deleteSnapshot({ owner: 'delete/s3', snapshotId: 's3', domain: vm })).outcome).toBe('absent');
  });

  it('deletes snapshots of a shut-off VM offline and it still boots', async () => {
    const vm = fleet.names[1];
    const [s1, s2] = await history(vm, 2);
    await (await dom(vm)).destroy();
    expect((await acts.deleteSnapshot({ owner: 'd', snapshotId: 's1', domain: vm })).outcome).toBe('deleted');
    expect(await backingChain(await source(vm))).toEqual([s2.overlay, s1.image]);
    expect(await markers(s1.image)).toBe('AB');
    expect((await acts.deleteSnapshot({ owner: 'd', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
    expect(await source(vm)).toBe(s1.image);
    expect([s1.overlay, s2.overlay].map(existsSync)).toEqual([false, false]);
    expect(await markers(s1.image)).toBe('ABC');
    expect((await meta(vm)).snapshots).toEqual([]);
    expect(await state(vm)).toBe('shutoff');
    await (await dom(vm)).create();
    expect(await state(vm)).toBe('running');
  });

  it('restores a snapshot as a clone that boots and reads only that snapshot; deletion is refused meanwhile; removal undoes it', async () => {
    const vm = fleet.names[2];
    // A serial port logging to a file: virtlogd locks it, so a clone logging to the same file would not start.
    const d = await dom(vm);
    await d.destroy();
    const serial = `<serial type='file'><source path='${dir}/${vm}.serial.log'/><target port='0'/></serial>`;
    const xml = await d.xml(libvirt.DomainXMLFlags.INACTIVE | libvirt.DomainXMLFlags.SECURE);
    await (await fleet.conn.defineXML(xml.replace('</devices>', `${serial}</devices>`))).create();
    const [s1] = await history(vm, 2);
    const cloneName = `${vm}-c1`;
    const r = await acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName });
    expect(r).toMatchObject({ domain: vm, clone: cloneName, state: 'running' });
    expect(await state(cloneName)).toBe('running');
    expect(r.uuid).not.toBe((await dom(vm)).uuid);
    const vdb = r.disks.find((d) => d.target === 'vdb')!;
    expect(vdb).toEqual({ target: 'vdb', image: s1.image, overlay: join(dir, `${cloneName}.vdb.qcow2`) });
    expect(await source(cloneName)).toBe(vdb.overlay);
    expect(await backingChain(vdb.overlay)).toEqual([vdb.overlay, s1.image]);
    expect(await markers(vdb.overlay)).toBe('A');
    // The clone writes to its own overlay; the source's snapshot image is unchanged.
    await writeMarker(cloneName, 'vdb', 0x46, offset(0x46));
    expect(await readsMarker(s1.image, 0x46, offset(0x46))).toBe(false);
    const cloneXml = await (await dom(cloneName)).xml();
    expect(cloneXml).toContain(`${dir}/${cloneName}.serial.log`);
    expect(cloneXml).not.toContain('groupsnap');
    expect(await hv.getMetadata(cloneName)).toBeUndefined();
    expect((await meta(vm)).clones.map((c) => c.name)).toEqual([cloneName]);

    await expect(acts.deleteSnapshot({ owner: 'd', snapshotId: 's1', domain: vm })).rejects.toMatchObject({
      type: BAD_INPUT,
      message: expect.stringContaining(`clone ${cloneName}`),
    });
    await expect(acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: vm })).rejects.toMatchObject({
      type: BAD_INPUT,
    });

    await acts.removeClone({ domain: vm, clone: cloneName });
    await expect(dom(cloneName)).rejects.toBeInstanceOf(libvirt.DomainNotFoundError);
    for (const d of r.disks) expect(existsSync(d.overlay)).toBe(false);
    expect((await meta(vm)).clones).toEqual([]);
    expect(await state(vm)).toBe('running');
  });

  it('clones of two VMs wired by a UDP link, made while the originals run, bind fresh ports and stay paired', async () => {
    const [v1, v2] = [fleet.names[4], fleet.names[5]];
    const [p1, p2] = [await freePort(), await freePort()];
    const udp = (local: number, remote: number) =>
      `<interface type='udp'><source address='127.0.0.1' port='${remote}'>` +
      `<local address='127.0.0.1' port='${local}'/></source><model type='e1000'/></interface>`;
    for (const [vm, local, remote] of [
      [v1, p1, p2],
      [v2, p2, p1],
    ] as const) {
      const d = await dom(vm);
      await d.destroy();
      const xml = await d.xml(libvirt.DomainXMLFlags.INACTIVE | libvirt.DomainXMLFlags.SECURE);
      await (await fleet.conn.defineXML(xml.replace('</devices>', `${udp(local, remote)}</devices>`))).create();
      await snap(vm, 'sl1');
    }
    /** Local UDP ports held by a running VM's QEMU process. */
    const boundBy = (vm: string) => {
      const pid = readFileSync(`/run/libvirt/qemu/${vm}.pid`, 'utf8').trim();
      return execFileSync('ss', ['-Huanp'], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => l.includes(`pid=${pid},`))
        .map((l) => Number(/:(\d+)\s/.exec(l.split(/\s+/).slice(3).join(' '))?.[1]));
    };
    expect(boundBy(v1)).toContain(p1);
    expect(boundBy(v2)).toContain(p2);

    const socketPorts = mergeSocketPortChoices([await acts.chooseSocketPorts({ domains: [v1, v2] })]);
    const clones = [];
    for (const vm of [v1, v2]) {
      const r = await acts.cloneVm({ snapshotId: 'sl1', domain: vm, cloneName: `${vm}-sl`, socketPorts });
      expect(r.state).toBe('running');
      clones.push(r.clone);
    }
    const links = async (vm: string) => socketLinkPorts(await (await dom(vm)).xml());
    const [c1, c2] = [await links(clones[0]), await links(clones[1])];
    const bind = (ls: typeof c1) => ls.find((l) => l.role === 'bind')!.port;
    const connect = (ls: typeof c1) => ls.find((l) => l.role === 'connect')!.port;
    // Fresh ports, not the originals'; each clone sends to the other clone's port.
    expect([bind(c1), bind(c2)]).not.toContain(p1);
    expect([bind(c1), bind(c2)]).not.toContain(p2);
    expect(connect(c1)).toBe(bind(c2));
    expect(connect(c2)).toBe(bind(c1));
    expect(c1.map((l) => l.address)).toEqual(['127.0.0.1', '127.0.0.1']);
    // QEMU of each clone holds its own fresh port; the originals keep theirs.
    expect(boundBy(clones[0])).toContain(bind(c1));
    expect(boundBy(clones[1])).toContain(bind(c2));
    expect(boundBy(clones[0])).not.toContain(p1);
    expect(boundBy(v1)).toContain(p1);
    expect(boundBy(v2)).toContain(p2);
    for (const [vm, clone] of [
      [v1, clones[0]],
      [v2, clones[1]],
    ])
      await acts.removeClone({ domain: vm, clone });
  });

  it('restores a VM in place to S1 and back (undo); deleting snapshots of the discarded branch works while it runs', async () => {
    const vm = fleet.names[3];
    const [s1, s2] = await history(vm, 2);
    const before = await source(vm);
    expect(before).toBe(s2.overlay);

    const r = await acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's1', domain: vm });
    expect(r).toMatchObject({ stateBefore: 'running', state: 'running' });
    const vdb = r.disks.find((d) => d.target === 'vdb')!;
    expect(vdb).toEqual({
      target: 'vdb',
      image: s1.image,
      overlay: join(dir, `${vm}.vdb.restore-r1.qcow2`),
      discarded: before,
    });
    expect(await state(vm)).toBe('running');
    expect(await source(vm)).toBe(vdb.overlay);
    expect(await markers(vdb.overlay)).toBe('A');
    expect(await markers(before)).toBe('ABC'); // the discarded layer is kept

    // Undo: back on the discarded layer, running, the restore's overlays gone.
    await acts.undoInPlace({ restoreId: 'r1', domain: vm });
    expect(await source(vm)).toBe(before);
    expect(await state(vm)).toBe('running');
    expect(existsSync(vdb.overlay)).toBe(false);
    expect(await markers(before)).toBe('ABC');
    expect((await meta(vm)).restores).toEqual([]);

    // Again, kept this time; S2 lies on the discarded branch now: merged offline while the VM runs on S1.
    await acts.restoreInPlace({ restoreId: 'r2', snapshotId: 's1', domain: vm });
    await expect(acts.deleteSnapshot({ owner: 'd', snapshotId: 's1', domain: vm })).rejects.toMatchObject({
      type: BAD_INPUT,
      message: expect.stringContaining('in-place restore r2'),
    });
    expect((await acts.deleteSnapshot({ owner: 'd', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
    const rec = (await meta(vm)).restores[0].disks.find((d) => d.target === 'vdb')!;
    expect(rec.discarded).toBe(s2.image);
    expect(existsSync(before)).toBe(false);
    expect(await markers(s2.image)).toBe('ABC');
    expect(await state(vm)).toBe('running');
    expect(await markers(await source(vm))).toBe('A');
  });
});

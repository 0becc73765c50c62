import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseVmMetadata } from '../common/catalog';
import { createHost } from '../activities/host-activities';
import type { SnapshotDisk } from '../common/dr-types';
import { BAD_INPUT } from '../common/failures';
import { cloneDomainXml } from '../hypervisor/clone-xml';
import { parseDomainXml, retargetDiskSource } from '../hypervisor/domain-xml';
import { HypervisorError } from '../hypervisor/errors';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { ExportHold, registerExportHoldDir } from '../activities/export-hold';
import { FakeHost } from './helpers/fake-hosts';
import { uniqueId } from './helpers/temporal';

/**
 * The host side of snapshot deletion, restores and tags on the in-memory hypervisor: the chain rules (which layer is
 * merged into which, what is rewritten in the catalog, which files go), refusals and retries. The fake keeps a
 * backing map and each layer's written data, so a wrong merge direction or a lost write shows.
 */
describe('DR host activities (fake hypervisor)', () => {
  const HOST = 'h1';
  let host: FakeHost;
  let stateDir: string;
  let hostApi: ReturnType<typeof createHost>;
  let acts: ReturnType<typeof createHost>['activities'];

  /** The fake, with an optional wrapper (failure injection) in front of the activities. */
  const start = (wrap?: (h: Hypervisor) => Hypervisor) => {
    hostApi?.shutdown();
    hostApi = createHost({ hypervisor: wrap ? wrap(host.hypervisor) : host.hypervisor, hostId: HOST, stateDir });
    acts = hostApi.activities;
  };

  beforeEach(() => {
    host = new FakeHost(uniqueId('drf'));
    stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-drf-state-'));
    start();
  });

  afterEach(() => {
    hostApi.shutdown();
    host.cleanup();
    rmSync(stateDir, { recursive: true, force: true });
  });

  const hv = () => host.hypervisor;
  const meta = async (vm: string) => parseVmMetadata(await hv().getMetadata(vm));
  const write = (vm: string, key: string, value: string, target = 'vda') => hv().writeData(vm, target, key, value);
  const reads = (file: string, key: string) => hv().readData(file, key);
  const active = (vm: string, target = 'vda') => host.chain(vm, target).at(-1)!;

  /** A group snapshot of one VM through the snapshot activities themselves (plan, freeze, catalog). */
  async function snap(vm: string, id: string): Promise<SnapshotDisk[]> {
    const planned = await acts.planVms({ snapshotId: id, domains: [vm], quiesce: 'none' });
    const leaseOwner = `run-${id}`;
    await acts.acquireLocks({ owner: leaseOwner, domains: [vm], ttlMs: 60_000 });
    const reports = await acts.freezeVms({
      snapshotId: id,
      vms: planned,
      maxFreezeMs: 5000,
      release: 'local',
      host: HOST,
      quiesce: 'none',
      leaseOwner,
    });
    expect(reports[0].error).toBeUndefined();
    await acts.recordCatalog({
      entry: { snapshotId: id, group: 'g', createdAt: new Date().toISOString() },
      host: HOST,
      vms: planned.map((p) => ({ domain: p.domain, uuid: p.uuid, disks: p.disks })),
      leaseOwner,
    });
    await acts.releaseLocks({ owner: leaseOwner, domains: [vm] });
    return planned[0].disks;
  }

  /** A VM with markers A before S1, B before S2, C before S3 and D after S3 (each at its own key). */
  async function threeSnapshots(state: 'running' | 'shutoff' = 'running') {
    const vm = uniqueId('vm');
    host.addVm(vm, state);
    const base = active(vm);
    write(vm, 'a', 'A');
    const s1 = await snap(vm, 's1');
    write(vm, 'b', 'B');
    const s2 = await snap(vm, 's2');
    write(vm, 'c', 'C');
    const s3 = await snap(vm, 's3');
    write(vm, 'd', 'D');
    const img = (disks: SnapshotDisk[], t = 'vda') => disks.find((d) => d.target === t)!;
    return { vm, base, s1: img(s1), s2: img(s2), s3: img(s3), disks: { s1, s2, s3 } };
  }

  const ids = async (vm: string) => (await meta(vm)).snapshots.map((s) => s.snapshotId);
  const manifest = (vm: string, id: string) => join(host.dir, `${vm}.${id}.manifest.json`);

  describe('deleteSnapshot', () => {
    it('deletes a middle snapshot of a running VM by a live commit of the layer above it; the next snapshot moves onto its image', async () => {
      const { vm, base, s1, s2, s3 } = await threeSnapshots();
      expect(host.chain(vm)).toEqual([base, s1.overlay, s2.overlay, s3.overlay]);
      const report = await acts.deleteSnapshot({ owner: 'del/s2', snapshotId: 's2', domain: vm });

      expect(report.outcome).toBe('deleted');
      expect(hv().calls).toContain(`commitLayer:${vm}`);
      expect(hv().calls).not.toContain(`commitImage:${s2.overlay}`);
      // S2's overlay (S3's image) was merged into S2's image and removed, on both disks.
      expect(host.chain(vm)).toEqual([base, s2.image, s3.overlay]);
      expect(existsSync(s2.overlay)).toBe(false);
      expect(report.removed).toEqual(expect.arrayContaining([s2.overlay, manifest(vm, 's2')]));
      const m = await meta(vm);
      expect(m.snapshots.map((s) => s.snapshotId)).toEqual(['s1', 's3']);
      expect(m.snapshots[1].disks.find((d) => d.target === 'vda')).toEqual({
        target: 'vda',
        image: s2.image,
        overlay: s3.overlay,
      });
      // Content: S1 still reads A only; S3's image reads the B + C state, not D.
      expect([reads(s1.image, 'a'), reads(s1.image, 'b')]).toEqual(['A', undefined]);
      expect(['a', 'b', 'c', 'd'].map((k) => reads(s2.image, k))).toEqual(['A', 'B', 'C', undefined]);
      expect(reads(active(vm), 'd')).toBe('D');
      expect(existsSync(manifest(vm, 's2'))).toBe(false);
      expect(JSON.parse(readFileSync(manifest(vm, 's3'), 'utf8')).disks[0].image).toBe(s2.image);
      expect(host.state(vm)).toBe('running');
    });

    it('deletes the newest snapshot of a running VM by an active commit and pivot onto its image', async () => {
      const { vm, base, s1, s2, s3 } = await threeSnapshots();
      const report = await acts.deleteSnapshot({ owner: 'del/s3', snapshotId: 's3', domain: vm });
      expect(report.outcome).toBe('deleted');
      expect(host.chain(vm)).toEqual([base, s1.overlay, s2.overlay]);
      expect(active(vm)).toBe(s3.image);
      expect(existsSync(s3.overlay)).toBe(false);
      expect(reads(active(vm), 'd')).toBe('D');
      expect(await ids(vm)).toEqual(['s1', 's2']);
      // S2's overlay is now the active layer, as recorded.
      expect((await meta(vm)).snapshots[1].disks[0].overlay).toBe(active(vm));
    });

    it('deletes the oldest snapshot by merging into the base image', async () => {
      const { vm, base, s1, s2, s3 } = await threeSnapshots();
      const report = await acts.deleteSnapshot({ owner: 'del/s1', snapshotId: 's1', domain: vm });
      expect(report.outcome).toBe('deleted');
      expect(host.chain(vm)).toEqual([base, s2.overlay, s3.overlay]);
      expect(existsSync(s1.overlay)).toBe(false);
      expect((await meta(vm)).snapshots[0].disks[0]).toEqual({ target: 'vda', image: base, overlay: s2.overlay });
      expect(['a', 'b', 'c'].map((k) => reads(base, k))).toEqual(['A', 'B', undefined]);
    });

    it('deletes snapshots of a shut-off VM offline: qemu-img commit, rebase of the layer above, redefinition of the active one', async () => {
      const { vm, base, s1, s2, s3 } = await threeSnapshots('shutoff');
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
      expect(hv().calls).toEqual(expect.arrayContaining([`commitImage:${s2.overlay}`, `rebaseImage:${s3.overlay}`]));
      expect(hv().calls).not.toContain(`commitLayer:${vm}`);
      expect(host.chain(vm)).toEqual([base, s2.image, s3.overlay]);
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's3', domain: vm })).outcome).toBe('deleted');
      expect(host.chain(vm)).toEqual([base, s1.overlay]);
      expect(['a', 'b', 'c', 'd'].map((k) => reads(active(vm), k))).toEqual(['A', 'B', 'C', 'D']);
      expect(host.state(vm)).toBe('shutoff');
      expect(await ids(vm)).toEqual(['s1']);
      expect([s2.overlay, s3.overlay].map(existsSync)).toEqual([false, false]);
      // Still bootable: the chain holds together.
      await hv().start(vm);
    });

    it('is idempotent: a snapshot not (or no longer) catalogued is absent, and nothing is touched', async () => {
      const { vm } = await threeSnapshots();
      await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm });
      const calls = hv().calls.length;
      const before = host.chain(vm);
      expect(await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).toEqual({
        domain: vm,
        outcome: 'absent',
        removed: [],
      });
      expect(await acts.deleteSnapshot({ owner: 'o', snapshotId: 'never', domain: vm })).toMatchObject({
        outcome: 'absent',
      });
      expect(
        hv()
          .calls.slice(calls)
          .filter((c) => !c.startsWith('describe')),
      ).toEqual([]);
      expect(host.chain(vm)).toEqual(before);
    });

    it('rejects bad input before changing anything: unsafe id, unknown VM, missing owner', async () => {
      const { vm } = await threeSnapshots();
      const before = { chain: host.chain(vm), meta: await hv().getMetadata(vm), calls: hv().calls.length };
      await expect(acts.deleteSnapshot({ owner: 'o', snapshotId: '../s2', domain: vm })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/snapshot id "\.\.\/s2" is not safe/),
      });
      await expect(acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: 'nope' })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/VM "nope" not found on host h1/),
      });
      await expect(acts.deleteSnapshot({ owner: '', snapshotId: 's2', domain: vm })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/owner/),
      });
      expect(host.chain(vm)).toEqual(before.chain);
      expect(await hv().getMetadata(vm)).toBe(before.meta);
      expect(
        hv()
          .calls.slice(before.calls)
          .filter((c) => !c.startsWith('describe')),
      ).toEqual([]);
    });

    it('refuses to delete a snapshot a clone or an in-place restore is built on, naming it, and changes nothing', async () => {
      const { vm } = await threeSnapshots();
      const clone = `${vm}-c2`;
      await acts.cloneVm({ snapshotId: 's2', domain: vm, cloneName: clone });
      const before = { chain: host.chain(vm), meta: await hv().getMetadata(vm) };
      // The clone reads S2's image; S1's overlay is that image: both would change under the clone.
      for (const id of ['s1', 's2']) {
        await expect(acts.deleteSnapshot({ owner: 'o', snapshotId: id, domain: vm })).rejects.toMatchObject({
          type: BAD_INPUT,
          message: expect.stringContaining(`clone ${clone} of ${vm} is built on it`),
        });
      }
      expect(host.chain(vm)).toEqual(before.chain);
      expect(await hv().getMetadata(vm)).toBe(before.meta);
      // S3 is above the clone's image: deleting it is fine.
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's3', domain: vm })).outcome).toBe('deleted');

      await acts.removeClone({ domain: vm, clone });
      await acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's1', domain: vm });
      await expect(acts.deleteSnapshot({ owner: 'o', snapshotId: 's1', domain: vm })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringContaining(`in-place restore r1 of ${vm} (to snapshot s1) is built on it`),
      });
    });

    it('is blocked while any export of the point holds its layer: two exports (two runs) each hold their own', async () => {
      const { vm, s2 } = await threeSnapshots();
      registerExportHoldDir(HOST, stateDir);
      const take = (repository: string, holder: string) =>
        ExportHold.take(stateDir, {
          domain: vm,
          snapshotId: 's2',
          target: 'vda',
          repository,
          holder,
          files: [s2.image],
        });
      const a = take('s3://a/dr', 'wf/run-a/1/1');
      const b = take('s3://b/dr', 'wf/run-b/1/1');
      const before = host.chain(vm);
      const both = await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm }).catch((e: Error) => e);
      expect(both).toMatchObject({ type: BAD_INPUT });
      expect((both as Error).message).toMatch(/to s3:\/\/a\/dr\) still reads it/);
      expect((both as Error).message).toMatch(/to s3:\/\/b\/dr\) still reads it/);
      a.release();
      await expect(acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/^(?!.*s3:\/\/a\/dr).*to s3:\/\/b\/dr\) still reads it/),
      });
      expect(host.chain(vm)).toEqual(before);
      expect((await meta(vm)).snapshots.find((s) => s.snapshotId === 's2')?.deleting).toBeUndefined();
      b.release();
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
    });

    it('an export holding the layer just as the deletion marks it: seen after the mark, which is undone, nothing merged', async () => {
      const { vm, s2 } = await threeSnapshots();
      registerExportHoldDir(HOST, stateDir);
      let hold: ExportHold | undefined;
      // The export takes its hold between the deletion's check of the holds and its write of the `deleting` mark.
      start(
        (h) =>
          new Proxy(h, {
            get(target, prop, receiver) {
              if (prop === 'setMetadata') {
                return async (domain: string, xml: string) => {
                  if (!hold && /deleting='yes'/.test(xml)) {
                    hold = ExportHold.take(stateDir, {
                      domain: vm,
                      snapshotId: 's2',
                      target: 'vda',
                      repository: 's3://a/dr',
                      holder: 'wf/run-a/1/1',
                      files: [s2.image],
                    });
                  }
                  return target.setMetadata(domain, xml);
                };
              }
              const value = Reflect.get(target, prop, receiver);
              return typeof value === 'function' ? value.bind(target) : value;
            },
          }),
      );
      const before = host.chain(vm);
      await expect(acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/still reads it/),
      });
      expect(hold).toBeDefined();
      expect(host.chain(vm)).toEqual(before);
      expect(hv().calls.filter((c) => c.startsWith('commit'))).toEqual([]);
      // Unmarked: the export (which looks at the mark after taking its hold) goes on, and restores are not refused.
      expect((await meta(vm)).snapshots.find((s) => s.snapshotId === 's2')?.deleting).toBeUndefined();
      hold!.release();
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
    });

    it('waits for the VM lease: another holder makes it fail retryably without changes; its own lease is released after', async () => {
      const { vm } = await threeSnapshots();
      await acts.acquireLocks({ owner: 'snapshot-x', domains: [vm], ttlMs: 60_000 });
      const before = host.chain(vm);
      await expect(acts.deleteSnapshot({ owner: 'del/s2', snapshotId: 's2', domain: vm })).rejects.toMatchObject({
        type: 'LockBusyError',
        nonRetryable: false,
      });
      expect(host.chain(vm)).toEqual(before);
      await acts.releaseLocks({ owner: 'snapshot-x', domains: [vm] });
      await acts.deleteSnapshot({ owner: 'del/s2', snapshotId: 's2', domain: vm });
      // Released: another owner can take it at once.
      await acts.acquireLocks({ owner: 'snapshot-y', domains: [vm], ttlMs: 60_000 });
    });

    it('converges on retry after a crash between the live active commit and the catalog update, without losing newer writes', async () => {
      const { vm, s3 } = await threeSnapshots();
      // The first attempt pivoted both disks and died before touching the catalog.
      for (const t of ['vda', 'vdb']) {
        const d = (await meta(vm)).snapshots[2].disks.find((x) => x.target === t)!;
        await hv().commitActive(vm, t, d.image);
      }
      write(vm, 'd', 'E'); // the guest writes on after the pivot
      const calls = hv().calls.length;
      const report = await acts.deleteSnapshot({ owner: 'o', snapshotId: 's3', domain: vm });
      expect(report.outcome).toBe('deleted');
      expect(reads(active(vm), 'd')).toBe('E');
      expect(
        hv()
          .calls.slice(calls)
          .some((c) => c.startsWith('commit')),
      ).toBe(false);
      expect(existsSync(s3.overlay)).toBe(false);
      expect(await ids(vm)).toEqual(['s1', 's2']);
    });

    it('converges on retry after a crash between the live middle commit and the catalog update', async () => {
      const { vm, base, s2, s3 } = await threeSnapshots();
      for (const t of ['vda', 'vdb']) {
        const d = (await meta(vm)).snapshots[1].disks.find((x) => x.target === t)!;
        await hv().commitLayer(vm, t, d.overlay, d.image);
      }
      const calls = hv().calls.length;
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
      expect(
        hv()
          .calls.slice(calls)
          .some((c) => c.startsWith('commit')),
      ).toBe(false);
      expect(host.chain(vm)).toEqual([base, s2.image, s3.overlay]);
      expect((await meta(vm)).snapshots[1].disks[0].image).toBe(s2.image);
    });

    it('reports a disk that fails as failed, keeps the catalog true for the disk already merged, and finishes on retry', async () => {
      const { vm, disks } = await threeSnapshots();
      let failures = 1;
      start(
        (inner) =>
          new Proxy(inner, {
            get(target, prop, receiver) {
              const value = Reflect.get(target, prop, receiver) as unknown;
              if (prop === 'commitLayer')
                return async (domain: string, t: string, top: string, base: string) => {
                  if (t === 'vdb' && failures-- > 0) throw new HypervisorError('injected commit failure', domain);
                  return inner.commitLayer(domain, t, top, base);
                };
              return typeof value === 'function' ? value.bind(target) : value;
            },
          }),
      );
      const first = await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm });
      expect(first).toMatchObject({
        outcome: 'failed',
        error: expect.stringContaining('vdb: injected commit failure'),
      });
      const [s2a, s2b] = disks.s2;
      const [, s3b] = disks.s3;
      expect(existsSync(s2a.overlay)).toBe(false);
      expect(existsSync(s2b.overlay)).toBe(true);
      const m = await meta(vm);
      const s2 = m.snapshots.find((s) => s.snapshotId === 's2')!;
      expect(s2).toMatchObject({ deleting: true, disks: [s2b] });
      expect(m.snapshots.find((s) => s.snapshotId === 's3')!.disks).toEqual([
        { target: 'vda', image: s2a.image, overlay: disks.s3[0].overlay },
        s3b,
      ]);
      // A snapshot being deleted cannot be restored.
      await expect(acts.cloneVm({ snapshotId: 's2', domain: vm, cloneName: `${vm}-x` })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/being deleted/),
      });
      const retry = await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm });
      expect(retry.outcome).toBe('deleted');
      expect(existsSync(s2b.overlay)).toBe(false);
      expect(host.chain(vm, 'vdb')).toEqual([disks.s1[1].image, s2b.image, s3b.overlay]);
      expect(await ids(vm)).toEqual(['s1', 's3']);
    });

    it('deletes snapshots on the discarded branch of an in-place restore offline, keeping the restored VM untouched', async () => {
      const { vm, s1, s2, s3 } = await threeSnapshots();
      const r = await acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's1', domain: vm });
      const rv = r.disks.find((d) => d.target === 'vda')!;
      expect(rv.discarded).toBe(s3.overlay);
      write(vm, 'e', 'E');
      // S3's overlay is the discarded layer (a leaf): merged into S3's image, which becomes the discarded layer.
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's3', domain: vm })).outcome).toBe('deleted');
      expect(hv().calls).toContain(`commitImage:${s3.overlay}`);
      let rec = (await meta(vm)).restores[0].disks.find((d) => d.target === 'vda')!;
      expect(rec.discarded).toBe(s3.image);
      expect(reads(s3.image, 'd')).toBe('D');
      // S2's overlay has no snapshot above it any more, only the discarded layer: same again.
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
      rec = (await meta(vm)).restores[0].disks.find((d) => d.target === 'vda')!;
      expect(rec.discarded).toBe(s2.image);
      expect(['a', 'b', 'c', 'd', 'e'].map((k) => reads(rec.discarded, k))).toEqual(['A', 'B', 'C', 'D', undefined]);
      // The running VM is still on the restore's overlay over S1's image.
      expect(host.chain(vm)).toEqual([s1.image, rv.overlay]);
      expect(['a', 'b', 'e'].map((k) => reads(active(vm), k))).toEqual(['A', undefined, 'E']);
      expect(host.state(vm)).toBe('running');
    });

    it('rebases the layer above on a discarded branch that still has snapshots over it', async () => {
      const { vm, s1, s2, s3 } = await threeSnapshots();
      await acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's1', domain: vm });
      // S2's overlay is S3's image; S3's overlay (the discarded layer) must then rest on S2's image.
      expect((await acts.deleteSnapshot({ owner: 'o', snapshotId: 's2', domain: vm })).outcome).toBe('deleted');
      expect(hv().calls).toEqual(expect.arrayContaining([`commitImage:${s2.overlay}`, `rebaseImage:${s3.overlay}`]));
      expect(hv().backingChain(s3.overlay)).toEqual([s3.overlay, s2.image, s1.image]);
      expect((await meta(vm)).snapshots.find((s) => s.snapshotId === 's3')!.disks[0].image).toBe(s2.image);
      expect(['a', 'b', 'c', 'd'].map((k) => reads(s3.overlay, k))).toEqual(['A', 'B', 'C', 'D']);
    });
  });

  describe('cloneVm / removeClone', () => {
    it('defines and starts a clone on new overlays over the snapshot images, without uuid, MACs or groupsnap metadata', async () => {
      const vm = uniqueId('vm');
      host.addVm(vm);
      const serial = join(host.dir, `${vm}.serial.log`);
      hv().domains.get(vm)!.devicesXml =
        `<interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/></interface>` +
        `<serial type='file'><source path='${serial}'/><target port='0'/></serial>`;
      await acts.setTags({ domain: vm, add: ['db'] });
      write(vm, 'a', 'A');
      const s1 = await snap(vm, 's1');
      write(vm, 'b', 'B');

      const clone = `${vm}-c`;
      const r = await acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: clone });
      expect(r).toMatchObject({ domain: vm, clone, state: 'running' });
      expect(r.disks).toEqual(
        s1.map((d) => ({ target: d.target, image: d.image, overlay: join(host.dir, `${clone}.${d.target}.qcow2`) })),
      );
      const c = hv().domains.get(clone)!;
      expect(c.uuid).not.toBe(hv().domains.get(vm)!.uuid);
      expect(c.metadata).toBeUndefined();
      expect(await hv().domainXml(vm)).toMatch(/<uuid>.*<metadata><groupsnap:groupsnap xmlns:groupsnap=.*<mac /);
      expect(c.definedXml).not.toMatch(/<uuid>|<mac |<metadata|xmlns:groupsnap/);
      expect(c.definedXml).toContain(`<source path='${join(host.dir, `${clone}.serial.log`)}'/>`);
      for (const d of r.disks) {
        expect(host.chain(clone, d.target)).toEqual([d.image, d.overlay]);
        expect(existsSync(d.overlay)).toBe(true);
      }
      expect([reads(r.disks[0].overlay, 'a'), reads(r.disks[0].overlay, 'b')]).toEqual(['A', undefined]);
      expect((await meta(vm)).clones).toEqual([
        expect.objectContaining({ name: clone, snapshotId: 's1', disks: r.disks }),
      ]);
      // A retry returns the same clone.
      expect(await acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: clone })).toEqual(r);
      const vms = await acts.listVms();
      expect(vms.find((v) => v.domain === vm)).toMatchObject({ tags: ['db'], clones: [{ name: clone }] });
      expect(vms.find((v) => v.domain === clone)).toMatchObject({ tags: [], snapshots: [], state: 'running' });

      await acts.removeClone({ domain: vm, clone });
      expect(hv().domains.has(clone)).toBe(false);
      for (const d of r.disks) expect(existsSync(d.overlay)).toBe(false);
      expect((await meta(vm)).clones).toEqual([]);
      await acts.removeClone({ domain: vm, clone }); // idempotent
    });

    it('refuses a taken name, an unknown snapshot and a snapshot whose images are gone, creating nothing', async () => {
      const vm = uniqueId('vm');
      const other = uniqueId('other');
      host.addVm(vm);
      host.addVm(other);
      const s1 = await snap(vm, 's1');
      const files = () => [...hv().images.keys()].sort();
      const before = { files: files(), meta: await hv().getMetadata(vm) };
      await expect(acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: other })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: `a VM named ${other} already exists on host h1`,
      });
      await expect(acts.cloneVm({ snapshotId: 'nope', domain: vm, cloneName: 'c1' })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/has no snapshot "nope" \(known: s1\)/),
      });
      await expect(acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: 'bad/name' })).rejects.toMatchObject({
        type: BAD_INPUT,
      });
      // A compensation for a refused clone leaves the VM of that name alone.
      await acts.removeClone({ domain: vm, clone: other });
      expect(hv().domains.has(other)).toBe(true);
      hv().images.delete(s1[1].image);
      await expect(acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: 'c1' })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringContaining(`restore of a snapshot whose images are gone (s1 of ${vm}): disk vdb`),
      });
      expect(files()).toEqual(before.files.filter((f) => f !== s1[1].image));
      expect(await hv().getMetadata(vm)).toBe(before.meta);
      expect(hv().domains.has('c1')).toBe(false);
    });

    it('resumes a clone whose first attempt died after recording it, and the compensation removes what it made', async () => {
      const vm = uniqueId('vm');
      host.addVm(vm);
      await snap(vm, 's1');
      hv().failOn('define', `${vm}-c`);
      await expect(acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: `${vm}-c` })).rejects.toThrow(/injected/);
      const rec = (await meta(vm)).clones[0];
      expect(rec.disks.map((d) => existsSync(d.overlay))).toEqual([true, true]);
      const r = await acts.cloneVm({ snapshotId: 's1', domain: vm, cloneName: `${vm}-c`, start: false });
      expect(r.state).toBe('shutoff');
      await acts.removeClone({ domain: vm, clone: `${vm}-c` });
      expect(rec.disks.map((d) => existsSync(d.overlay))).toEqual([false, false]);
      expect(hv().domains.has(`${vm}-c`)).toBe(false);
    });
  });

  describe('restoreInPlace / undoInPlace', () => {
    it('restores a running VM to a snapshot on new overlays, keeps the discarded layer, and the undo puts everything back', async () => {
      const { vm, s1, s3 } = await threeSnapshots();
      const before = { chain: host.chain(vm), chainB: host.chain(vm, 'vdb') };
      const r = await acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's1', domain: vm });
      expect(r).toMatchObject({ domain: vm, stateBefore: 'running', state: 'running' });
      const vda = r.disks.find((d) => d.target === 'vda')!;
      expect(vda).toEqual({
        target: 'vda',
        image: s1.image,
        overlay: join(host.dir, `${vm}.vda.restore-r1.qcow2`),
        discarded: s3.overlay,
      });
      expect(hv().calls).toEqual(expect.arrayContaining([`destroy:${vm}`, `start:${vm}`]));
      expect(host.chain(vm)).toEqual([s1.image, vda.overlay]);
      expect(['a', 'b', 'd'].map((k) => reads(active(vm), k))).toEqual(['A', undefined, undefined]);
      expect(existsSync(s3.overlay)).toBe(true);
      expect(reads(s3.overlay, 'd')).toBe('D');
      expect((await meta(vm)).restores).toEqual([expect.objectContaining({ restoreId: 'r1', stateBefore: 'running' })]);
      // Retried: nothing more happens.
      const calls = hv().calls.length;
      expect(await acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's1', domain: vm })).toEqual(r);
      expect(
        hv()
          .calls.slice(calls)
          .filter((c) => !c.startsWith('describe')),
      ).toEqual([]);

      await acts.undoInPlace({ restoreId: 'r1', domain: vm });
      expect(host.chain(vm)).toEqual(before.chain);
      expect(host.chain(vm, 'vdb')).toEqual(before.chainB);
      expect(host.state(vm)).toBe('running');
      expect(existsSync(vda.overlay)).toBe(false);
      expect((await meta(vm)).restores).toEqual([]);
      await acts.undoInPlace({ restoreId: 'r1', domain: vm }); // no-op now
      expect(host.state(vm)).toBe('running');
    });

    it('leaves a shut-off VM shut off and a paused one paused', async () => {
      const { vm } = await threeSnapshots('shutoff');
      expect(await acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's2', domain: vm })).toMatchObject({
        stateBefore: 'shutoff',
        state: 'shutoff',
      });
      expect(hv().calls).not.toContain(`start:${vm}`);
      const p = await threeSnapshots();
      await hv().suspend(p.vm);
      expect(await acts.restoreInPlace({ restoreId: 'r2', snapshotId: 's2', domain: p.vm })).toMatchObject({
        stateBefore: 'paused',
        state: 'paused',
      });
      await acts.undoInPlace({ restoreId: 'r2', domain: p.vm });
      expect(host.state(p.vm)).toBe('paused');
    });

    it('the undo finishes a restore that died after stopping the VM: disks unchanged, VM started again', async () => {
      const { vm } = await threeSnapshots();
      const before = host.chain(vm);
      hv().failOn('createOverlay', undefined);
      await expect(acts.restoreInPlace({ restoreId: 'r1', snapshotId: 's1', domain: vm })).rejects.toThrow(/injected/);
      expect(host.state(vm)).toBe('shutoff');
      await acts.undoInPlace({ restoreId: 'r1', domain: vm });
      expect(host.state(vm)).toBe('running');
      expect(host.chain(vm)).toEqual(before);
      expect((await meta(vm)).restores).toEqual([]);
      expect([...hv().images.keys()].some((f) => f.includes('restore-r1'))).toBe(false);
    });

    it('refuses an unknown snapshot and an unsafe restore id without stopping the VM', async () => {
      const { vm } = await threeSnapshots();
      await expect(acts.restoreInPlace({ restoreId: 'r1', snapshotId: 'nope', domain: vm })).rejects.toMatchObject({
        type: BAD_INPUT,
      });
      await expect(acts.restoreInPlace({ restoreId: 'r 1', snapshotId: 's1', domain: vm })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/restore id "r 1" is not safe/),
      });
      expect(host.state(vm)).toBe('running');
      expect(hv().calls).not.toContain(`destroy:${vm}`);
    });
  });

  describe('setTags / listVms', () => {
    it('adds and removes tags, checks them, and lists every VM with its catalog', async () => {
      const vm = uniqueId('vm');
      host.addVm(vm, 'shutoff');
      expect(await acts.setTags({ domain: vm, add: ['db', 'prod'] })).toEqual(['db', 'prod']);
      expect(await acts.setTags({ domain: vm, add: ['db', 'eu'], remove: ['prod'] })).toEqual(['db', 'eu']);
      await expect(acts.setTags({ domain: vm, add: ['no good'] })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/tag "no good" is not safe/),
      });
      await expect(acts.setTags({ domain: 'ghost', add: ['db'] })).rejects.toMatchObject({
        type: BAD_INPUT,
        message: expect.stringMatching(/VM "ghost" not found/),
      });
      await snap(vm, 's1');
      const listed = (await acts.listVms()).find((v) => v.domain === vm)!;
      expect(listed).toMatchObject({ state: 'shutoff', tags: ['db', 'eu'], clones: [], restores: [] });
      expect(listed.snapshots.map((s) => s.snapshotId)).toEqual(['s1']);
      // The snapshot's catalog survived the tag updates, and tags survive the catalog.
      expect((await meta(vm)).tags).toEqual(['db', 'eu']);
    });
  });
});

describe('clone domain XML', () => {
  const NS = 'https://groupsnap.dev/xmlns/groupsnap/1';
  // Shaped like libvirt 9's inactive XML of a running VM with a 3-layer chain.
  const xml = `<domain type='kvm'>
  <name>db-1</name>
  <uuid>6b1f2c3a-0000-4000-8000-000000000001</uuid>
  <metadata>
    <app:info xmlns:app="https://example.com/app"><app:owner>ops</app:owner></app:info>
    <groupsnap:groupsnap xmlns:groupsnap="${NS}"><groupsnap:tag name="db"/><groupsnap:snapshot id="s1" group="g" created="x"><groupsnap:disk target="vda" image="/i/a" overlay="/i/b"/></groupsnap:snapshot></groupsnap:groupsnap>
  </metadata>
  <os><type arch='x86_64' machine='q35'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader><nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/db-1_VARS.fd</nvram></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/i/db-1.vda.s2.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/i/db-1.vda.s1.qcow2'/>
        <backingStore type='file'>
          <format type='raw'/>
          <source file='/i/db-1-vda.img'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/i/scratch.img'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/iso/install.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/vms/db-1.serial.log'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='/var/log/vms/db-1.serial.log'/>
      <target type='serial' port='0'/>
    </console>
    <serial type='unix'>
      <source mode='bind' path='/run/vms/db-1.ttyS1.sock'/>
      <target port='1'/>
    </serial>
    <serial type='unix'>
      <source mode='connect' path='/run/relay/db-1.sock'/>
      <target port='2'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/db-1.org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1'/>
  </devices>
</domain>`;

  it('renames, drops uuid, MACs and only groupsnap metadata, moves file outputs, serial sockets and NVRAM, retargets cloned disks, leaves out uncloned writable disks', () => {
    const { xml: out, droppedDisks } = cloneDomainXml(xml, {
      sourceName: 'db-1',
      cloneName: 'db-1-r',
      disks: [{ target: 'vda', file: '/i/db-1-r.vda.qcow2' }],
      metadataNamespace: NS,
    });
    expect(out).toContain('<name>db-1-r</name>');
    expect(out).not.toMatch(/<uuid>|<mac |groupsnap|backingStore|scratch\.img|5901/);
    expect(out).toContain('<app:owner>ops</app:owner>');
    expect(out).toContain('/var/lib/libvirt/qemu/nvram/db-1-r_VARS.fd</nvram>');
    expect(out.match(/\/var\/log\/vms\/db-1-r\.serial\.log/g)).toHaveLength(2);
    expect(out).toContain(`<source mode='bind'/>`);
    // A serial port's listening socket gets the clone's own path (libvirt requires one); a client one is kept.
    expect(out).toContain(`<source mode='bind' path='/run/vms/db-1-r.ttyS1.sock'/>`);
    expect(out).toContain(`<source mode='connect' path='/run/relay/db-1.sock'/>`);
    expect(out).toContain(`autoport='yes'`);
    expect(out).toContain('/iso/install.iso');
    expect(droppedDisks).toEqual(['vdc']);
    const disks = parseDomainXml(out).disks;
    expect(disks.map((d) => [d.target, d.source, d.format])).toEqual([
      ['vda', '/i/db-1-r.vda.qcow2', 'qcow2'],
      ['sda', '/iso/install.iso', 'raw'],
    ]);
    expect(() =>
      cloneDomainXml(xml, {
        sourceName: 'db-1',
        cloneName: 'c',
        disks: [{ target: 'vdz', file: '/x' }],
        metadataNamespace: NS,
      }),
    ).toThrow(/vdz/);
  });

  it('retargetDiskSource drops a nested backing chain whole', () => {
    const out = retargetDiskSource(xml, 'vda', '/i/db-1.vda.s2.qcow2', '/i/db-1.vda.s1.qcow2');
    expect(out).not.toContain('backingStore');
    expect(parseDomainXml(out).disks[0].source).toBe('/i/db-1.vda.s1.qcow2');
    expect(out).toContain("<target dev='vda' bus='virtio'/>");
  });
});

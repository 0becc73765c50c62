import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHostContext, type HostContext } from '../../activities/host/context';
import { checkVmDisks, prepareOverlays, removeUnusedOverlays } from '../../activities/host/overlays';
import { overlayPath, type FreezeVmReport, type PlannedVm } from '../../common/host-types';
import { FakeHost } from '../helpers/fake-hosts';

/** Overlay files (activities/host/overlays.ts): their one naming rule, and making and removing them on a fake host. */
describe('overlays', () => {
  describe('naming', () => {
    it('puts the overlay beside its image, named by domain, target and snapshot', () => {
      expect(overlayPath('/var/lib/images/web.qcow2', 'web', 'vda', 's1')).toBe('/var/lib/images/web.vda.s1.qcow2');
    });

    it('names the overlay of a domain with unsafe characters by a safe file name, in the image directory', () => {
      const file = overlayPath('/images/a.qcow2', 'we b\\x', 'vdb', 's1');
      expect(file.startsWith('/images/')).toBe(true);
      expect(file.slice('/images/'.length)).not.toMatch(/[\s\\/]/);
      expect(file.endsWith('.vdb.s1.qcow2')).toBe(true);
    });

    it('accepts a request whose disks are exactly the overlays this host makes', () => {
      const problems: string[] = [];
      const image = '/images/web.qcow2';
      checkVmDisks(
        [{ domain: 'web', disks: [{ target: 'vda', image, overlay: overlayPath(image, 'web', 'vda', 's1') }] }],
        's1',
        problems,
      );
      expect(problems).toEqual([]);
    });

    it('refuses any other file, naming every problem', () => {
      const problems: string[] = [];
      const image = '/images/web.qcow2';
      checkVmDisks(
        [
          { domain: 'web', disks: [{ target: 'vda', image, overlay: '/etc/passwd' }] },
          { domain: 'db', disks: [{ target: 'vda', image: 'relative.qcow2', overlay: 'x' }] },
          { domain: 'a/b', disks: [{ target: 'vda', image, overlay: overlayPath(image, 'web', 'vda', 's2') }] },
          { domain: 'app', disks: [] },
        ],
        's1',
        problems,
      );
      expect(problems).toHaveLength(5);
      expect(problems[0]).toMatch(/VM web disk vda: \/etc\/passwd is not the overlay this host makes for snapshot s1/);
      expect(problems[1]).toMatch(/VM db: disk .* is not valid/);
      expect(problems[2]).toMatch(/VM name "a\/b" is not valid/);
      expect(problems[3]).toMatch(/is not the overlay this host makes for snapshot s1/);
      expect(problems[4]).toMatch(/VM app: a non-empty list of disks is required/);
    });

    it('refuses an empty or missing list of VMs', () => {
      for (const vms of [[], undefined, 'web']) {
        const problems: string[] = [];
        checkVmDisks(vms, 's1', problems);
        expect(problems).toEqual(['a non-empty list of VMs is required']);
      }
    });
  });

  describe('on a fake host', () => {
    let host: FakeHost;
    let stateDir: string;
    let ctx: HostContext;

    beforeEach(() => {
      host = new FakeHost('overlays');
      stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-overlays-'));
      ctx = createHostContext({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
    });

    afterEach(() => {
      ctx.timers.disarmAll();
      host.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    });

    /** A planned VM of the fake host, its overlays named for `snapshotId`. */
    function planned(domain: string, prepared = true): PlannedVm {
      host.addVm(domain);
      const disks = host.hypervisor.domains.get(domain)!.disks.map((d) => ({
        target: d.target,
        image: d.chain[0],
        overlay: overlayPath(d.chain[0], domain, d.target, 's1'),
      }));
      return { domain, uuid: '', state: 'running', disks, skip: [], quiesce: false, ...(prepared ? { prepared } : {}) };
    }

    it('makes the overlays of prepared VMs over their images, and none for the others', async () => {
      const a = planned('a');
      const b = planned('b', false);
      await prepareOverlays(ctx, [a, b]);
      for (const d of a.disks) {
        expect(existsSync(d.overlay)).toBe(true);
        expect(host.hypervisor.image(d.overlay)?.backing).toBe(d.image);
      }
      for (const d of b.disks) expect(existsSync(d.overlay)).toBe(false);
    });

    it('all or nothing: a file already there fails the whole host, and removes every overlay made', async () => {
      const a = planned('a');
      const b = planned('b');
      writeFileSync(b.disks[1].overlay, 'someone else');
      await expect(prepareOverlays(ctx, [a, b])).rejects.toThrow(
        `VM b disk vdb: cannot make overlay ${b.disks[1].overlay}`,
      );
      for (const d of [...a.disks, b.disks[0]]) expect(existsSync(d.overlay)).toBe(false);
      expect(existsSync(b.disks[1].overlay)).toBe(true); // not ours: left alone
    });

    it('removes the unused overlays of VMs not snapshotted, and keeps those of snapshotted VMs', async () => {
      const a = planned('a');
      const b = planned('b');
      await prepareOverlays(ctx, [a, b]);
      await host.hypervisor.snapshotDisks(
        'a',
        a.disks.map((d) => ({ target: d.target, file: d.overlay })),
        [],
        { reuse: true },
      );
      const reports: FreezeVmReport[] = [
        { domain: 'a', pausedByUs: true, snapshotted: true, quiesced: false },
        { domain: 'b', pausedByUs: true, snapshotted: false, quiesced: false },
      ];
      await removeUnusedOverlays(ctx, [a, b], reports);
      for (const d of a.disks) expect(existsSync(d.overlay)).toBe(true);
      for (const d of b.disks) expect(existsSync(d.overlay)).toBe(false);
    });

    it('never removes an overlay a disk uses, even of a VM whose report says it was not snapshotted', async () => {
      const a = planned('a');
      await prepareOverlays(ctx, [a]);
      await host.hypervisor.snapshotDisks(
        'a',
        a.disks.map((d) => ({ target: d.target, file: d.overlay })),
        [],
        { reuse: true },
      );
      await removeUnusedOverlays(ctx, [a], [{ domain: 'a', pausedByUs: true, snapshotted: false, quiesced: false }]);
      for (const d of a.disks) expect(existsSync(d.overlay)).toBe(true);
    });
  });
});

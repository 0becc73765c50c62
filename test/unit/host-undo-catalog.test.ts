import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { createHostContext, type HostContext } from '../../activities/host/context';
import { createCatalogActivities, uncatalog } from '../../activities/host/catalog';
import { createLeaseActivities } from '../../activities/host/leases';
import { undoOne } from '../../activities/host/undo';
import { manifestPath, parseVmMetadata } from '../../common/catalog';
import { overlayPath } from '../../common/host-types';
import type { DiskSnapshot } from '../../common/types';
import { FakeHost } from '../helpers/fake-hosts';

/** The undo and catalog rooms (activities/host/undo.ts, catalog.ts) on a fake host. */
describe('undo and catalog', () => {
  let host: FakeHost;
  let stateDir: string;
  let ctx: HostContext;

  beforeEach(() => {
    host = new FakeHost('undo');
    stateDir = mkdtempSync(join(tmpdir(), 'groupsnap-undo-'));
    ctx = createHostContext({ hypervisor: host.hypervisor, hostId: host.hostId, stateDir });
  });

  afterEach(() => {
    ctx.timers.disarmAll();
    host.cleanup();
    rmSync(stateDir, { recursive: true, force: true });
  });

  /** A VM with one disk snapshotted as `snapshotId` (its overlay now active), and that disk. */
  async function snapshotted(domain: string, snapshotId = 's1', state: 'running' | 'shutoff' = 'running') {
    host.addVm(domain, state, 1);
    const image = host.chain(domain)[0];
    const disk: DiskSnapshot = { target: 'vda', image, overlay: overlayPath(image, domain, 'vda', snapshotId) };
    await host.hypervisor.snapshotDisks(domain, [{ target: 'vda', file: disk.overlay }]);
    return disk;
  }

  describe('undo of one VM', () => {
    it('commits a running VM back into its image and removes the overlay', async () => {
      const disk = await snapshotted('a');
      const report = await undoOne(ctx, 's1', 'a', [disk]);
      expect(report).toEqual({ domain: 'a', hadSnapshot: true, rolledBack: true, cleanupPending: [] });
      expect(host.chain('a')).toEqual([disk.image]);
      expect(existsSync(disk.overlay)).toBe(false);
    });

    it('redefines a shut-off VM over its image instead of committing', async () => {
      const disk = await snapshotted('a', 's1', 'shutoff');
      const report = await undoOne(ctx, 's1', 'a', [disk]);
      expect(report.rolledBack).toBe(true);
      expect(host.hypervisor.calls.some((c) => c.startsWith('commit:'))).toBe(false);
      expect(host.chain('a')).toEqual([disk.image]);
      expect(existsSync(disk.overlay)).toBe(false);
    });

    it('leaves a chain that moved on alone, and reports the overlay still to clean up', async () => {
      const disk = await snapshotted('a');
      await host.hypervisor.snapshotDisks('a', [{ target: 'vda', file: overlayPath(disk.image, 'a', 'vda', 's2') }]);
      const report = await undoOne(ctx, 's1', 'a', [disk]);
      expect(report.rolledBack).toBe(false);
      expect(report.cleanupPending).toEqual([disk.overlay]);
      expect(report.error).toMatch(/vda: active image is .*s2\.qcow2, neither/);
      expect(host.chain('a')).toHaveLength(3);
    });

    it('reports a VM that is gone, with the files left', async () => {
      const disk = await snapshotted('a');
      host.hypervisor.domains.delete('a');
      const report = await undoOne(ctx, 's1', 'a', [disk]);
      expect(report).toMatchObject({ rolledBack: false, cleanupPending: [disk.overlay] });
      expect(report.error).toMatch(/a/);
    });
  });

  describe('catalog', () => {
    const entry = { snapshotId: 's1', group: 'g', createdAt: '2026-01-01T00:00:00.000Z' };

    async function record(domain: string, disk: DiskSnapshot, leaseOwner = 'run-1') {
      await createCatalogActivities(ctx).recordCatalog({
        entry,
        host: host.hostId,
        vms: [{ domain, uuid: 'u', disks: [disk] }],
        leaseOwner,
      });
    }

    it('records the snapshot in the metadata and a manifest, and undo takes both out again', async () => {
      const disk = await snapshotted('a');
      await createLeaseActivities(ctx).acquireLocks({ owner: 'run-1', domains: ['a'], ttlMs: 60_000 });
      await record('a', disk);
      const meta = () => parseVmMetadata(host.hypervisor.domains.get('a')!.metadata);
      expect(meta().snapshots.map((s) => s.snapshotId)).toEqual(['s1']);
      const manifest = manifestPath(dirname(disk.image), 'a', 's1');
      expect(JSON.parse(readFileSync(manifest, 'utf8'))).toMatchObject({
        snapshotId: 's1',
        domain: 'a',
        disks: [disk],
      });
      await uncatalog(ctx, 's1', 'run-1', 'a', [disk]);
      expect(meta().snapshots).toEqual([]);
      expect(existsSync(manifest)).toBe(false);
    });

    it('refuses for good a snapshot undone meanwhile, one without the lease, and one not in the chain', async () => {
      const disk = await snapshotted('a');
      await expect(record('a', disk)).rejects.toMatchObject({ type: 'LeaseLost', nonRetryable: true });
      await createLeaseActivities(ctx).acquireLocks({ owner: 'run-1', domains: ['a'], ttlMs: 60_000 });
      const elsewhere = { ...disk, image: join(host.dir, 'other.qcow2') };
      elsewhere.overlay = overlayPath(elsewhere.image, 'a', 'vda', 's1');
      await expect(record('a', elsewhere)).rejects.toMatchObject({ type: 'ChainMismatch', nonRetryable: true });
      await uncatalog(ctx, 's1', 'run-1', 'a', [disk]);
      await expect(record('a', disk)).rejects.toMatchObject({ type: 'SnapshotUndone', nonRetryable: true });
      expect(parseVmMetadata(host.hypervisor.domains.get('a')!.metadata).snapshots).toEqual([]);
    });
  });
});

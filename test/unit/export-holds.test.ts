import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createExportActivities } from '../../activities/export-activities';
import {
  EXPORT_HOLD_STALE_MS,
  ExportHold,
  exportHoldBlockers,
  registerExportHoldDir,
} from '../../activities/export-hold';
import { Repository } from '../../backup/repository';
import { openStore } from '../../backup/store';
import type { ExportDiskReport } from '../../common/backup-types';
import { renderVmMetadata, type VmMetadata } from '../../common/catalog';
import type { Hypervisor } from '../../hypervisor/hypervisor';
import { CountingStore } from '../helpers/counting-store';

/**
 * Export holds (issue 24, item 3) and the export activity's first steps (item 4), on real files, a real qemu-img
 * image and a repository in a directory; the activity runs in the SDK's MockActivityEnvironment.
 */
describe('export holds and the export activity', () => {
  let dir: string;
  let stateDir: string;
  const HOST = 'hv-holds';

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'gs-holds-'));
    stateDir = join(dir, 'state');
    registerExportHoldDir(HOST, stateDir);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const point = { domain: 'db-1', snapshotId: 'gs-20261207T010000Z-aaaaaa', target: 'vda' };
  const files = ['/img/db-1.vda.qcow2', '/img/db-1.vda.gs-1.qcow2'];

  describe('two holders of one point', () => {
    it('each holds its own record: releasing one keeps the other, and a deletion is blocked until both are released', () => {
      const a = ExportHold.take(stateDir, { ...point, files, repository: 's3://a/dr', holder: 'wf/run-1/1/1' });
      const b = ExportHold.take(stateDir, { ...point, files, repository: 's3://b/dr', holder: 'wf/run-2/1/1' });
      // A timed-out attempt and its retry to the same repository are two holders as well.
      const retry = ExportHold.take(stateDir, { ...point, files, repository: 's3://a/dr', holder: 'wf/run-1/1/2' });
      expect(new Set([a.file, b.file, retry.file]).size).toBe(3);
      expect(exportHoldBlockers(HOST, point.domain, [files[1]])).toHaveLength(3);
      a.release();
      retry.release();
      const left = exportHoldBlockers(HOST, point.domain, [files[1]]);
      expect(left).toEqual([expect.stringMatching(/an export of snapshot .* to s3:\/\/b\/dr\) still reads it/)]);
      b.release();
      expect(exportHoldBlockers(HOST, point.domain, [files[1]])).toEqual([]);
    });

    it('a hold of a dead export (not refreshed) expires; a refreshed one does not', () => {
      const dead = ExportHold.take(stateDir, { ...point, files, repository: 's3://a/dr', holder: 'dead' });
      const live = ExportHold.take(stateDir, { ...point, files, repository: 's3://b/dr', holder: 'live' });
      const old = new Date(Date.now() - EXPORT_HOLD_STALE_MS - 60_000);
      utimesSync(dead.file, old, old);
      utimesSync(live.file, old, old);
      live.refresh();
      expect(exportHoldBlockers(HOST, point.domain, files)).toEqual([expect.stringContaining('s3://b/dr')]);
    });
  });

  describe('exportVmDisk', () => {
    const key = randomBytes(32);
    let image: string;
    let url: string;
    let store: CountingStore;
    let keyFile: string;

    /** A hypervisor with one VM and one snapshot whose `deleting` mark the test controls per metadata read. */
    function hypervisor(deletingOnRead: (n: number) => boolean): Hypervisor {
      let reads = 0;
      const meta = (deleting: boolean): VmMetadata => ({
        tags: [],
        clones: [],
        restores: [],
        snapshots: [
          {
            ...point,
            group: 'shop',
            createdAt: '2026-12-07T01:00:00.000Z',
            ...(deleting ? { deleting: true } : {}),
            disks: [{ target: 'vda', image, overlay: join(dir, 'overlay.qcow2') }],
          },
        ],
      });
      return {
        getMetadata: async () => renderVmMetadata(meta(deletingOnRead(++reads))),
        describe: async () => ({ disks: [{ target: 'vda', format: 'qcow2' }] }),
      } as unknown as Hypervisor;
    }

    beforeEach(async () => {
      image = join(dir, 'db-1.vda.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '4M']);
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x41 0 256k', image], { stdio: 'ignore' });
      url = `file://${join(dir, 'repo')}`;
      (await Repository.init(url, key, { chunkSize: 64 * 1024 })).close();
      keyFile = join(dir, 'repo.key');
      writeFileSync(keyFile, key.toString('base64'), { mode: 0o600 });
      store = new CountingStore(openStore(url));
    });

    const request = () => ({ ...point, group: 'shop', repository: url });

    it('heartbeats at once, before the repository lock, and on during a slow chunk index listing', async () => {
      const env = new MockActivityEnvironment();
      let beats = 0;
      env.on('heartbeat', () => beats++);
      const acts = createExportActivities({
        hypervisor: hypervisor(() => false),
        hostId: HOST,
        stateDir,
        keyFile,
        repositoryOptions: { store },
      });
      let beatsAtLock: number | undefined;
      const atList: Record<string, [number, number]> = {};
      store.onList = (prefix) => {
        if (prefix === 'locks/' && beatsAtLock === undefined) beatsAtLock = beats;
        if (prefix === 'index/' || prefix === 'chunks/') atList[prefix] = [beats, -1];
      };
      store.onListed = (prefix) => {
        if (atList[prefix]) atList[prefix][1] = beats;
      };
      // A repository nothing has indexed yet: its first export lists the chunks (once), slowly here.
      store.slow = { 'index/': 2500, 'chunks/': 2500 };
      const report = (await env.run(() => acts.exportVmDisk(request()))) as ExportDiskReport;
      expect(report.stats.chunksData).toBe(4);
      expect(beatsAtLock).toBeGreaterThanOrEqual(1);
      for (const prefix of ['index/', 'chunks/']) {
        const [before, after] = atList[prefix];
        expect(after - before).toBeGreaterThanOrEqual(2);
      }
      expect(readdirSync(join(stateDir, 'export-holds'))).toEqual([]);
      // The base point is looked up by name from the catalog: the repository's points are never listed.
      expect(store.lists.filter((p) => p.startsWith('points/'))).toEqual([]);
    }, 30_000);

    it('gives up cleanly when a deletion marked the snapshot before its hold was seen: hold released, nothing locked', async () => {
      // First read (before the hold): not deleting; the re-read after taking the hold: deleting.
      const acts = createExportActivities({
        hypervisor: hypervisor((n) => n > 1),
        hostId: HOST,
        stateDir,
        keyFile,
        repositoryOptions: { store },
      });
      const env = new MockActivityEnvironment();
      await expect(env.run(() => acts.exportVmDisk(request()))).rejects.toMatchObject({
        nonRetryable: true,
        message: expect.stringMatching(/is being deleted/),
      });
      expect(readdirSync(join(stateDir, 'export-holds'))).toEqual([]);
      expect(store.puts.filter((k) => k.startsWith('locks/') || k.startsWith('chunks/'))).toEqual([]);
    });
  });
});

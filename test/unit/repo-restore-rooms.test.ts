import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type { Repository } from '../../backup/repository';
import { BAD_INPUT } from '../../common/failures';
import type { RepoRestorePlanRequest } from '../../common/repo-restore';
import type { Hypervisor } from '../../hypervisor/hypervisor';
import { createRepoRestoreContext, type RepoRestoreContext } from '../../activities/repo-restore/context';
import { isEarlierDefine } from '../../activities/repo-restore/define';
import { identityProblems, planVm, type HostDomains } from '../../activities/repo-restore/plan';
import { plannedRestoreOf, plannedUuidOf, recordedVm } from '../../activities/repo-restore/records';
import { hostFilesOf } from '../../activities/repo-restore/remove';
import { restoredDiskPath } from '../../activities/repo-restore/names';

const HOST = 'hv-c';
const UUID = '0b8e5a8e-1111-2222-3333-444455556666';

/** A stored VM: one raw disk, a serial console file, and (when `cdrom`) a CD-ROM of the old host. */
const domainXml = (name: string, cdrom = false) => `<domain type='kvm'>
  <name>${name}</name>
  <uuid>${UUID}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/srv/a/${name}-vda.raw'/><target dev='vda' bus='virtio'/></disk>
    ${cdrom ? "<disk type='file' device='cdrom'><source file='/srv/iso/install.iso'/><target dev='sdb' bus='sata'/><readonly/></disk>" : ''}
    <serial type='file'><source path='/srv/a/${name}.console.log'/><target port='0'/></serial>
  </devices>
</domain>`;

const none: HostDomains = { names: new Set(), uuids: new Set() };

describe("the restore plan's per-VM identity checks (identityProblems)", () => {
  it('passes a VM whose name and UUID are free', () => {
    expect(identityProblems(HOST, 'clone', 'db-1', 'db-1-dr', UUID, none)).toEqual([]);
    expect(identityProblems(HOST, 'original', 'db-1', 'db-1', UUID, none)).toEqual([]);
  });

  it('refuses a name taken, telling a clone to choose another suffix and the original that it does not replace', () => {
    const taken = { names: new Set(['db-1-dr', 'db-1']), uuids: new Set<string>() };
    expect(identityProblems(HOST, 'clone', 'db-1', 'db-1-dr', UUID, taken)).toEqual([
      `VM db-1-dr already exists on ${HOST} (choose another suffix)`,
    ]);
    expect(identityProblems(HOST, 'original', 'db-1', 'db-1', UUID, taken)).toEqual([
      `VM db-1 already exists on ${HOST}: a restore as the original refuses to replace it`,
    ]);
  });

  it('refuses the original when another VM has its stored UUID, but not a clone (which gets a new one)', () => {
    const other = { names: new Set(['web-1']), uuids: new Set([UUID]) };
    expect(identityProblems(HOST, 'original', 'db-1', 'db-1', UUID, other)).toEqual([
      `a VM with the UUID of db-1 (${UUID}) already exists on ${HOST}`,
    ]);
    expect(identityProblems(HOST, 'clone', 'db-1', 'db-1-dr', UUID, other)).toEqual([]);
    // The same VM by name and UUID: one problem (the name), not two.
    const same = { names: new Set(['db-1']), uuids: new Set([UUID]) };
    expect(identityProblems(HOST, 'original', 'db-1', 'db-1', UUID, same)).toHaveLength(1);
  });
});

describe("the define step's retry rule (isEarlierDefine)", () => {
  it('takes an existing VM for its own earlier define only when it has the planned UUID', () => {
    expect(isEarlierDefine({ uuid: UUID.toUpperCase() }, UUID)).toBe(true);
    expect(isEarlierDefine({ uuid: UUID }, '11111111-2222-3333-4444-555555555555')).toBe(false);
    // No planned UUID: a VM with that name is never taken for this restore's.
    expect(isEarlierDefine({ uuid: UUID }, undefined)).toBe(false);
  });
});

describe('planning one VM of a point (planVm), on a fake repository', () => {
  let dir: string;
  let ctx: RepoRestoreContext;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'gs-plan-vm-'));
    ctx = createRepoRestoreContext({
      hypervisor: {} as Hypervisor, // planVm asks the hypervisor nothing: the host's VMs are given
      hostId: HOST,
      imagesDir: join(dir, 'images'),
      stateDir: join(dir, 'state'),
    });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const MiB = 1024 * 1024;
  /** A repository holding one VM manifest and its disk's (two chunks of 1 MiB, one with data). */
  const repoOf = (xml: string, target = 'vda') =>
    ({
      readManifestAt: async (key: string) =>
        key === 'vm'
          ? { domainXml: xml, disks: [{ target, manifest: 'disk', virtualSize: 2 * MiB }] }
          : { chunks: ['c1', null], chunkSize: MiB, virtualSize: 2 * MiB },
    }) as unknown as Repository;
  const req: RepoRestorePlanRequest = {
    repo: 'file:///unused',
    group: 'shop',
    snapshotId: 'gs-1',
    restoreId: 'r1',
    mode: 'clone',
    suffix: '-dr',
    format: 'raw',
  } as RepoRestorePlanRequest;
  const entry = { domain: 'db-1', host: 'hv-a', manifest: 'vm', disks: [] };

  it('plans the VM: new name, a fresh UUID, its disk file and the files its definition writes', async () => {
    const planned = new Set<string>();
    const p = await planVm(ctx, repoOf(domainXml('db-1')), req, entry, none, planned);
    const file = restoredDiskPath(ctx.imagesDir, 'db-1-dr', 'vda', 'r1', 'raw');
    expect(p.problems).toEqual([]);
    expect(p.bytes).toBe(MiB);
    expect(p.vm).toMatchObject({ source: 'db-1', domain: 'db-1-dr', sourceHost: 'hv-a' });
    expect(p.vm!.uuid).not.toBe(UUID);
    expect(p.vm!.disks).toEqual([{ target: 'vda', file, format: 'raw', virtualSize: 2 * MiB, dataBytes: MiB }]);
    expect(p.storedType).toBe('kvm');
    expect(planned.has(file)).toBe(true);
    // The console log moves into the images dir under the new name, and is planned too.
    expect([...planned].filter((f) => f !== file)).toEqual([expect.stringMatching(/^.*\/images\/[^/]+$/)]);
  });

  it('names every problem of the VM at once: name taken, disk file there, console file there', async () => {
    const first = new Set<string>();
    await planVm(ctx, repoOf(domainXml('db-1')), req, entry, none, first);
    mkdirSync(ctx.imagesDir, { recursive: true });
    for (const f of first) writeFileSync(f, '');
    const taken = { names: new Set(['db-1-dr']), uuids: new Set<string>() };
    const p = await planVm(ctx, repoOf(domainXml('db-1')), req, entry, taken, new Set());
    expect(p.problems).toEqual([
      expect.stringContaining('VM db-1-dr already exists'),
      expect.stringMatching(/^file .*db-1-dr\.vda\.r1\.raw already exists on hv-c$/),
      expect.stringMatching(/^file .* of db-1-dr already exists on hv-c$/),
    ]);
  });

  it('refuses a file another VM of the same restore already planned', async () => {
    const planned = new Set([restoredDiskPath(ctx.imagesDir, 'db-1-dr', 'vda', 'r1', 'raw')]);
    const p = await planVm(ctx, repoOf(domainXml('db-1')), req, entry, none, planned);
    expect(p.problems).toEqual([expect.stringMatching(/db-1-dr\.vda\.r1\.raw already exists/)]);
  });

  it('reports a stored definition naming host resources as a problem (not a throw), its bytes still counted', async () => {
    const p = await planVm(ctx, repoOf(domainXml('db-1', true)), req, entry, none, new Set());
    expect(p.vm).toBeUndefined();
    expect(p.bytes).toBe(MiB);
    expect(p.problems).toEqual([expect.stringMatching(/^VM db-1: .*cdrom/)]);
  });

  it('refuses names from the manifests that are not names, before any file is derived from them', async () => {
    const p = await planVm(ctx, repoOf(domainXml('db-1'), '../etc'), req, { ...entry, host: 'a/b' }, none, new Set());
    expect(p.vm).toBeUndefined();
    expect(p.problems).toEqual([
      `the point's host id "a/b" is not valid`,
      `the point's disk target of db-1 "../etc" is not valid`,
    ]);
  });
});

describe("a host's restore records: what it may write, define and remove", () => {
  let dir: string;
  let ctx: RepoRestoreContext;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'gs-records-'));
    ctx = createRepoRestoreContext({
      hypervisor: {} as Hypervisor,
      hostId: HOST,
      imagesDir: join(dir, 'images'),
      stateDir: join(dir, 'state'),
    });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const badInput = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      return err instanceof ApplicationFailure && err.type === BAD_INPUT ? err.message : `not BAD_INPUT: ${err}`;
    }
    return 'no failure';
  };

  it('finds the restore that planned a disk file, and refuses any other file', () => {
    const file = restoredDiskPath(ctx.imagesDir, 'db-1-dr', 'vda', 'r1', 'qcow2');
    ctx.records.plan('r1', [
      { source: 'db-1', domain: 'db-1-dr', uuid: UUID, disks: [{ target: 'vda', file, format: 'qcow2' }] },
    ]);
    const req = { domain: 'db-1', target: 'vda', file, format: 'qcow2' } as Parameters<typeof plannedRestoreOf>[3];
    expect(plannedRestoreOf(ctx.records, ctx.imagesDir, HOST, req)).toBe('r1');
    expect(badInput(() => plannedRestoreOf(ctx.records, ctx.imagesDir, HOST, { ...req, target: 'vdb' }))).toMatch(
      /is not a disk a restore planned on hv-c for db-1 vdb/,
    );
    expect(badInput(() => plannedRestoreOf(ctx.records, ctx.imagesDir, HOST, { ...req, file: '/etc/passwd' }))).toMatch(
      /is not a disk a restore planned/,
    );
  });

  it("gives the planned UUID (lower case), the request's when none is recorded, and refuses another", () => {
    ctx.records.plan('r1', [{ source: 'db-1', domain: 'db-1-dr', uuid: UUID.toUpperCase(), disks: [] }]);
    expect(plannedUuidOf(ctx.records, 'r1', 'db-1-dr', undefined)).toBe(UUID);
    expect(plannedUuidOf(ctx.records, 'r1', 'db-1-dr', UUID.toUpperCase())).toBe(UUID);
    expect(plannedUuidOf(ctx.records, 'r2', 'db-1-dr', 'AA')).toBe('aa');
    expect(badInput(() => plannedUuidOf(ctx.records, 'r1', 'db-1-dr', '11111111-2222-3333-4444-555555555555'))).toBe(
      `VM db-1-dr of restore r1 was planned with UUID ${UUID}, not 11111111-2222-3333-4444-555555555555`,
    );
  });

  it('gathers the files and UUIDs every restore recorded for a VM name', () => {
    ctx.records.plan('r1', [
      { source: 'db-1', domain: 'db-1-dr', uuid: UUID, disks: [{ target: 'vda', file: '/i/a', format: 'raw' }] },
    ]);
    ctx.records.plan('r2', [
      { source: 'db-1', domain: 'db-1-dr', uuid: 'BB', disks: [{ target: 'vda', file: '/i/b', format: 'raw' }] },
    ]);
    const { files, uuids } = recordedVm(ctx.records, 'db-1-dr');
    expect([...files].sort()).toEqual(['/i/a', '/i/b']);
    expect([...uuids].sort()).toEqual([UUID, 'bb'].sort());
    expect(recordedVm(ctx.records, 'other').files.size).toBe(0);
  });
});

describe("a restored VM's console files (hostFilesOf)", () => {
  it("lists the character devices' files directly in the images dir, nothing outside or below it", () => {
    const xml = `<domain><devices>
      <serial type='file'><source path='/img/a.log'/></serial>
      <console type='unix'><source mode='bind' path="/img/a.sock"/></console>
      <serial type='pty'><log file='/img/b.log'/></serial>
      <serial type='file'><source path='/img/sub/c.log'/></serial>
      <serial type='file'><source path='/etc/d.log'/></serial>
    </devices></domain>`;
    expect(hostFilesOf(xml, '/img')).toEqual(['/img/a.log', '/img/a.sock', '/img/b.log']);
  });
});

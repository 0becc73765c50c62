import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { accessSync, chmodSync, constants, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { join, relative, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { ApplicationFailure } from '@temporalio/common';
import { readKeyFile } from '../backup/crypto';
import {
  DamagedObjectError,
  PointNotFoundError,
  RepositoryInputError,
  RepositoryNotFoundError,
  WrongKeyError,
} from '../backup/errors';
import type { DiskManifest, GroupManifest, VmManifest } from '../backup/manifest';
import { RepositoryLock } from '../backup/locks';
import { Repository } from '../backup/repository';
import { METADATA_NAMESPACE } from '../common/names';
import type {
  DefineRestoredVmRequest,
  PlannedVm,
  RebuildDiskReport,
  RebuildDiskRequest,
  RemoveRestoredVmRequest,
  RepoRestorePlan,
  RepoRestorePlanRequest,
} from '../common/repo-restore';
import type { VmPowerState } from '../common/types';
import { diskTarget, domainName, isDomainName, safeName, uuid as uuidSchema } from '../common/host-requests';
import { BAD_INPUT, failure } from '../common/failures';
import { parseDomainTree } from '../hypervisor/domain-tree';
import { DomainNotFoundError } from '../hypervisor/errors';
import type { Hypervisor } from '../hypervisor/hypervisor';
import {
  buildRestoredDomain,
  DEFAULT_BOOT_FILE_DIRS,
  DomainXmlError,
  HostResourceError,
  restoreEndpoints,
  type RestoredDomain,
  type RestoreXmlOptions,
} from '../hypervisor/restore-xml';
import { heartbeat } from './heartbeat';
import { socketLinkPorts } from '../hypervisor/socket-links';
import { mergeSocketPortChoices } from '../common/socket-ports';
import { chooseSocketPorts } from './socket-ports';
import { PRIVATE_FILE_MODE, RestoreRecords } from './restore-records';

const run = promisify(execFile);

/** Colon-separated directories restored VMs may boot read-only files from, added to the firmware directories. */
export const BOOT_FILE_DIRS_ENV = 'GROUPSNAP_BOOT_FILE_DIRS';

/** Environment variable naming the repository key file on a host (the worker's `--key-file` sets it). */
export const REPO_KEY_FILE_ENV = 'GROUPSNAP_REPO_KEY_FILE';

export interface RepoRestoreDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** Where restored disks go on this host. */
  imagesDir: string;
  /** This host's state dir: the records of what each restore planned and wrote (see RestoreRecords). */
  stateDir: string;
  /** The repository key file on this host. @default $GROUPSNAP_REPO_KEY_FILE */
  keyFile?: string;
  /** More directories restored VMs may boot read-only files from (added to the firmware dirs and $GROUPSNAP_BOOT_FILE_DIRS). */
  bootFileDirs?: string[];
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

const bad = (msg: string) => failure('badInput', msg);

/** Whether QEMU started by this host's libvirt can use KVM (its user can open /dev/kvm). */
function kvmUsable(): boolean {
  const forced = process.env.GROUPSNAP_VIRT_TYPE;
  if (forced === 'qemu') return false;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * A restored disk's file: `<imagesDir>/<domain>.<target>.<restoreId>.<format>`, only ever a file directly in
 * `imagesDir`.
 * @throws BadInputError-like ApplicationFailure (BAD_INPUT) for a name that is not one, or a path that would leave it.
 */
export function restoredDiskPath(imagesDir: string, domain: string, target: string, restoreId: string, format: string) {
  const problems: string[] = [];
  if (!isDomainName(domain)) problems.push(`VM name ${JSON.stringify(domain)} is not valid`);
  if (!diskTarget.safeParse(target).success) problems.push(`disk target ${JSON.stringify(target)} is not valid`);
  const id = safeName('restore id').safeParse(restoreId);
  if (!id.success) problems.push(id.error.issues[0].message);
  if (format !== 'raw' && format !== 'qcow2') problems.push(`disk format ${JSON.stringify(format)} is not valid`);
  if (problems.length) throw bad(problems.join('; '));
  const file = join(imagesDir, `${domain}.${target}.${restoreId}.${format}`);
  const rel = relative(resolve(imagesDir), resolve(file));
  if (rel === '' || rel.startsWith('..') || rel.includes(sep))
    throw bad(`restored disk ${JSON.stringify(file)} would not be a file of ${imagesDir}`);
  return file;
}

/** Problems of a name read from a repository manifest (data, not trusted: it becomes part of file names here). */
function manifestNameProblems(what: string, value: unknown, schema: { safeParse(v: unknown): { success: boolean } }) {
  return schema.safeParse(value).success ? [] : [`the point's ${what} ${JSON.stringify(value)} is not valid`];
}

/** Makes `file` (empty) with mode 0600, or sets an existing one to it: data written into it stays private. */
function privateFile(file: string): void {
  writeFileSync(file, '', { mode: PRIVATE_FILE_MODE, flag: 'w' });
  chmodSync(file, PRIVATE_FILE_MODE);
}

/** The stored domain XML's UUID (a restore as the original keeps it). */
function storedUuid(xml: string): string | undefined {
  return /<uuid>([^<]*)<\/uuid>/.exec(xml)?.[1]?.trim().toLowerCase();
}

/**
 * The restore that planned `req.file` for this disk, after deriving the file again from the recorded names: a
 * host writes no other file. @throws BAD_INPUT otherwise (nothing written).
 */
function plannedRestoreOf(records: RestoreRecords, imagesDir: string, hostId: string, req: RebuildDiskRequest): string {
  for (const rec of records.all()) {
    for (const vm of rec.vms) {
      if (vm.source !== req.domain) continue;
      const disk = vm.disks.find((d) => d.target === req.target && d.file === req.file && d.format === req.format);
      if (disk && restoredDiskPath(imagesDir, vm.domain, disk.target, rec.restoreId, disk.format) === req.file)
        return rec.restoreId;
    }
  }
  throw bad(`${req.file} is not a disk a restore planned on ${hostId} for ${req.domain} ${req.target}`);
}

/** The UUID planned for `domain` by restore `restoreId` (the record's, which must agree with the request's). */
function plannedUuidOf(
  records: RestoreRecords,
  restoreId: string,
  domain: string,
  requested: string | undefined,
): string | undefined {
  const recorded = records
    .get(restoreId)
    ?.vms.find((v) => v.domain === domain)
    ?.uuid?.toLowerCase();
  if (requested && recorded && requested.toLowerCase() !== recorded)
    throw bad(`VM ${domain} of restore ${restoreId} was planned with UUID ${recorded}, not ${requested}`);
  return recorded ?? requested?.toLowerCase();
}

/** The files and UUIDs restores recorded for a VM named `domain` on this host. */
function recordedVm(records: RestoreRecords, domain: string): { files: Set<string>; uuids: Set<string> } {
  const vms = records.all().flatMap((r) => r.vms.filter((v) => v.domain === domain));
  return {
    files: new Set(vms.flatMap((v) => v.disks.map((d) => d.file))),
    uuids: new Set(vms.map((v) => v.uuid.toLowerCase())),
  };
}

/** What is wrong with the names a point's manifests give a VM (they become file names here), and its name here. */
function vmNameProblems(v: { domain: string; host: string }, vm: VmManifest, domain: string): string[] {
  return [
    ...manifestNameProblems('VM name', v.domain, domainName),
    ...manifestNameProblems('restored VM name', domain, domainName),
    ...manifestNameProblems('host id', v.host, safeName('host id')),
    ...vm.disks.flatMap((d) => manifestNameProblems(`disk target of ${v.domain}`, d.target, diskTarget)),
  ];
}

type DefinitionOptions = Omit<RestoreXmlOptions, 'imagesDir' | 'metadataNamespace' | 'bootFileDirs'>;

/**
 * A VM's definition for this host, from its stored XML through the restore allow-list (the same build in the plan
 * and at define time). @throws BAD_INPUT naming every offending element when it names host resources
 */
function definitionFor(domainXml: string, o: DefinitionOptions, imagesDir: string, bootFileDirs: string[]) {
  try {
    return buildRestoredDomain(domainXml, { ...o, imagesDir, metadataNamespace: METADATA_NAMESPACE, bootFileDirs });
  } catch (err) {
    if (err instanceof HostResourceError || err instanceof DomainXmlError)
      throw bad(`VM ${o.sourceName}: ${err.message}`);
    throw err;
  }
}

/** The TCP/UDP endpoints of every VM of a point: what its restored VMs may connect to among themselves. */
async function pointEndpoints(repo: Repository, group: GroupManifest) {
  const vms = group.vms.map(async (v) => ({
    name: v.domain,
    xml: (await repo.readManifestAt<VmManifest>(v.manifest)).domainXml,
  }));
  return restoreEndpoints(await Promise.all(vms));
}

/**
 * The target host's side of a restore from the repository: plan (read the point, check names, files and space;
 * changes nothing), rebuild one disk from its chunks (sparse), define a VM from the stored XML, and remove what a
 * failed restore made. The key file is read here, on the host: it never passes through Temporal.
 */
export function createRepoRestoreActivities(deps: RepoRestoreDeps) {
  const { hypervisor, imagesDir } = deps;
  const log = deps.log ?? (() => {});
  const bootFileDirs = [
    ...DEFAULT_BOOT_FILE_DIRS,
    ...(process.env[BOOT_FILE_DIRS_ENV] ?? '').split(':').filter((d) => d.startsWith('/')),
    ...(deps.bootFileDirs ?? []),
  ];

  const restoredDefinition = (domainXml: string, o: DefinitionOptions) =>
    definitionFor(domainXml, o, imagesDir, bootFileDirs);

  const records = new RestoreRecords(deps.stateDir);

  async function openRepo(url: string): Promise<Repository> {
    const keyFile = deps.keyFile ?? process.env[REPO_KEY_FILE_ENV];
    if (!keyFile)
      throw bad(`host ${deps.hostId} has no repository key: start its worker with --key-file or ${REPO_KEY_FILE_ENV}`);
    try {
      return await Repository.open(url, readKeyFile(keyFile));
    } catch (err) {
      if (err instanceof RepositoryInputError || err instanceof RepositoryNotFoundError || err instanceof WrongKeyError)
        throw bad(`on host ${deps.hostId}: ${(err as Error).message}`);
      throw err;
    }
  }

  /** Runs `fn` on the repository under a shared lock, so a prune does not delete the point while it is read. */
  async function withRepo<T>(url: string, fn: (repo: Repository) => Promise<T>): Promise<T> {
    const repo = await openRepo(url);
    try {
      return await RepositoryLock.holdForReading(repo, () => fn(repo), {
        owner: deps.hostId,
        onUnlocked: (why) => log('reading the repository without a lock (read-only store access)', { why }),
      });
    } catch (err) {
      if (err instanceof PointNotFoundError) throw bad(err.message);
      if (err instanceof DamagedObjectError)
        throw failure('damagedPoint', `the point is damaged in the repository: ${err.message}`);
      throw err;
    } finally {
      repo.close();
    }
  }

  async function domainNames(): Promise<{ names: Set<string>; uuids: Set<string> }> {
    const all = await hypervisor.listDomains();
    return { names: new Set(all.map((d) => d.name)), uuids: new Set(all.map((d) => d.uuid.toLowerCase())) };
  }

  return {
    /** Reads the point and checks the target: names free, files absent, enough space. Changes nothing. */
    async repoRestorePlan(req: RepoRestorePlanRequest): Promise<RepoRestorePlan> {
      return withRepo(req.repo, async (repo) => {
        const group = await repo.readGroupManifest(req.group, req.snapshotId);
        const { names, uuids } = await domainNames();
        const problems: string[] = [];
        const vms: PlannedVm[] = [];
        let bytesNeeded = 0;
        const xmls: string[] = [];
        const storedTypes: string[] = [];
        const planned = new Set<string>();
        const endpoints = await pointEndpoints(repo, group);
        for (const v of group.vms) {
          const vm = await repo.readManifestAt<VmManifest>(v.manifest);
          const domain = req.mode === 'clone' ? `${v.domain}${req.suffix}` : v.domain;
          // Names read from the repository become file names here: checked like any request.
          const nameProblems = vmNameProblems(v, vm, domain);
          if (nameProblems.length) {
            problems.push(...nameProblems);
            continue;
          }
          const stored = storedUuid(vm.domainXml);
          // The UUID the VM gets here, chosen now so that a retried define, and compensation, know it.
          const uuid =
            req.mode === 'original' && stored && uuidSchema.safeParse(stored).success ? stored : randomUUID();
          if (names.has(domain))
            problems.push(
              req.mode === 'clone'
                ? `VM ${domain} already exists on ${deps.hostId} (choose another suffix)`
                : `VM ${domain} already exists on ${deps.hostId}: a restore as the original refuses to replace it`,
            );
          if (req.mode === 'original') {
            if (stored && uuids.has(stored) && !names.has(domain))
              problems.push(`a VM with the UUID of ${v.domain} (${stored}) already exists on ${deps.hostId}`);
          }
          const disks = [];
          for (const d of vm.disks) {
            const disk = await repo.readManifestAt<DiskManifest>(d.manifest);
            const dataBytes = disk.chunks.reduce(
              (sum, id, i) => sum + (id === null ? 0 : Math.min(disk.chunkSize, disk.virtualSize - i * disk.chunkSize)),
              0,
            );
            const file = restoredDiskPath(imagesDir, domain, d.target, req.restoreId, req.format);
            if (existsSync(file) || planned.has(file)) problems.push(`file ${file} already exists on ${deps.hostId}`);
            planned.add(file);
            bytesNeeded += dataBytes;
            disks.push({ target: d.target, file, format: req.format, virtualSize: d.virtualSize, dataBytes });
          }
          // The stored definition is built here too: one naming host resources is refused before a disk is written.
          let def: RestoredDomain;
          try {
            def = restoredDefinition(vm.domainXml, {
              sourceName: v.domain,
              name: domain,
              identity: req.mode === 'original' ? 'keep' : 'new',
              disks,
              networkMap: req.networkMap ?? {},
              noNetwork: req.noNetwork ?? false,
              stripHostDevices: req.stripHostDevices ?? false,
              restoreEndpoints: endpoints,
            });
          } catch (err) {
            // Every VM's offending elements in one answer.
            if (!(err instanceof ApplicationFailure) || err.type !== BAD_INPUT) throw err;
            problems.push(err.message);
            continue;
          }
          xmls.push(def.xml);
          // A file the VM would write (a serial log, a socket) must be new: not another VM's disk, not one of this
          // restore's other files (the stored definition chose its name).
          for (const f of def.files) {
            if (existsSync(f) || planned.has(f))
              problems.push(`file ${f} of ${domain} already exists on ${deps.hostId}`);
            planned.add(f);
          }
          storedTypes.push(parseDomainTree(vm.domainXml).attrs.type);
          vms.push({
            source: v.domain,
            domain,
            sourceHost: v.host,
            uuid,
            disks,
            ...(def.removed.length ? { removed: def.removed } : {}),
          });
        }
        mkdirSync(imagesDir, { recursive: true });
        const fs = await statfs(imagesDir);
        const bytesFree = Number(fs.bavail) * Number(fs.bsize);
        // qcow2 is rebuilt through a raw file of the same data: twice the data at the peak.
        const peak = req.format === 'qcow2' ? bytesNeeded * 2 : bytesNeeded;
        if (peak > bytesFree)
          problems.push(
            `not enough space in ${imagesDir} on ${deps.hostId}: the point needs ${peak} bytes, ${bytesFree} are free`,
          );
        if (problems.length) throw bad(problems.join('; '));
        // What this restore may write, and later remove, on this host.
        records.plan(
          req.restoreId,
          vms.map((v) => ({
            source: v.source,
            domain: v.domain,
            uuid: v.uuid!,
            disks: v.disks.map((d) => ({ target: d.target, file: d.file, format: d.format })),
          })),
        );
        const storedType = storedTypes[0];
        const virtType = storedType === 'kvm' && !kvmUsable() ? 'qemu' : undefined;
        // Clones' socket links get fresh ports free on this host (every VM of the restore lands here), one map for
        // the whole group; a restore as the original keeps its ports (the originals are gone).
        const socketPorts =
          req.mode === 'clone' && xmls.some((x) => socketLinkPorts(x).length > 0)
            ? mergeSocketPortChoices([await chooseSocketPorts(xmls)])
            : undefined;
        return {
          vms,
          imagesDir,
          bytesNeeded,
          bytesFree,
          snapshotCreatedAt: group.snapshotCreatedAt,
          ...(virtType ? { virtType } : {}),
          ...(socketPorts ? { socketPorts } : {}),
        };
      });
    },

    /**
     * Rebuilds one disk from its chunks: a sparse raw file (zero chunks stay holes), converted to qcow2 when asked
     * (`qemu-img convert` skips zeros). Starts over when retried; heartbeats its progress.
     */
    async rebuildDisk(req: RebuildDiskRequest): Promise<RebuildDiskReport> {
      const restoreId = plannedRestoreOf(records, imagesDir, deps.hostId, req);
      return withRepo(req.repo, async (repo) => {
        const disk = await repo.readDiskManifest(req.group, req.snapshotId, req.domain, req.target);
        const raw = req.format === 'raw' ? req.file : `${req.file}.raw.part`;
        let bytesWritten = 0;
        records.created(restoreId, req.file);
        try {
          rmSync(raw, { force: true });
          privateFile(raw);
          await repo.writeDiskImage(disk, raw, {
            concurrency: 8,
            onProgress: (done, total) => heartbeat({ done, total }),
          });
          bytesWritten = disk.chunks.reduce(
            (sum, id, i) => sum + (id === null ? 0 : Math.min(disk.chunkSize, disk.virtualSize - i * disk.chunkSize)),
            0,
          );
          if (req.format === 'qcow2') {
            rmSync(req.file, { force: true });
            // qemu-img keeps the mode of the file it converts into: made private first.
            privateFile(req.file);
            const convert = run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, req.file]);
            const beat = setInterval(() => heartbeat({ converting: req.file }), 1000);
            try {
              await convert;
            } finally {
              clearInterval(beat);
            }
            chmodSync(req.file, PRIVATE_FILE_MODE);
          }
        } finally {
          if (raw !== req.file) rmSync(raw, { force: true });
        }
        log('disk rebuilt from the repository', {
          domain: req.domain,
          target: req.target,
          file: req.file,
          bytesWritten,
        });
        return { file: req.file, bytesWritten, virtualSize: disk.virtualSize };
      });
    },

    /** Defines the VM from its stored XML, rewritten for this host. Returns its name and UUID. */
    async defineRestoredVm(req: DefineRestoredVmRequest): Promise<{ domain: string; uuid: string }> {
      return withRepo(req.repo, async (repo) => {
        const vm = await repo.readVmManifest(req.group, req.snapshotId, req.vm.source);
        const planned = plannedUuidOf(records, req.restoreId, req.vm.domain, req.vm.uuid);
        const { xml } = restoredDefinition(vm.domainXml, {
          ...(planned ? { assignUuid: planned } : {}),
          sourceName: req.vm.source,
          name: req.vm.domain,
          identity: req.mode === 'original' ? 'keep' : 'new',
          disks: req.vm.disks.map((d) => ({ target: d.target, file: d.file, format: d.format })),
          networkMap: req.networkMap,
          noNetwork: req.noNetwork,
          ...(req.socketPorts ? { socketPorts: req.socketPorts } : {}),
          ...(req.virtType ? { virtType: req.virtType } : {}),
          stripHostDevices: req.stripHostDevices ?? false,
          restoreEndpoints: await pointEndpoints(repo, await repo.readGroupManifest(req.group, req.snapshotId)),
        });
        const existing = (await hypervisor.listDomains()).find((d) => d.name === req.vm.domain);
        if (existing) {
          // A retry after a define whose completion was lost: the VM with the planned name and UUID is this one.
          if (planned && existing.uuid.toLowerCase() === planned) {
            log('restored VM already defined (retry)', { domain: existing.name, uuid: existing.uuid });
            return { domain: existing.name, uuid: existing.uuid };
          }
          throw bad(`VM ${req.vm.domain} already exists on ${deps.hostId}`);
        }
        const defined = await hypervisor.defineDomain(xml);
        log('restored VM defined', { domain: defined.name, uuid: defined.uuid, restoreId: req.restoreId });
        return { domain: defined.name, uuid: defined.uuid };
      });
    },

    /** Starts a restored VM with its vCPUs paused (idempotent: a running or paused VM is left as it is). */
    async startRestoredVm(req: { domain: string; paused: boolean }): Promise<VmPowerState> {
      const state = await hypervisor.state(req.domain);
      if (state === 'shutoff') await hypervisor.start(req.domain, { paused: req.paused });
      return hypervisor.state(req.domain);
    },

    /** Resumes a restored VM started paused. */
    async resumeRestoredVm(req: { domain: string }): Promise<VmPowerState> {
      if ((await hypervisor.state(req.domain)) === 'paused') await hypervisor.resume(req.domain);
      return hypervisor.state(req.domain);
    },

    /** Compensation: power off and undefine the VM (only the one with the recorded UUID), then remove its files. */
    async removeRestoredVm(req: RemoveRestoredVmRequest): Promise<void> {
      const { files, uuids } = recordedVm(records, req.domain);
      const foreign = req.files.filter((f) => !files.has(f));
      if (foreign.length)
        throw bad(
          `files not made by a restore of ${req.domain} on ${deps.hostId} are not removed: ${foreign.join(', ')}`,
        );
      // The UUID defined, else the one planned: a define whose completion was lost still made that VM.
      if (req.uuid) uuids.add(req.uuid.toLowerCase());
      if (uuids.size) {
        try {
          const d = await hypervisor.describe(req.domain);
          if (uuids.has(d.uuid.toLowerCase())) {
            // Console logs and sockets the VM wrote in this host's image directory go with it.
            const consoles = hostFilesOf(await hypervisor.domainXml(req.domain), imagesDir);
            if (d.state !== 'shutoff') await hypervisor.destroy(req.domain);
            await hypervisor.undefine(req.domain);
            for (const f of consoles) rmSync(f, { force: true });
          }
        } catch (err) {
          if (!(err instanceof DomainNotFoundError)) throw err;
        }
      }
      for (const f of req.files) for (const p of [f, `${f}.raw.part`]) rmSync(p, { force: true });
      log('restored VM removed', { domain: req.domain, files: req.files });
    },
  };
}

/** Files of a domain's character devices (serial logs, sockets) inside `dir`, from its XML. */
function hostFilesOf(xml: string, dir: string): string[] {
  const paths = [...xml.matchAll(/<(?:source|log)\b[^>]*?\s(?:path|file)=(['"])(\/[^'"]*)\1/g)].map((m) => m[2]);
  return paths.filter((p) => p.startsWith(`${dir}/`) && !p.slice(dir.length + 1).includes('/'));
}

export type RepoRestoreActivities = ReturnType<typeof createRepoRestoreActivities>;

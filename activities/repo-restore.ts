import { execFile } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, rmSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
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
import { BAD_INPUT } from '../common/validation';
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
  /** The repository key file on this host. @default $GROUPSNAP_REPO_KEY_FILE */
  keyFile?: string;
  /** More directories restored VMs may boot read-only files from (added to the firmware dirs and $GROUPSNAP_BOOT_FILE_DIRS). */
  bootFileDirs?: string[];
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

const bad = (msg: string) => ApplicationFailure.nonRetryable(msg, BAD_INPUT);

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

/** A restored disk's file: `<imagesDir>/<domain>.<target>.<restoreId>.<format>`. */
export function restoredDiskPath(imagesDir: string, domain: string, target: string, restoreId: string, format: string) {
  return join(imagesDir, `${domain}.${target}.${restoreId}.${format}`);
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

  async function withRepo<T>(url: string, fn: (repo: Repository) => Promise<T>): Promise<T> {
    const repo = await openRepo(url);
    try {
      return await fn(repo);
    } catch (err) {
      if (err instanceof PointNotFoundError) throw bad(err.message);
      if (err instanceof DamagedObjectError)
        throw ApplicationFailure.nonRetryable(`the point is damaged in the repository: ${err.message}`, 'DamagedPoint');
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
          if (names.has(domain))
            problems.push(
              req.mode === 'clone'
                ? `VM ${domain} already exists on ${deps.hostId} (choose another suffix)`
                : `VM ${domain} already exists on ${deps.hostId}: a restore as the original refuses to replace it`,
            );
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
          const uuid = def.uuid?.toLowerCase();
          if (req.mode === 'original' && uuid && uuids.has(uuid) && !names.has(domain))
            problems.push(`a VM with the UUID of ${v.domain} (${uuid}) already exists on ${deps.hostId}`);
          vms.push({
            source: v.domain,
            domain,
            sourceHost: v.host,
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
      return withRepo(req.repo, async (repo) => {
        const disk = await repo.readDiskManifest(req.group, req.snapshotId, req.domain, req.target);
        const raw = req.format === 'raw' ? req.file : `${req.file}.raw.part`;
        let bytesWritten = 0;
        try {
          rmSync(raw, { force: true });
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
            const convert = run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, req.file]);
            const beat = setInterval(() => heartbeat({ converting: req.file }), 1000);
            try {
              await convert;
            } finally {
              clearInterval(beat);
            }
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
        const { xml } = restoredDefinition(vm.domainXml, {
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
        if (existing) throw bad(`VM ${req.vm.domain} already exists on ${deps.hostId}`);
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
      if (req.uuid) {
        try {
          const d = await hypervisor.describe(req.domain);
          if (d.uuid.toLowerCase() === req.uuid.toLowerCase()) {
            // Console logs and sockets the VM wrote in this host's image directory go with it.
            const own = hostFilesOf(await hypervisor.domainXml(req.domain), imagesDir);
            if (d.state !== 'shutoff') await hypervisor.destroy(req.domain);
            await hypervisor.undefine(req.domain);
            for (const f of own) rmSync(f, { force: true });
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

/**
 * The plan of a restore from the repository on its target host: reads the point and checks the target (names and
 * UUIDs free, files absent, the stored definitions acceptable, enough space), then records what the restore may write.
 * Every problem of every VM comes back in one BAD_INPUT answer; nothing is written before the record.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { ApplicationFailure } from '@temporalio/common';
import type { DiskManifest, GroupManifest, VmManifest } from '../../backup/manifest';
import { QCOW2_CLUSTER } from '../../backup/qcow2-image';
import type { Repository } from '../../backup/repository';
import { BAD_INPUT } from '../../common/failures';
import { uuid as uuidSchema } from '../../common/host-requests';
import type { PlannedVm, RepoRestorePlan, RepoRestorePlanRequest } from '../../common/repo-restore';
import { mergeSocketPortChoices } from '../../common/socket-ports';
import { parseDomainTree } from '../../hypervisor/domain-tree';
import type { RestoredDomain, SocketEndpoint } from '../../hypervisor/restore-xml';
import { socketLinkPorts } from '../../hypervisor/socket-links';
import { chooseSocketPorts } from '../socket-ports';
import { bad, type RepoRestoreContext } from './context';
import { kvmUsable, pointEndpoints, restoredDefinition } from './definition';
import { dataBytesOf, restoredDiskPath, storedUuid, vmNameProblems } from './names';
import { withRepo } from './repo';

/** The VMs on this host: their names and UUIDs (lower case). */
export interface HostDomains {
  names: Set<string>;
  uuids: Set<string>;
}

/** What the plan learnt of one VM of the point. */
export interface VmPlan {
  /** The VM as planned (none when its names or its stored definition are refused). */
  vm?: PlannedVm;
  /** Its definition for this host, and the stored definition's virtualization type. */
  xml?: string;
  storedType?: string;
  /** Bytes of its disks' data. */
  bytes: number;
  problems: string[];
}

/** One entry of a point's group manifest. */
type PointVm = GroupManifest['vms'][number];

/** Reads the point and checks the target: names free, files absent, enough space. Changes nothing but the record. */
export async function repoRestorePlan(ctx: RepoRestoreContext, req: RepoRestorePlanRequest): Promise<RepoRestorePlan> {
  return withRepo(ctx, req.repo, async (repo) => {
    const group = await repo.readGroupManifest(req.group, req.snapshotId);
    const existing = await hostDomains(ctx);
    const planned = new Set<string>();
    const plans: VmPlan[] = [];
    const endpoints = await pointEndpoints(repo, group);
    const chosen = req.vms ? group.vms.filter((v) => req.vms!.includes(v.domain)) : group.vms;
    for (const v of chosen) plans.push(await planVm(ctx, repo, req, v, existing, planned, endpoints));
    const unknown = (req.vms ?? []).filter((name) => !group.vms.some((v) => v.domain === name));
    const problems = [
      ...unknown.map((name) => `VM ${JSON.stringify(name)} is not in ${req.group} ${req.snapshotId}`),
      ...plans.flatMap((p) => p.problems),
    ];
    const vms = plans.flatMap((p) => (p.vm ? [p.vm] : []));
    const xmls = plans.flatMap((p) => (p.xml ? [p.xml] : []));
    const bytesNeeded = plans.reduce((sum, p) => sum + p.bytes, 0);
    // An instant restore's overlays grow to the data (no raw file in between).
    const { bytesFree, problem } = await spaceCheck(ctx, req.instant ? 'raw' : req.format, bytesNeeded, repo.chunkSize);
    if (problem) problems.push(problem);
    if (problems.length) throw bad(problems.join('; '));
    // What this restore may write, and later remove, on this host.
    ctx.records.plan(
      req.restoreId,
      vms.map((v) => ({
        source: v.source,
        domain: v.domain,
        uuid: v.uuid!,
        disks: v.disks.map((d) => ({ target: d.target, file: d.file, format: d.format })),
      })),
    );
    const storedType = plans.find((p) => p.storedType !== undefined)?.storedType;
    const virtType = storedType === 'kvm' && !kvmUsable() ? 'qemu' : undefined;
    // Clones' socket links get fresh ports free on this host (every VM of the restore lands here), one map for
    // the whole group; a restore as the original keeps its ports (the originals are gone).
    const socketPorts =
      req.mode === 'clone' && xmls.some((x) => socketLinkPorts(x).length > 0)
        ? mergeSocketPortChoices([await chooseSocketPorts(xmls)])
        : undefined;
    return {
      vms,
      imagesDir: ctx.imagesDir,
      bytesNeeded,
      bytesFree,
      snapshotCreatedAt: group.snapshotCreatedAt,
      ...(virtType ? { virtType } : {}),
      ...(socketPorts ? { socketPorts } : {}),
    };
  });
}

/** The names and UUIDs of the VMs defined on this host. */
async function hostDomains(ctx: RepoRestoreContext): Promise<HostDomains> {
  const all = await ctx.hypervisor.listDomains();
  return { names: new Set(all.map((d) => d.name)), uuids: new Set(all.map((d) => d.uuid.toLowerCase())) };
}

/**
 * Plans one VM of the point: its names (read from the repository, checked like any request), its name and UUID free
 * here, its disks' files new, its stored definition acceptable and the files that definition writes new. Adds the
 * files it would write to `planned` (so two VMs of one restore cannot choose the same).
 */
export async function planVm(
  ctx: RepoRestoreContext,
  repo: Repository,
  req: RepoRestorePlanRequest,
  v: PointVm,
  existing: HostDomains,
  planned: Set<string>,
  endpoints: SocketEndpoint[] = [],
): Promise<VmPlan> {
  const vm = await repo.readManifestAt<VmManifest>(v.manifest);
  const domain = req.mode === 'clone' ? `${v.domain}${req.suffix}` : v.domain;
  // Names read from the repository become file names here: checked like any request.
  const nameProblems = vmNameProblems(v, vm, domain);
  if (nameProblems.length) return { bytes: 0, problems: nameProblems };
  const stored = storedUuid(vm.domainXml);
  // The UUID the VM gets here, chosen now so that a retried define, and compensation, know it.
  const uuid = req.mode === 'original' && stored && uuidSchema.safeParse(stored).success ? stored : randomUUID();
  const problems = identityProblems(ctx.hostId, req.mode, v.domain, domain, stored, existing);
  const disks = [];
  let bytes = 0;
  for (const d of vm.disks) {
    const disk = await repo.readManifestAt<DiskManifest>(d.manifest);
    const dataBytes = dataBytesOf(disk);
    const file = restoredDiskPath(ctx.imagesDir, domain, d.target, req.restoreId, req.format);
    if (existsSync(file) || planned.has(file)) problems.push(`file ${file} already exists on ${ctx.hostId}`);
    planned.add(file);
    bytes += dataBytes;
    disks.push({ target: d.target, file, format: req.format, virtualSize: d.virtualSize, dataBytes });
  }
  // The stored definition is built here too: one naming host resources is refused before a disk is written.
  let def: RestoredDomain;
  try {
    def = restoredDefinition(ctx, vm.domainXml, {
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
    return { bytes, problems: [...problems, err.message] };
  }
  // A file the VM would write (a serial log, a socket) must be new: not another VM's disk, not one of this
  // restore's other files (the stored definition chose its name).
  for (const f of def.files) {
    if (existsSync(f) || planned.has(f)) problems.push(`file ${f} of ${domain} already exists on ${ctx.hostId}`);
    planned.add(f);
  }
  return {
    vm: {
      source: v.domain,
      domain,
      sourceHost: v.host,
      uuid,
      disks,
      ...(def.removed.length ? { removed: def.removed } : {}),
    },
    xml: def.xml,
    storedType: parseDomainTree(vm.domainXml).attrs.type,
    bytes,
    problems,
  };
}

/**
 * Why a VM cannot be restored as `domain` on `hostId`: the name is taken, or (as the original) its stored UUID is
 * another VM's. Pure: `existing` is the host's VMs.
 */
export function identityProblems(
  hostId: string,
  mode: RepoRestorePlanRequest['mode'],
  source: string,
  domain: string,
  stored: string | undefined,
  existing: HostDomains,
): string[] {
  const problems: string[] = [];
  if (existing.names.has(domain))
    problems.push(
      mode === 'clone'
        ? `VM ${domain} already exists on ${hostId} (choose another suffix)`
        : `VM ${domain} already exists on ${hostId}: a restore as the original refuses to replace it`,
    );
  if (mode === 'original' && stored && existing.uuids.has(stored) && !existing.names.has(domain))
    problems.push(`a VM with the UUID of ${source} (${stored}) already exists on ${hostId}`);
  return problems;
}

/**
 * The free space of the host's images dir (made if missing), and the problem when the restore's peak needs more:
 * qcow2 is written directly (the data, plus its metadata: under 1%), unless the repository's chunks are not whole
 * qcow2 clusters, when it is rebuilt through a raw file of the same data, twice the data at the peak.
 */
async function spaceCheck(
  ctx: RepoRestoreContext,
  format: RepoRestorePlanRequest['format'],
  bytesNeeded: number,
  chunkSize: number,
): Promise<{ bytesFree: number; problem?: string }> {
  mkdirSync(ctx.imagesDir, { recursive: true });
  const fs = await statfs(ctx.imagesDir);
  const bytesFree = Number(fs.bavail) * Number(fs.bsize);
  const direct = chunkSize % QCOW2_CLUSTER === 0;
  const peak =
    format === 'qcow2' ? (direct ? bytesNeeded + Math.ceil(bytesNeeded / 100) : bytesNeeded * 2) : bytesNeeded;
  if (peak <= bytesFree) return { bytesFree };
  return {
    bytesFree,
    problem: `not enough space in ${ctx.imagesDir} on ${ctx.hostId}: the point needs ${peak} bytes, ${bytesFree} are free`,
  };
}

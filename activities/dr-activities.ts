import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type {
  CloneRecord,
  CloneVmReport,
  ChooseSocketPortsRequest,
  CloneVmRequest,
  DeleteSnapshotRequest,
  DeleteVmReport,
  HostVm,
  InPlaceReport,
  InPlaceRequest,
  InPlaceRestoreRecord,
  SetTagsRequest,
  VmSnapshotRecord,
} from '../common/dr-types';
import { METADATA_NAMESPACE } from '../common/names';
import { cloneDomainXml } from '../hypervisor/clone-xml';
import { chooseSocketPorts } from './socket-ports';
import type { SocketPortChoice } from '../common/socket-ports';
import { DomainNotFoundError } from '../hypervisor/errors';
import type { DomainDescription, Hypervisor } from '../hypervisor/hypervisor';
import { ImageNotFoundError } from '../hypervisor/images';
import { manifestPath, parseVmMetadata, safeFileName, type VmMetadata } from './catalog';
import { DomainLocks, LockBusyError } from './domain-locks';
import { badInput, checkDomain, checkName, checkOwner, failIf } from './input-checks';
import type { VmMetadataStore } from './vm-metadata';
import { imageChain } from '../hypervisor/chain';
import { createPinActivities } from './pin-activities';
import { exportHoldBlockers } from './export-hold';

export interface DrActivityDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** The host's VM leases, shared with the snapshot activities. */
  locks: DomainLocks;
  /** The host's one queue of metadata changes per VM, shared with the snapshot activities. */
  metadata: VmMetadataStore;
  /** Ends a block job a dead worker left on a disk, before a new commit there. */
  settleBlockJob: (domain: string, target: string) => Promise<void>;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** Lease of a deletion, renewed while it runs. @default 600000 */
  deleteLeaseMs?: number;
}

export interface RemoveCloneRequest {
  /** The VM the clone was made from (its catalog holds the clone record). */
  domain: string;
  /** The clone's name. */
  clone: string;
}

export interface UndoInPlaceRequest {
  restoreId: string;
  domain: string;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

const bad = badInput;

export function heartbeat(details?: unknown): void {
  try {
    Context.current().heartbeat(details);
  } catch {
    // outside an activity (unit tests)
  }
}

/** Runs `fn`, heartbeating every second: merges, commits and boots can take a while, and must not be retried while they run. */
export async function beating<T>(fn: () => Promise<T>): Promise<T> {
  heartbeat();
  const timer = setInterval(() => heartbeat(), 1000);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}

/** Lease of a restore step, renewed while it runs (the workflow took it for the whole restore). */
const RESTORE_LEASE_MS = 30 * 60_000;

const isLive = (state: string): boolean => state === 'running' || state === 'paused';

/**
 * Why snapshot `snap` of a VM cannot be deleted: clones and in-place restores built on its image or on the layer
 * above it (merging that layer into the image would change what they read).
 */
export function deletionBlockersOf(meta: VmMetadata, domain: string, snap: VmSnapshotRecord): string[] {
  const files = new Set(snap.disks.flatMap((d) => [d.image, d.overlay]));
  const out: string[] = [];
  if (snap.pinned) out.push(`snapshot ${snap.snapshotId} is pinned on ${domain}: unpin it first`);
  for (const c of meta.clones)
    if (c.disks.some((d) => files.has(d.image)))
      out.push(`clone ${c.name} of ${domain} is built on it (snapshot ${c.snapshotId}): remove the clone first`);
  for (const r of meta.restores)
    if (r.disks.some((d) => files.has(d.image)))
      out.push(
        `the in-place restore ${r.restoreId} of ${domain} (to snapshot ${r.snapshotId}) is built on it: ` +
          `remove that restore record first`,
      );
  return out;
}

/**
 * The host side of snapshot deletion, restore (as clones or in place) and tags. Every activity checks state first
 * and is safe to retry; bad input fails with a non-retryable {@link BAD_INPUT} failure before anything changes.
 */
export function createDrActivities(deps: DrActivityDeps) {
  const { hypervisor, locks, hostId, metadata } = deps;
  const log = deps.log ?? (() => {});
  const leaseMs = deps.deleteLeaseMs ?? 600_000;

  const readMeta = (domain: string): Promise<VmMetadata> => metadata.read(domain);
  const updateMeta = (domain: string, fn: (meta: VmMetadata) => void): Promise<VmMetadata> =>
    metadata.update(domain, fn);

  async function describeOrBad(domain: string): Promise<DomainDescription> {
    try {
      return await hypervisor.describe(domain);
    } catch (err) {
      if (err instanceof DomainNotFoundError) throw bad(`VM ${JSON.stringify(domain)} not found on host ${hostId}`);
      throw err;
    }
  }

  async function domainExists(domain: string): Promise<boolean> {
    try {
      await hypervisor.state(domain);
      return true;
    } catch (err) {
      if (err instanceof DomainNotFoundError) return false;
      throw err;
    }
  }

  async function imageExists(file: string): Promise<boolean> {
    try {
      await hypervisor.imageInfo(file);
      return true;
    } catch (err) {
      if (err instanceof ImageNotFoundError) return false;
      throw err;
    }
  }

  const chainOf = (file: string | undefined): Promise<string[]> => imageChain(hypervisor, file);

  async function backingOf(file: string): Promise<string | undefined> {
    try {
      return (await hypervisor.imageInfo(file)).backing;
    } catch (err) {
      if (err instanceof ImageNotFoundError) return undefined;
      throw err;
    }
  }

  function snapshotsText(meta: VmMetadata): string {
    const ids = meta.snapshots.map((s) => s.snapshotId);
    return ids.length ? `known: ${ids.slice(0, 10).join(', ')}${ids.length > 10 ? ', ...' : ''}` : 'it has none';
  }

  /**
   * The checks shared by both restores: the VM exists, the snapshot is catalogued on it and complete, its disks are
   * still on the VM and its images exist. Returns the VM, its metadata, the snapshot and each image's format.
   */
  async function restorable(domain: string, snapshotId: string) {
    const desc = await describeOrBad(domain);
    const meta = await readMeta(domain);
    const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
    if (!snap) throw bad(`VM ${domain} has no snapshot ${JSON.stringify(snapshotId)} (${snapshotsText(meta)})`);
    if (snap.deleting)
      throw bad(`snapshot ${snapshotId} of ${domain} is being deleted (partly merged): it cannot be restored`);
    if (snap.disks.length === 0) throw bad(`snapshot ${snapshotId} of ${domain} has no disks`);
    const problems: string[] = [];
    const missing: string[] = [];
    const formats = new Map<string, string>();
    for (const d of snap.disks) {
      if (!desc.disks.some((k) => k.target === d.target))
        problems.push(`disk ${d.target} of snapshot ${snapshotId} is no longer on VM ${domain}`);
      try {
        formats.set(d.image, (await hypervisor.imageInfo(d.image)).format);
      } catch (err) {
        if (!(err instanceof ImageNotFoundError)) throw err;
        missing.push(`disk ${d.target}: ${d.image}`);
      }
    }
    if (missing.length > 0)
      problems.unshift(
        `restore of a snapshot whose images are gone (${snapshotId} of ${domain}): ${missing.join(', ')}`,
      );
    failIf(problems);
    return { desc, meta, snap, formats };
  }

  function rewriteManifests(domain: string, meta: VmMetadata, changed: Set<string>): void {
    for (const s of meta.snapshots) {
      if (!changed.has(s.snapshotId) || s.disks.length === 0) continue;
      const file = manifestPath(dirname(s.disks[0].image), domain, s.snapshotId);
      try {
        if (!existsSync(file)) continue;
        const doc = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
        writeFileSync(file, JSON.stringify({ ...doc, disks: s.disks }, null, 2) + '\n');
      } catch (err) {
        log('cannot rewrite snapshot manifest', { file, error: message(err) });
      }
    }
  }

  /**
   * Merges the layer above snapshot `snap`'s image of one disk into that image, points whatever used the layer at the
   * image, removes the layer and records it in the catalog (the disk leaves the snapshot's record). Converges when
   * retried after a crash at any point.
   * @returns the files removed
   */
  async function deleteDisk(domain: string, snap: VmSnapshotRecord, target: string): Promise<string[]> {
    const disk = snap.disks.find((d) => d.target === target)!;
    const { image, overlay } = disk;
    const meta = await readMeta(domain);
    let desc = await hypervisor.describe(domain);
    if (isLive(desc.state)) {
      // A commit a dead worker left running on this disk is finished (or aborted) before a new one starts.
      await deps.settleBlockJob(domain, target);
      desc = await hypervisor.describe(domain);
    }
    const live = isLive(desc.state);
    const active = desc.disks.find((k) => k.target === target)?.source;
    const chain = await chainOf(active);
    const ci = chain.indexOf(overlay);
    const next = meta.snapshots.find(
      (s) => s.snapshotId !== snap.snapshotId && s.disks.some((d) => d.target === target && d.image === overlay),
    );
    const child = next?.disks.find((d) => d.target === target)!.overlay;
    const format = async () => (await hypervisor.imageInfo(image)).format;
    heartbeat({ domain, target });
    if (ci === 0) {
      // The layer is the active one.
      if (chain[1] !== image) throw new Error(`active layer ${overlay} is backed by ${chain[1]}, not ${image}`);
      if (live) await hypervisor.commitActive(domain, target, image);
      else {
        await hypervisor.commitImage(overlay, image);
        await hypervisor.redefineDiskSources(domain, [{ target, from: overlay, to: image }]);
      }
    } else if (ci > 0) {
      // A middle layer of the VM's chain: the layer above it is the next snapshot's overlay (or a restore's).
      if (chain[ci + 1] !== image) throw new Error(`layer ${overlay} is backed by ${chain[ci + 1]}, not ${image}`);
      if (live) await hypervisor.commitLayer(domain, target, overlay, image);
      else {
        await hypervisor.commitImage(overlay, image);
        await hypervisor.rebaseImage(chain[ci - 1], image, await format());
      }
    } else if (chain.includes(image)) {
      // The image is in the VM's chain and the layer is not: merged and pivoted (or rebased) before a crash.
      if (child !== undefined && (await backingOf(child)) === overlay)
        throw new Error(`${child} is still backed by ${overlay}, which is not in the VM's chain: inconsistent chain`);
    } else if (child !== undefined && (await imageExists(child))) {
      // A branch the VM no longer runs on (left by an in-place restore): offline merge, then rebase the child.
      const backing = await backingOf(child);
      if (backing === overlay) {
        await hypervisor.commitImage(overlay, image);
        await hypervisor.rebaseImage(child, image, await format());
      } else if (backing !== image) {
        throw new Error(`${child} is backed by ${backing ?? 'nothing'}, neither ${overlay} nor ${image}`);
      }
    } else if (await imageExists(overlay)) {
      // The top of a discarded branch: only this layer reads the image, so the commit can be repeated safely.
      await hypervisor.commitImage(overlay, image);
    }
    // Merged: nothing may read the layer any more.
    const after = await chainOf((await hypervisor.describe(domain)).disks.find((k) => k.target === target)?.source);
    if (after.includes(overlay)) throw new Error(`${overlay} is still in the chain of ${domain} ${target}`);
    const removed: string[] = [];
    if (await imageExists(overlay)) {
      await hypervisor.removeImage(overlay);
      removed.push(overlay);
    }
    const changed = new Set<string>();
    const updated = await updateMeta(domain, (m) => {
      for (const s of m.snapshots) {
        if (s.snapshotId === snap.snapshotId) {
          s.disks = s.disks.filter((d) => d.target !== target);
          continue;
        }
        for (const d of s.disks)
          if (d.target === target && d.image === overlay) {
            d.image = image;
            changed.add(s.snapshotId);
          }
      }
      for (const r of m.restores)
        for (const d of r.disks) if (d.target === target && d.discarded === overlay) d.discarded = image;
    });
    rewriteManifests(domain, updated, changed);
    log('snapshot layer merged', { domain, snapshotId: snap.snapshotId, target, image, overlay });
    return removed;
  }

  async function deleteLocked(req: DeleteSnapshotRequest): Promise<DeleteVmReport> {
    const { domain, snapshotId } = req;
    const removed: string[] = [];
    // Checked again under the lease, and marked: restores refuse it from now on.
    let blockers: string[] = [];
    const meta = await updateMeta(domain, (m) => {
      const s = m.snapshots.find((x) => x.snapshotId === snapshotId);
      if (s) blockers = deletionBlockersOf(m, domain, s);
      // Local retention must not merge a layer an export still reads (activities/export-hold.ts).
      const files = s?.disks.flatMap((d) => [d.image, d.overlay]) ?? [];
      if (s) blockers.push(...exportHoldBlockers(hostId, domain, files));
      if (s && blockers.length === 0) s.deleting = true;
    });
    const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
    if (!snap) return { domain, outcome: 'absent', removed };
    if (blockers.length > 0) throw bad(`snapshot ${snapshotId} cannot be deleted: ${blockers.join('; ')}`);
    const dirs = [...new Set(snap.disks.map((d) => dirname(d.image)))];
    for (const d of [...snap.disks]) {
      try {
        removed.push(...(await deleteDisk(domain, snap, d.target)));
      } catch (err) {
        log('snapshot deletion failed', { domain, snapshotId, target: d.target, error: message(err) });
        return { domain, outcome: 'failed', removed, error: `disk ${d.target}: ${message(err)}` };
      }
    }
    await updateMeta(domain, (m) => {
      m.snapshots = m.snapshots.filter((s) => s.snapshotId !== snapshotId);
    });
    for (const dir of dirs) {
      const manifest = manifestPath(dir, domain, snapshotId);
      if (existsSync(manifest)) {
        rmSync(manifest, { force: true });
        removed.push(manifest);
      }
    }
    log('snapshot deleted', { domain, snapshotId, removed });
    return { domain, outcome: 'deleted', removed };
  }

  /**
   * Runs a restore step under its run's lease of `domain` (when the workflow gives one): checked first, renewed while
   * it runs; a step whose run lost the lease changes nothing.
   */
  async function underLease<T>(owner: string | undefined, domain: string, fn: () => Promise<T>): Promise<T> {
    if (owner === undefined) return fn();
    try {
      locks.renew(owner, [domain], RESTORE_LEASE_MS);
    } catch (err) {
      throw ApplicationFailure.nonRetryable(message(err), 'LeaseLost');
    }
    const stop = locks.keepAlive(owner, [domain], RESTORE_LEASE_MS, (err) =>
      log('lease lost during a restore step', { domain, owner, error: message(err) }),
    );
    try {
      return await fn();
    } finally {
      stop();
    }
  }

  const activities = {
    // Pins and the release of in-place restore records, through this factory's per-VM metadata queue.
    ...createPinActivities({ hypervisor, hostId, updateMeta, readMeta, log }),

    /** Every VM on this host with its state, tags and groupsnap catalog (snapshots, clones, in-place restores). */
    async listVms(): Promise<HostVm[]> {
      const domains = await hypervisor.listDomains();
      const vms = await Promise.all(
        domains.map(async (d): Promise<HostVm | undefined> => {
          let xml: string | undefined;
          try {
            xml = await hypervisor.getMetadata(d.name);
          } catch (err) {
            if (err instanceof DomainNotFoundError) return undefined; // undefined while listing
            throw err;
          }
          const meta = parseVmMetadata(xml);
          return { domain: d.name, uuid: d.uuid, state: d.state, ...meta };
        }),
      );
      return vms.filter((v): v is HostVm => v !== undefined).sort((a, b) => a.domain.localeCompare(b.domain));
    },

    /** Adds, then removes, tags on a VM. Returns the VM's tags after. */
    async setTags(req: SetTagsRequest): Promise<string[]> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      const add = req.add ?? [];
      const remove = req.remove ?? [];
      if (!Array.isArray(add) || !Array.isArray(remove)) problems.push('add and remove must be lists of tags');
      else {
        for (const t of [...add, ...remove]) checkName('tag', t, problems);
        for (const t of add) if (remove.includes(t)) problems.push(`tag ${t} is both added and removed`);
      }
      failIf(problems);
      try {
        const meta = await updateMeta(req.domain, (m) => {
          for (const t of add) if (!m.tags.includes(t)) m.tags.push(t);
          m.tags = m.tags.filter((t) => !remove.includes(t));
        });
        return meta.tags;
      } catch (err) {
        if (err instanceof DomainNotFoundError)
          throw bad(`VM ${JSON.stringify(req.domain)} not found on host ${hostId}`);
        throw err;
      }
    },

    /**
     * Deletes snapshot `snapshotId` from one VM: on each disk the layer above the snapshot's image is merged into it
     * (online block commit when the VM runs on it, offline `qemu-img commit` otherwise) and removed, and what used
     * that layer (the next snapshot, an in-place restore's discarded branch, the active disk) uses the image instead.
     * Holds the VM's lease meanwhile. `absent` when the snapshot is not (or no longer) catalogued on the VM.
     */
    async deleteSnapshot(req: DeleteSnapshotRequest): Promise<DeleteVmReport> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkName('snapshot id', req.snapshotId, problems);
      checkOwner(req.owner, problems);
      failIf(problems);
      const { domain, snapshotId, owner } = req;
      const desc = await describeOrBad(domain);
      const meta = await readMeta(domain);
      const snap = meta.snapshots.find((s) => s.snapshotId === snapshotId);
      if (!snap) return { domain, outcome: 'absent', removed: [] };
      const blockers = deletionBlockersOf(meta, domain, snap);
      if (blockers.length > 0) throw bad(`snapshot ${snapshotId} cannot be deleted: ${blockers.join('; ')}`);
      if (desc.state === 'other')
        throw bad(`VM ${domain} is in a state where its disks cannot be merged: start or stop it first`);

      const held = locks.holder(domain) === owner;
      try {
        locks.acquire(owner, [domain], leaseMs);
      } catch (err) {
        if (err instanceof LockBusyError) throw ApplicationFailure.retryable(err.message, 'LockBusyError');
        throw err;
      }
      const stop = locks.keepAlive(owner, [domain], leaseMs, (err) =>
        log('cannot renew the lease', { domain, owner, error: message(err) }),
      );
      try {
        return await beating(() => deleteLocked(req));
      } finally {
        stop();
        if (!held) locks.release(owner, [domain]);
      }
    },

    /**
     * Fresh ports for the socket links of this host's VMs about to be cloned: ports they bind get ports free on this
     * host, ports they only send or connect to get unused ones (see activities/socket-ports.ts).
     */
    async chooseSocketPorts(req: ChooseSocketPortsRequest): Promise<SocketPortChoice> {
      const problems: string[] = [];
      for (const d of req.domains) checkDomain(d, problems);
      failIf(problems);
      const xmls: string[] = [];
      for (const d of req.domains) {
        try {
          xmls.push(await hypervisor.domainXml(d));
        } catch (err) {
          if (err instanceof DomainNotFoundError) throw bad(`VM ${d} does not exist on host ${hostId}`);
          throw err;
        }
      }
      return chooseSocketPorts(xmls, req.avoid ?? []);
    },

    /**
     * Restores a VM's snapshot as a new VM `cloneName` beside it: its definition without uuid, MACs and groupsnap
     * metadata, each snapshotted disk on a new qcow2 overlay `<image dir>/<cloneName>.<target>.qcow2` over the
     * snapshot's image; started unless `start: false`. Recorded on the source VM (deletion of the snapshot is then
     * refused until the clone is removed with `removeClone`).
     */
    async cloneVm(req: CloneVmRequest): Promise<CloneVmReport> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkName('clone name', req.cloneName, problems);
      checkName('snapshot id', req.snapshotId, problems);
      if (req.cloneName === req.domain) problems.push('the clone needs a name other than its source VM');
      if (req.leaseOwner !== undefined) checkOwner(req.leaseOwner, problems);
      failIf(problems);
      return underLease(req.leaseOwner, req.domain, async () => {
        const { domain, cloneName, snapshotId } = req;
        const { meta, snap, formats } = await restorable(domain, snapshotId);
        let record = meta.clones.find((c) => c.name === cloneName);
        if (record && record.snapshotId !== snapshotId)
          throw bad(`clone name ${cloneName} is already used by a clone of snapshot ${record.snapshotId} of ${domain}`);
        const disks = snap.disks.map((d) => ({
          target: d.target,
          image: d.image,
          overlay: join(dirname(d.image), `${cloneName}.${d.target}.qcow2`),
        }));
        if (!record) {
          if (await domainExists(cloneName)) throw bad(`a VM named ${cloneName} already exists on host ${hostId}`);
          for (const d of disks)
            if (await imageExists(d.overlay)) throw bad(`the clone's disk file ${d.overlay} already exists`);
        }
        const { xml, droppedDisks } = cloneDomainXml(await hypervisor.domainXml(domain), {
          sourceName: domain,
          cloneName,
          disks: (record ?? { disks }).disks.map((d) => ({ target: d.target, file: d.overlay })),
          metadataNamespace: METADATA_NAMESPACE,
          ...(req.socketPorts ? { socketPorts: req.socketPorts } : {}),
        });
        if (!record) {
          // Recorded first: a retry, and the compensation, find everything this call may have created.
          const rec: CloneRecord = { name: cloneName, snapshotId, createdAt: new Date().toISOString(), disks };
          await updateMeta(domain, (m) => {
            if (!m.clones.some((c) => c.name === cloneName)) m.clones.push(rec);
          });
          record = rec;
        }
        return beating(async () => {
          for (const d of record.disks) {
            if (!(await imageExists(d.overlay)))
              await hypervisor.createOverlay(d.overlay, d.image, formats.get(d.image) ?? 'qcow2');
            else if ((await backingOf(d.overlay)) !== d.image)
              throw new Error(`${d.overlay} exists but is not an overlay of ${d.image}`);
          }
          let uuid: string;
          if (await domainExists(cloneName)) uuid = (await hypervisor.describe(cloneName)).uuid;
          else ({ uuid } = await hypervisor.defineDomain(xml));
          if (droppedDisks.length > 0)
            log('clone defined without disks not in the snapshot', { cloneName, droppedDisks });
          if (req.start !== false && (await hypervisor.state(cloneName)) === 'shutoff')
            await hypervisor.start(cloneName);
          const state = await hypervisor.state(cloneName);
          log('clone created', { domain, cloneName, snapshotId, state });
          return { domain, clone: cloneName, uuid, state, disks: record.disks };
        });
      });
    },

    /**
     * Removes a clone made by `cloneVm` (compensation, or to allow deleting its snapshot): power off, undefine,
     * remove its overlays and its record. A no-op when the source VM has no record of that clone; a VM of that name
     * not running on the recorded overlays is left alone.
     */
    async removeClone(req: RemoveCloneRequest): Promise<void> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkDomain(req.clone, problems);
      failIf(problems);
      let meta: VmMetadata;
      try {
        meta = await readMeta(req.domain);
      } catch (err) {
        if (err instanceof DomainNotFoundError) return;
        throw err;
      }
      const record = meta.clones.find((c) => c.name === req.clone);
      if (!record) return;
      await beating(async () => {
        if (await domainExists(req.clone)) {
          const desc = await hypervisor.describe(req.clone);
          const ours = desc.disks.some((k) => record.disks.some((d) => d.overlay === k.source));
          if (!ours) {
            log('a VM named like the clone does not use its disks; left alone', { clone: req.clone });
          } else {
            if (isLive(desc.state)) await hypervisor.destroy(req.clone);
            await hypervisor.undefine(req.clone);
          }
        }
        for (const d of record.disks) await hypervisor.removeImage(d.overlay);
        await updateMeta(req.domain, (m) => {
          m.clones = m.clones.filter((c) => c.name !== req.clone);
        });
      });
      log('clone removed', { domain: req.domain, clone: req.clone });
    },

    /**
     * Restores a VM to one of its snapshots in place: powers it off (hard) if it runs, puts each snapshotted disk on
     * a new overlay `<image dir>/<domain>.<target>.restore-<restoreId>.qcow2` over the snapshot's image (the old
     * active layer is kept as `discarded`), and starts it again if it was running (or paused: started paused).
     */
    async restoreInPlace(req: InPlaceRequest): Promise<InPlaceReport> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkName('restore id', req.restoreId, problems);
      checkName('snapshot id', req.snapshotId, problems);
      if (req.leaseOwner !== undefined) checkOwner(req.leaseOwner, problems);
      failIf(problems);
      return underLease(req.leaseOwner, req.domain, async () => {
        const { domain, restoreId, snapshotId } = req;
        const { desc, meta, snap, formats } = await restorable(domain, snapshotId);
        let record = meta.restores.find((r) => r.restoreId === restoreId);
        if (record && record.snapshotId !== snapshotId)
          throw bad(`restore ${restoreId} of ${domain} already restored snapshot ${record.snapshotId}`);
        if (!record) {
          if (desc.state === 'other') throw bad(`VM ${domain} is in a state that cannot be restored: start or stop it`);
          if (!desc.persistent) throw bad(`VM ${domain} is transient: it would vanish when stopped for the restore`);
          const disks = snap.disks.map((d) => ({
            target: d.target,
            image: d.image,
            overlay: join(dirname(d.image), `${safeFileName(domain)}.${d.target}.restore-${restoreId}.qcow2`),
            discarded: desc.disks.find((k) => k.target === d.target)!.source!,
          }));
          const restoreProblems: string[] = [];
          for (const d of disks) {
            if (!d.discarded) restoreProblems.push(`disk ${d.target} of ${domain} has no file source`);
            if (await imageExists(d.overlay))
              restoreProblems.push(`the restore's disk file ${d.overlay} already exists`);
          }
          failIf(restoreProblems);
          const rec: InPlaceRestoreRecord = {
            restoreId,
            snapshotId,
            createdAt: new Date().toISOString(),
            stateBefore: desc.state,
            disks,
          };
          await updateMeta(domain, (m) => {
            if (!m.restores.some((r) => r.restoreId === restoreId)) m.restores.push(rec);
          });
          record = rec;
        }
        const rec = record;
        const stateBefore = rec.stateBefore ?? 'shutoff';
        return beating(async () => {
          let now = await hypervisor.describe(domain);
          const source = (t: string) => now.disks.find((k) => k.target === t)?.source;
          const pending = rec.disks.filter((d) => source(d.target) !== d.overlay);
          for (const d of pending)
            if (source(d.target) !== d.discarded)
              throw new Error(
                `disk ${d.target} of ${domain} is on ${source(d.target)}, neither ${d.discarded} nor ${d.overlay}`,
              );
          if (pending.length > 0) {
            if (isLive(now.state)) await hypervisor.destroy(domain);
            for (const d of pending) {
              if (!(await imageExists(d.overlay)))
                await hypervisor.createOverlay(d.overlay, d.image, formats.get(d.image) ?? 'qcow2');
              else if ((await backingOf(d.overlay)) !== d.image)
                throw new Error(`${d.overlay} exists but is not an overlay of ${d.image}`);
            }
            await hypervisor.redefineDiskSources(
              domain,
              pending.map((d) => ({ target: d.target, from: d.discarded, to: d.overlay })),
            );
            now = await hypervisor.describe(domain);
          }
          if (isLive(stateBefore) && now.state === 'shutoff')
            await hypervisor.start(domain, { paused: stateBefore === 'paused' });
          const state = await hypervisor.state(domain);
          log('restored in place', { domain, restoreId, snapshotId, stateBefore, state });
          return { domain, stateBefore, state, disks: rec.disks };
        });
      });
    },

    /**
     * Undoes `restoreInPlace` (compensation): disks back on their discarded layers, the VM back in its power state
     * from before, the restore's overlays and record removed. A no-op when the VM has no record of that restore.
     */
    async undoInPlace(req: UndoInPlaceRequest): Promise<void> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      checkName('restore id', req.restoreId, problems);
      failIf(problems);
      const { domain, restoreId } = req;
      let meta: VmMetadata;
      try {
        meta = await readMeta(domain);
      } catch (err) {
        if (err instanceof DomainNotFoundError) return;
        throw err;
      }
      const rec = meta.restores.find((r) => r.restoreId === restoreId);
      if (!rec) return;
      const overlays = new Set(rec.disks.map((d) => d.overlay));
      const built = meta.snapshots.filter((s) => s.disks.some((d) => overlays.has(d.image)));
      if (built.length > 0)
        throw bad(
          `restore ${restoreId} of ${domain} cannot be undone: snapshot(s) ` +
            `${built.map((s) => s.snapshotId).join(', ')} were taken on it since`,
        );
      await beating(async () => {
        let now = await hypervisor.describe(domain);
        const source = (t: string) => now.disks.find((k) => k.target === t)?.source;
        const pending = rec.disks.filter((d) => source(d.target) === d.overlay);
        for (const d of rec.disks)
          if (source(d.target) !== d.overlay && source(d.target) !== d.discarded)
            throw new Error(
              `disk ${d.target} of ${domain} is on ${source(d.target)}, neither ${d.overlay} nor ${d.discarded}`,
            );
        if (pending.length > 0) {
          if (isLive(now.state)) await hypervisor.destroy(domain);
          await hypervisor.redefineDiskSources(
            domain,
            pending.map((d) => ({ target: d.target, from: d.overlay, to: d.discarded })),
          );
          now = await hypervisor.describe(domain);
        }
        const before = rec.stateBefore ?? 'shutoff';
        if (isLive(before) && now.state === 'shutoff') await hypervisor.start(domain, { paused: before === 'paused' });
        for (const d of rec.disks) await hypervisor.removeImage(d.overlay);
        await updateMeta(domain, (m) => {
          m.restores = m.restores.filter((r) => r.restoreId !== restoreId);
        });
      });
      log('in-place restore undone', { domain, restoreId });
    },
  };

  return activities;
}

export type DrActivities = ReturnType<typeof createDrActivities>;

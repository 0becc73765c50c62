import { dirname, join } from 'node:path';
import type {
  ChooseSocketPortsRequest,
  CloneRecord,
  CloneVmReport,
  CloneVmRequest,
  RemoveCloneRequest,
} from '../common/dr-types';
import type { SocketPortChoice } from '../common/socket-ports';
import { METADATA_NAMESPACE } from '../common/names';
import { cloneDomainXml } from '../hypervisor/clone-xml';
import { DomainNotFoundError } from '../hypervisor/errors';
import { isLive, type DrContext } from './dr-context';
import { beating } from './heartbeat';
import { badInput, checkDomain, checkName, checkOwner, failIf } from './input-checks';
import { restoreSteps } from './restore-steps';
import { chooseSocketPorts } from './socket-ports';

/** Restore as clones: a new VM beside the source on overlays over the snapshot's images, and its removal. */
export function createCloneActivities(ctx: DrContext) {
  const { hypervisor, hostId, log, updateMeta } = ctx;
  const { restorable, underLease, ensureOverlay } = restoreSteps(ctx);

  return {
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
          if (err instanceof DomainNotFoundError) throw badInput(`VM ${d} does not exist on host ${hostId}`);
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
          throw badInput(
            `clone name ${cloneName} is already used by a clone of snapshot ${record.snapshotId} of ${domain}`,
          );
        const disks = snap.disks.map((d) => ({
          target: d.target,
          image: d.image,
          overlay: join(dirname(d.image), `${cloneName}.${d.target}.qcow2`),
        }));
        if (!record) {
          if (await ctx.domainExists(cloneName))
            throw badInput(`a VM named ${cloneName} already exists on host ${hostId}`);
          for (const d of disks)
            if (await ctx.imageExists(d.overlay)) throw badInput(`the clone's disk file ${d.overlay} already exists`);
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
          for (const d of record.disks) await ensureOverlay(d, formats);
          let uuid: string;
          if (await ctx.domainExists(cloneName)) uuid = (await hypervisor.describe(cloneName)).uuid;
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
      const record = (await ctx.readMetaIfAny(req.domain))?.clones.find((c) => c.name === req.clone);
      if (!record) return;
      await beating(async () => {
        if (await ctx.domainExists(req.clone)) {
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
  };
}

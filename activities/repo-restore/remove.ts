/**
 * Compensation of a restore from the repository on this host: removes only what a restore of this host made (the VM
 * with a recorded UUID, the recorded files, and the console files that VM wrote in the images dir).
 */
import { rmSync } from 'node:fs';
import type { RemoveRestoredVmRequest } from '../../common/repo-restore';
import { DomainNotFoundError } from '../../hypervisor/errors';
import { bad, type RepoRestoreContext } from './context';
import { recordedVm } from './records';

/**
 * Compensation: power off and undefine the VM (only the one with the recorded UUID), then remove its files.
 * @throws BAD_INPUT for a file no restore of that VM made on this host (nothing removed)
 */
export async function removeRestoredVm(ctx: RepoRestoreContext, req: RemoveRestoredVmRequest): Promise<void> {
  const { hypervisor } = ctx;
  const { files, uuids } = recordedVm(ctx.records, req.domain);
  const foreign = req.files.filter((f) => !files.has(f));
  if (foreign.length)
    throw bad(`files not made by a restore of ${req.domain} on ${ctx.hostId} are not removed: ${foreign.join(', ')}`);
  // The UUID defined, else the one planned: a define whose completion was lost still made that VM.
  if (req.uuid) uuids.add(req.uuid.toLowerCase());
  if (uuids.size) {
    try {
      const d = await hypervisor.describe(req.domain);
      if (uuids.has(d.uuid.toLowerCase())) {
        // Console logs and sockets the VM wrote in this host's image directory go with it.
        const consoles = hostFilesOf(await hypervisor.domainXml(req.domain), ctx.imagesDir);
        if (d.state !== 'shutoff') await hypervisor.destroy(req.domain);
        await hypervisor.undefine(req.domain);
        for (const f of consoles) rmSync(f, { force: true });
      }
    } catch (err) {
      if (!(err instanceof DomainNotFoundError)) throw err;
    }
  }
  for (const f of req.files) for (const p of [f, `${f}.raw.part`]) rmSync(p, { force: true });
  ctx.log('restored VM removed', { domain: req.domain, files: req.files });
}

/** Files of a domain's character devices (serial logs, sockets) inside `dir`, from its XML. */
export function hostFilesOf(xml: string, dir: string): string[] {
  const paths = [...xml.matchAll(/<(?:source|log)\b[^>]*?\s(?:path|file)=(['"])(\/[^'"]*)\1/g)].map((m) => m[2]);
  return paths.filter((p) => p.startsWith(`${dir}/`) && !p.slice(dir.length + 1).includes('/'));
}

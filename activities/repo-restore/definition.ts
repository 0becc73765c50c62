/**
 * A restored VM's definition for this host, built from its stored XML through the restore allow-list
 * (hypervisor/restore-xml.ts, docs/restore-policy.md): the same build in the plan (to refuse early) and at define time.
 */
import { accessSync, constants } from 'node:fs';
import { METADATA_NAMESPACE } from '../../common/names';
import type { GroupManifest, VmManifest } from '../../backup/manifest';
import type { Repository } from '../../backup/repository';
import {
  buildRestoredDomain,
  DomainXmlError,
  HostResourceError,
  restoreEndpoints,
  type RestoreXmlOptions,
  type SocketEndpoint,
} from '../../hypervisor/restore-xml';
import { bad, type RepoRestoreContext } from './context';

/** The options of a restored definition that vary per VM (the host's image and boot-file dirs come from the context). */
export type DefinitionOptions = Omit<RestoreXmlOptions, 'imagesDir' | 'metadataNamespace' | 'bootFileDirs'>;

/**
 * A VM's definition for this host, from its stored XML through the restore allow-list.
 * @throws BAD_INPUT naming every offending element when it names host resources
 */
export function restoredDefinition(ctx: RepoRestoreContext, domainXml: string, o: DefinitionOptions) {
  try {
    return buildRestoredDomain(domainXml, {
      ...o,
      imagesDir: ctx.imagesDir,
      metadataNamespace: METADATA_NAMESPACE,
      bootFileDirs: ctx.bootFileDirs,
    });
  } catch (err) {
    if (err instanceof HostResourceError || err instanceof DomainXmlError)
      throw bad(`VM ${o.sourceName}: ${err.message}`);
    throw err;
  }
}

/**
 * The TCP/UDP endpoints every VM of the point listens on or connects to, from their stored definitions: a restored
 * VM may connect only to what another VM of the same restore listens on (docs/restore-policy.md).
 */
export async function pointEndpoints(repo: Repository, group: GroupManifest): Promise<SocketEndpoint[]> {
  const vms = group.vms.map(async (v) => ({
    name: v.domain,
    xml: (await repo.readManifestAt<VmManifest>(v.manifest)).domainXml,
  }));
  return restoreEndpoints(await Promise.all(vms));
}

/** Whether QEMU started by this host's libvirt can use KVM (its user can open /dev/kvm). */
export function kvmUsable(): boolean {
  const forced = process.env.GROUPSNAP_VIRT_TYPE;
  if (forced === 'qemu') return false;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

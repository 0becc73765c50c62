import { basename, join } from 'node:path';
import { cloneDomainXml } from './clone-xml';
import { escapeXml } from './domain-xml';

export interface RestoreXmlOptions {
  /** The VM's name in the stored XML. */
  sourceName: string;
  /** Name on the target: the source name keeps identity (failover), another name makes a clone. */
  name: string;
  /** `keep`: same UUID and MAC addresses (failover); `new`: libvirt generates new ones (clone). */
  identity: 'keep' | 'new';
  /** Each restored disk's new file and format, by target. */
  disks: { target: string; file: string; format: 'raw' | 'qcow2' }[];
  /** Target host's image directory: every other file the VM writes (serial logs, sockets, NVRAM) goes there. */
  imagesDir: string;
  /** Networks and bridges renamed on the target (`<source network|bridge='old'>` -> new). */
  networkMap?: Record<string, string>;
  /** Remove every network interface (an isolated drill). */
  noNetwork?: boolean;
  /** Domain type on the target, e.g. `qemu` (TCG) where KVM is not available; default: as stored. */
  virtType?: 'kvm' | 'qemu';
  /** Socket-link ports mapped to fresh ones (clones only: a failover keeps its ports, the originals are gone). */
  socketPorts?: Record<string, number>;
  /** groupsnap's metadata namespace (the source's catalog and tags are not carried over). */
  metadataNamespace: string;
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * The definition of a VM restored on another host from its stored inactive XML: disks on the restored files (no
 * backing chain), every other host path moved into the target's image directory, groupsnap's metadata (the source
 * host's catalog) dropped, networks renamed or removed. A clone also gets a new name and no UUID or MAC addresses
 * (libvirt generates them); a failover (`identity: 'keep'`) keeps name, UUID and MACs.
 * @throws Error when a disk to restore is not in the XML
 */
export function restoredDomainXml(xml: string, o: RestoreXmlOptions): string {
  let out = cloneDomainXml(xml, {
    sourceName: o.sourceName,
    cloneName: o.name,
    disks: o.disks.map((d) => ({ target: d.target, file: d.file })),
    metadataNamespace: o.metadataNamespace,
    ...(o.identity === 'new' && o.socketPorts ? { socketPorts: o.socketPorts } : {}),
  }).xml;
  if (o.identity === 'keep') {
    const uuid = /<uuid>([^<]*)<\/uuid>/.exec(xml)?.[1];
    if (uuid) out = out.replace(/(<\/name>)/, `$1<uuid>${uuid}</uuid>`);
    // MACs back on their interfaces, in document order (cloneDomainXml removed them in the same order).
    const macs = [...xml.matchAll(/<interface\b[\s\S]*?<\/interface>/g)].map(
      (m) => /<mac\b[^>]*?\baddress=(['"])([^'"]*)\1/.exec(m[0])?.[2],
    );
    let i = 0;
    out = out.replace(/<interface\b[^>]*>/g, (open) => {
      const mac = macs[i++];
      return mac ? `${open}<mac address='${escapeXml(mac)}'/>` : open;
    });
  }
  // Restored disks: the format written, not the clone's qcow2 overlay.
  for (const d of o.disks) {
    out = out.replace(/<disk\b[\s\S]*?<\/disk>/g, (disk) =>
      new RegExp(`<target\\b[^>]*?\\bdev=(['"])${escapeRegExp(d.target)}\\1`).test(disk)
        ? disk.replace(/(<driver\b[^>]*?\stype=)(['"])[^'"]*\2/, `$1'${d.format}'`)
        : disk,
    );
  }
  // Paths of the source host (serial logs and sockets, NVRAM) into the target's image directory.
  const relocate = (p: string) => join(o.imagesDir, basename(p));
  out = out.replace(
    /(<(?:source|log)\b[^>]*?\s(?:path|file)=)(['"])(\/[^'"]*)\2/g,
    (m, head: string, q: string, p: string) =>
      o.disks.some((d) => d.file === p) ? m : `${head}${q}${escapeXml(relocate(p))}${q}`,
  );
  out = out.replace(
    /(<nvram\b[^>]*>)([^<]+)(<\/nvram>)/,
    (_m, a: string, p: string, b: string) => `${a}${escapeXml(relocate(p.trim()))}${b}`,
  );
  // CD-ROMs and read-only disks kept by the clone XML point at files of the source host: left out.
  out = out.replace(/\s*<disk\b[^>]*>[\s\S]*?<\/disk>/g, (disk) => {
    const file = /<source\b[^>]*?\bfile=(['"])([^'"]*)\1/.exec(disk)?.[2];
    return file === undefined || o.disks.some((d) => d.file === file) ? disk : '';
  });
  if (o.noNetwork) out = out.replace(/\s*<interface\b[\s\S]*?<\/interface>/g, '');
  else if (o.networkMap) {
    for (const [from, to] of Object.entries(o.networkMap)) {
      out = out.replace(
        new RegExp(`(<source\\b[^>]*?\\s(?:network|bridge)=)(['"])${escapeRegExp(escapeXml(from))}\\2`, 'g'),
        `$1$2${escapeXml(to)}$2`,
      );
    }
  }
  if (o.virtType) out = out.replace(/(<domain\b[^>]*?\stype=)(['"])[^'"]*\2/, `$1'${o.virtType}'`);
  return out;
}

/** Networks and bridges the VM's interfaces use (for checking a network map against the target). */
export function interfaceSources(xml: string): { kind: 'network' | 'bridge'; name: string }[] {
  return [...xml.matchAll(/<interface\b[\s\S]*?<\/interface>/g)].flatMap((m) => {
    const s = /<source\b[^>]*?\s(network|bridge)=(['"])([^'"]*)\2/.exec(m[0]);
    return s ? [{ kind: s[1] as 'network' | 'bridge', name: s[3] }] : [];
  });
}

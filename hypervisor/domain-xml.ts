import { XMLParser } from 'fast-xml-parser';
import { child, elements, parseDomainTree, serializeDomainTree, type XmlElement } from './domain-tree';
import type { DiskSpec } from './hypervisor';
import { escapeXml } from '../common/xml';

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  isArray: (name) => ['disk', 'channel', 'backingStore'].includes(name),
  // Each layer of a disk's chain is one more nested <backingStore>: the parser's default cap of 100 nested tags
  // made a VM with a 100-layer chain impossible to snapshot (or undo). Chains are bounded by QEMU, not by us.
  maxNestedTags: 100_000,
});

interface XmlNode {
  [key: string]: unknown;
}

/** Reads the disks and whether a guest agent channel is configured from a libvirt domain XML. */
export function parseDomainXml(xml: string): { disks: DiskSpec[]; hasGuestAgent: boolean } {
  const doc = parser.parse(xml) as { domain?: { devices?: { disk?: XmlNode[]; channel?: XmlNode[] } } };
  const devices = doc.domain?.devices ?? {};
  const disks = (devices.disk ?? []).map((d): DiskSpec => {
    const source = d.source as XmlNode | undefined;
    const driver = d.driver as XmlNode | undefined;
    const target = d.target as XmlNode | undefined;
    return {
      target: String(target?.dev ?? ''),
      device: String(d.device ?? 'disk'),
      type: String(d.type ?? 'file'),
      format: driver?.type === undefined ? undefined : String(driver.type),
      source: source?.file === undefined ? undefined : String(source.file),
      readonly: d.readonly !== undefined,
    };
  });
  const hasGuestAgent = (devices.channel ?? []).some(
    (c) => (c.target as XmlNode | undefined)?.name === 'org.qemu.guest_agent.0',
  );
  return { disks, hasGuestAgent };
}

export { escapeXml };

/** `<domainsnapshot>` XML for an external, disk-only snapshot of exactly the listed disks. */
export function diskOnlySnapshotXml(
  name: string,
  overlays: { target: string; file: string }[],
  skip: string[],
): string {
  const disks = [
    ...overlays.map(
      (o) =>
        `<disk name='${escapeXml(o.target)}' snapshot='external' type='file'>` +
        `<driver type='qcow2'/><source file='${escapeXml(o.file)}'/></disk>`,
    ),
    ...skip.map((t) => `<disk name='${escapeXml(t)}' snapshot='no'/>`),
  ];
  return `<domainsnapshot><name>${escapeXml(name)}</name><disks>${disks.join('')}</disks></domainsnapshot>`;
}

/**
 * The `<disk>` element of `target` among a parsed domain's devices.
 */
export function diskElement(dom: XmlElement, target: string): XmlElement | undefined {
  const devices = child(dom, 'devices');
  return (devices ? elements(devices) : []).find((d) => d.name === 'disk' && child(d, 'target')?.attrs.dev === target);
}

/** Whether `file` is named anywhere in disk `target` of a domain XML (its source or any layer of its chain). */
export function diskNamesFile(xml: string, target: string, file: string): boolean {
  const names = (e: XmlElement): boolean => Object.values(e.attrs).includes(file) || elements(e).some((c) => names(c));
  const disk = diskElement(parseDomainTree(xml), target);
  return disk !== undefined && names(disk);
}

/**
 * Points disk `target` of a domain XML from file `from` at file `to`, dropping the disk's `<backingStore>` (libvirt
 * re-probes it). Used to undo an external snapshot of a shut-off VM. The XML is the host's own libvirt's; it is
 * parsed and serialized canonically (domain-tree.ts), everything else kept.
 * @throws Error if the disk is not found on `from`.
 */
export function retargetDiskSource(xml: string, target: string, from: string, to: string): string {
  const dom = parseDomainTree(xml);
  const disk = diskElement(dom, target);
  if (!disk) throw new Error(`disk ${target} not found`);
  const source = child(disk, 'source');
  if (source?.attrs.file !== from) throw new Error(`disk ${target} is not on ${from}`);
  source.attrs.file = to;
  disk.children = disk.children.filter((c) => typeof c === 'string' || c.name !== 'backingStore');
  return serializeDomainTree(dom);
}

/**
 * The serial consoles of a domain XML (`<serial>`, `<console>` of type `file` or `unix`): the files they write or the
 * unix sockets they use, decoded.
 * @throws DomainXmlError when the XML is not a well-formed domain
 */
export function serialOutputs(xml: string): { file?: string; socket?: string }[] {
  const devices = child(parseDomainTree(xml), 'devices');
  return (devices ? elements(devices) : []).flatMap((d): { file?: string; socket?: string }[] => {
    const type = d.attrs.type;
    if ((d.name !== 'serial' && d.name !== 'console') || (type !== 'file' && type !== 'unix')) return [];
    const path = child(d, 'source')?.attrs.path;
    if (!path) return [];
    return type === 'file' ? [{ file: path }] : [{ socket: path }];
  });
}

/** The first NBD export (unix socket) in disk `target`'s backing chain of a domain XML, or undefined. */
export function diskNbdBacking(xml: string, target: string): { socket: string; exportName: string } | undefined {
  const disk = diskElement(parseDomainTree(xml), target);
  for (let b = disk && child(disk, 'backingStore'); b; b = child(b, 'backingStore')) {
    const source = child(b, 'source');
    const host = source && child(source, 'host');
    if (b.attrs.type === 'network' && source?.attrs.protocol === 'nbd' && host?.attrs.socket !== undefined)
      return { socket: host.attrs.socket, exportName: source.attrs.name ?? '' };
  }
  return undefined;
}

/**
 * A domain XML without any NBD backing on its disks (`<backingStore type='network'>` of protocol `nbd` removed, so
 * libvirt probes the chain from the image header) and without the stop error policies an instant restore set
 * during hydration: the persistent definition once every disk is hydrated.
 */
export function withoutNbdBacking(xml: string): string {
  const dom = parseDomainTree(xml);
  const devices = child(dom, 'devices');
  for (const disk of (devices ? elements(devices) : []).filter((d) => d.name === 'disk')) {
    disk.children = disk.children.filter(
      (c) => typeof c === 'string' || c.name !== 'backingStore' || child(c, 'source')?.attrs.protocol !== 'nbd',
    );
    const driver = child(disk, 'driver');
    if (driver?.attrs.error_policy === 'stop') delete driver.attrs.error_policy;
    if (driver?.attrs.rerror_policy === 'stop') delete driver.attrs.rerror_policy;
  }
  return serializeDomainTree(dom);
}

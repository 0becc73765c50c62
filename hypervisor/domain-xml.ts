import { XMLParser } from 'fast-xml-parser';
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
 * Points disk `target` of a domain XML from file `from` at file `to`, dropping the disk's `<backingStore>` (libvirt
 * re-probes it). Used to undo an external snapshot of a shut-off VM.
 * @throws Error if the disk is not found on `from`.
 */
export function retargetDiskSource(xml: string, target: string, from: string, to: string): string {
  const disks = [...xml.matchAll(/<disk\b[\s\S]*?<\/disk>/g)];
  const disk = disks.find((m) => new RegExp(`<target\\s+dev=['"]${escapeRegExp(target)}['"]`).test(m[0]));
  if (!disk) throw new Error(`disk ${target} not found`);
  const source = new RegExp(`(<source\\s+file=)(['"])${escapeRegExp(escapeXml(from))}\\2`);
  if (!source.test(disk[0])) throw new Error(`disk ${target} is not on ${from}`);
  const replaced = disk[0].replace(source, (_m, head: string, q: string) => `${head}${q}${escapeXml(to)}${q}`);
  return xml.slice(0, disk.index) + stripBackingStore(replaced) + xml.slice(disk.index! + disk[0].length);
}

/**
 * Removes every `<backingStore>` element (libvirt nests one per layer of the chain, and ends it with an empty one)
 * with the whitespace before it.
 */
export function stripBackingStore(xml: string): string {
  let out = '';
  let from = 0;
  let depth = 0;
  for (const m of xml.matchAll(/<backingStore\b[^>]*?(\/?)>|<\/backingStore>/g)) {
    const end = m.index + m[0].length;
    if (m[0].startsWith('</')) {
      depth--;
      if (depth === 0) from = end;
      continue;
    }
    if (depth === 0) out += xml.slice(from, m.index).replace(/\s+$/, '');
    if (m[1] === '/') {
      if (depth === 0) from = end;
    } else depth++;
  }
  return out + xml.slice(from);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

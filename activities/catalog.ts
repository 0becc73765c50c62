import { XMLParser } from 'fast-xml-parser';
import { escapeXml } from '../hypervisor/domain-xml';
import type { DiskSnapshot } from '../common/types';

/** One group snapshot as recorded on each member VM. */
export interface CatalogEntry {
  snapshotId: string;
  group: string;
  label?: string;
  createdAt: string;
  disks: DiskSnapshot[];
}

/** Everything groupsnap keeps in a VM's libvirt metadata (under its own XML namespace). */
export interface VmMetadata {
  tags: string[];
  snapshots: CatalogEntry[];
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  removeNSPrefix: true,
  isArray: (name) => ['snapshot', 'disk', 'tag'].includes(name),
});

type Node = Record<string, unknown>;

export function parseVmMetadata(xml: string | undefined): VmMetadata {
  if (!xml) return { tags: [], snapshots: [] };
  const doc = parser.parse(xml) as { groupsnap?: Node };
  const root = doc.groupsnap ?? {};
  const tags = ((root.tag as Node[] | undefined) ?? []).map((t) => String(t.name));
  const snapshots = ((root.snapshot as Node[] | undefined) ?? []).map((s): CatalogEntry => ({
    snapshotId: String(s.id),
    group: String(s.group),
    ...(s.label !== undefined ? { label: String(s.label) } : {}),
    createdAt: String(s.created),
    disks: ((s.disk as Node[] | undefined) ?? []).map((d) => ({
      target: String(d.target),
      image: String(d.image),
      overlay: String(d.overlay),
    })),
  }));
  return { tags, snapshots };
}

export function renderVmMetadata(meta: VmMetadata): string {
  const attr = (k: string, v: string | undefined): string => (v === undefined ? '' : ` ${k}='${escapeXml(v)}'`);
  const tags = meta.tags.map((t) => `<tag${attr('name', t)}/>`);
  const snaps = meta.snapshots.map(
    (s) =>
      `<snapshot${attr('id', s.snapshotId)}${attr('group', s.group)}${attr('label', s.label)}${attr('created', s.createdAt)}>` +
      s.disks
        .map((d) => `<disk${attr('target', d.target)}${attr('image', d.image)}${attr('overlay', d.overlay)}/>`)
        .join('') +
      `</snapshot>`,
  );
  return `<groupsnap>${tags.join('')}${snaps.join('')}</groupsnap>`;
}

/**
 * groupsnap's catalog on a VM: its libvirt metadata XML (tags, snapshots, clones, in-place restores) and the
 * manifest file names. Pure: the CLI, workflows' shared types and the host activities use it.
 */
import { join } from 'node:path';
import { XMLParser } from 'fast-xml-parser';
import { escapeXml } from './xml';
import type { CloneRecord, InPlaceRestoreRecord, VmSnapshotRecord } from './dr-types';
import { safeFileName } from './names';
import type { VmPowerState } from './types';

/** One group snapshot as recorded on each member VM. */
export type CatalogEntry = VmSnapshotRecord;

/** Everything groupsnap keeps in a VM's libvirt metadata (under its own XML namespace). */
export interface VmMetadata {
  tags: string[];
  snapshots: VmSnapshotRecord[];
  /** Clones made from this VM's snapshots (the clones themselves carry no groupsnap metadata). */
  clones: CloneRecord[];
  /** In-place restores of this VM whose discarded layers are kept. */
  restores: InPlaceRestoreRecord[];
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  removeNSPrefix: true,
  isArray: (name) => ['snapshot', 'disk', 'tag', 'clone', 'restore'].includes(name),
});

type Node = Record<string, unknown>;

const POWER_STATES: readonly VmPowerState[] = ['running', 'paused', 'shutoff', 'other'];

const list = (v: unknown): Node[] => (v as Node[] | undefined) ?? [];

/** Reads groupsnap's metadata element; metadata written before clones and restores existed reads with none. */
export function parseVmMetadata(xml: string | undefined): VmMetadata {
  if (!xml) return { tags: [], snapshots: [], clones: [], restores: [] };
  const doc = parser.parse(xml) as { groupsnap?: Node };
  const root = doc.groupsnap ?? {};
  const tags = list(root.tag).map((t) => String(t.name));
  const snapshots = list(root.snapshot).map((s): VmSnapshotRecord => ({
    snapshotId: String(s.id),
    group: String(s.group),
    ...(s.label !== undefined ? { label: String(s.label) } : {}),
    createdAt: String(s.created),
    ...(s.deleting === 'yes' ? { deleting: true } : {}),
    ...(s.pinned === 'yes' ? { pinned: true } : {}),
    disks: list(s.disk).map((d) => ({ target: String(d.target), image: String(d.image), overlay: String(d.overlay) })),
  }));
  const clones = list(root.clone).map((c): CloneRecord => ({
    name: String(c.name),
    snapshotId: String(c.snapshot),
    createdAt: String(c.created),
    disks: list(c.disk).map((d) => ({ target: String(d.target), image: String(d.image), overlay: String(d.overlay) })),
  }));
  const restores = list(root.restore).map((r): InPlaceRestoreRecord => ({
    restoreId: String(r.id),
    snapshotId: String(r.snapshot),
    createdAt: String(r.created),
    ...(POWER_STATES.includes(r['state-before'] as VmPowerState)
      ? { stateBefore: r['state-before'] as VmPowerState }
      : {}),
    disks: list(r.disk).map((d) => ({
      target: String(d.target),
      image: String(d.image),
      overlay: String(d.overlay),
      discarded: String(d.discarded),
    })),
  }));
  return { tags, snapshots, clones, restores };
}

const attr = (k: string, v: string | undefined): string => (v === undefined ? '' : ` ${k}='${escapeXml(v)}'`);

function disks(ds: { target: string; image: string; overlay: string; discarded?: string }[]): string {
  return ds
    .map(
      (d) =>
        `<disk${attr('target', d.target)}${attr('image', d.image)}${attr('overlay', d.overlay)}` +
        `${attr('discarded', d.discarded)}/>`,
    )
    .join('');
}

export function renderVmMetadata(meta: VmMetadata): string {
  const tags = meta.tags.map((t) => `<tag${attr('name', t)}/>`);
  const snaps = meta.snapshots.map(
    (s) =>
      `<snapshot${attr('id', s.snapshotId)}${attr('group', s.group)}${attr('label', s.label)}${attr('created', s.createdAt)}` +
      `${attr('deleting', s.deleting ? 'yes' : undefined)}${attr('pinned', s.pinned ? 'yes' : undefined)}>` +
      `${disks(s.disks)}</snapshot>`,
  );
  const clones = (meta.clones ?? []).map(
    (c) =>
      `<clone${attr('name', c.name)}${attr('snapshot', c.snapshotId)}${attr('created', c.createdAt)}>` +
      `${disks(c.disks)}</clone>`,
  );
  const restores = (meta.restores ?? []).map(
    (r) =>
      `<restore${attr('id', r.restoreId)}${attr('snapshot', r.snapshotId)}${attr('created', r.createdAt)}` +
      `${attr('state-before', r.stateBefore)}>${disks(r.disks)}</restore>`,
  );
  return `<groupsnap>${tags.join('')}${snaps.join('')}${clones.join('')}${restores.join('')}</groupsnap>`;
}

/** The manifest file of snapshot `snapshotId` of `domain` in `imageDir` (beside the first disk's image). */
export function manifestPath(imageDir: string, domain: string, snapshotId: string): string {
  return join(imageDir, `${safeFileName(domain)}.${snapshotId}.manifest.json`);
}

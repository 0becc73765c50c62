/**
 * The definition of a local clone (same host: the XML is the host's own libvirt's inactive definition), built on the
 * same parse/serialize path as a restored VM's (domain-tree.ts), with its own, more permissive rules: everything is
 * kept except what would make the clone collide with its source (identity, files it writes, fixed ports, disks).
 */
import { basename, dirname, join } from 'node:path';
import { child, elements, parseDomainTree, serializeDomainTree, textOf, type XmlElement } from './domain-tree';
import { remapSocketLinkTree } from './socket-links';

export interface CloneXmlOptions {
  /** The source domain's name (file names containing it get the clone's name instead). */
  sourceName: string;
  cloneName: string;
  /** New qcow2 source of each cloned disk, by target. */
  disks: { target: string; file: string }[];
  /** Namespace URI of groupsnap's metadata element, dropped from the clone. */
  metadataNamespace: string;
  /**
   * Socket-link ports (`<interface type='udp'|'server'|'client'|'mcast'>`) mapped to fresh ones, the same map for
   * every clone of one restore (see socket-links.ts); without it the clone keeps its source's ports.
   */
  socketPorts?: Record<string, number>;
}

export interface CloneXml {
  xml: string;
  /** Writable disks that were not cloned and were left out of the clone (sharing them would corrupt them). */
  droppedDisks: string[];
}

/** A clone-specific file beside `file`: the source name in the file name becomes the clone's, else a prefix. */
export function clonePath(file: string, sourceName: string, cloneName: string): string {
  const name = basename(file);
  return join(dirname(file), name.includes(sourceName) ? name.replace(sourceName, cloneName) : `${cloneName}.${name}`);
}

const CHARDEVS = new Set(['serial', 'console', 'parallel', 'channel']);
const el = (name: string, attrs: Record<string, string>): XmlElement => ({ name, attrs, children: [] });
const without = (e: XmlElement, drop: (c: XmlElement) => boolean) => {
  e.children = e.children.filter((c) => typeof c === 'string' || !drop(c));
};

/** groupsnap's element inside `<metadata>` (any prefix bound to its namespace) goes; other applications' stay. */
function dropOwnMetadata(dom: XmlElement, ns: string): void {
  const metadata = child(dom, 'metadata');
  if (!metadata) return;
  without(metadata, (c) => {
    const prefix = c.name.includes(':') ? c.name.slice(0, c.name.indexOf(':')) : undefined;
    return prefix !== undefined && c.attrs[`xmlns:${prefix}`] === ns;
  });
  if (elements(metadata).length === 0 && textOf(metadata).trim() === '') without(dom, (c) => c === metadata);
}

/** A character device writing to a file or listening on a unix socket: moved to the clone's own path. */
function fixChardev(e: XmlElement, path: (p: string) => string): void {
  const sources = elements(e).filter((c) => c.name === 'source');
  if (e.attrs.type === 'file')
    for (const s of sources) if (s.attrs.path !== undefined) s.attrs.path = path(s.attrs.path);
  if (e.attrs.type === 'unix' && sources.some((s) => s.attrs.mode === 'bind')) {
    if (e.name === 'channel' && child(e, 'target')?.attrs.type === 'virtio') {
      // libvirt names a virtio channel's socket itself when the path is left out.
      for (const s of sources) if (s.attrs.mode === 'bind') delete s.attrs.path;
    } else {
      // A serial port's (console's, ...) listening socket needs a path: the clone's own, beside the source's.
      for (const s of sources) if (s.attrs.path !== undefined) s.attrs.path = path(s.attrs.path);
    }
  }
  for (const log of elements(e).filter((c) => c.name === 'log'))
    if (log.attrs.file !== undefined) log.attrs.file = path(log.attrs.file);
}

/** A cloned disk on its new qcow2 overlay (no backing chain: the overlay records it); `false`: leave it out. */
function fixDisk(e: XmlElement, wanted: Map<string, string>, dropped: string[]): boolean {
  const target = child(e, 'target')?.attrs.dev ?? '';
  const file = wanted.get(target);
  if (file === undefined) {
    const device = e.attrs.device ?? 'disk';
    if (device === 'cdrom' || device === 'floppy' || child(e, 'readonly')) return true;
    dropped.push(target);
    return false;
  }
  wanted.delete(target);
  without(e, (c) => c.name === 'backingStore');
  e.attrs.type = 'file';
  const source = el('source', { file });
  const at = e.children.findIndex((c) => typeof c !== 'string' && c.name === 'source');
  if (at >= 0) e.children[at] = source;
  const driver = child(e, 'driver');
  if (driver) driver.attrs.type = 'qcow2';
  else e.children.unshift(el('driver', { name: 'qemu', type: 'qcow2' }));
  if (at < 0) e.children.splice(1, 0, source);
  return true;
}

/**
 * The definition of a clone of a VM from its inactive XML: new name, no uuid and no MAC addresses (libvirt
 * generates new ones), no groupsnap metadata (the clone must not inherit the VM's tags and catalog, or it would
 * join its groups), file-backed serial/console/log outputs, listening unix sockets of serial ports and consoles, and
 * the NVRAM file moved to clone-specific paths, fixed graphics ports made automatic, bind-mode virtio channel
 * sockets left for libvirt to name, and each cloned disk pointed at its new qcow2 overlay. Writable disks that are
 * not cloned are left out; CD-ROMs and read-only disks are kept. Socket-link ports are mapped through
 * `socketPorts` when given. Everything else is kept as it is (same host); the XML is serialized canonically.
 * @throws DomainXmlError when the XML is not a well-formed domain
 * @throws Error when a disk to clone is not in the XML, or a socket-link port is not in `socketPorts`
 */
export function cloneDomainXml(xml: string, options: CloneXmlOptions): CloneXml {
  const { sourceName, cloneName } = options;
  const path = (p: string) => clonePath(p, sourceName, cloneName);
  const dom = parseDomainTree(xml);
  const name = child(dom, 'name');
  if (name) name.children = [cloneName];
  else dom.children.unshift({ name: 'name', attrs: {}, children: [cloneName] });
  without(dom, (c) => c.name === 'uuid');
  dropOwnMetadata(dom, options.metadataNamespace);
  const nvram = child(dom, 'os') && child(child(dom, 'os')!, 'nvram');
  if (nvram && textOf(nvram).trim() !== '') nvram.children = [path(textOf(nvram).trim())];

  const droppedDisks: string[] = [];
  const wanted = new Map(options.disks.map((d) => [d.target, d.file]));
  const devices = child(dom, 'devices');
  if (devices) {
    without(devices, (d) => d.name === 'disk' && !fixDisk(d, wanted, droppedDisks));
    for (const d of elements(devices)) {
      if (d.name === 'interface') without(d, (c) => c.name === 'mac' && c.attrs.address !== undefined);
      if (CHARDEVS.has(d.name)) fixChardev(d, path);
      if (d.name === 'graphics' && d.attrs.autoport === 'no') {
        for (const k of ['port', 'tlsPort', 'websocket']) delete d.attrs[k];
        d.attrs.autoport = 'yes';
      }
    }
  }
  if (wanted.size > 0) throw new Error(`disk(s) ${[...wanted.keys()].join(', ')} not found in the domain XML`);
  if (options.socketPorts) remapSocketLinkTree(dom, options.socketPorts);
  return { xml: serializeDomainTree(dom), droppedDisks };
}

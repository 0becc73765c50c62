import { posix } from 'node:path';
import {
  child,
  DomainXmlError,
  elements,
  parseDomainTree,
  serializeDomainTree,
  textOf,
  type XmlElement,
} from './domain-tree';
import {
  BOOT_FILE_ELEMENTS,
  DEFAULT_BOOT_FILE_DIRS,
  DOMAIN_RULE,
  HOST_RESOURCE_LABELS,
  insideAny,
  isLoopback,
  keptEndpoints,
  QEMU_NAMESPACE,
  type Rule,
  servedByRestore,
  socketEndpoints,
  type SocketEndpoint,
} from './restore-policy';
import { remapSocketLinkTree, SOCKET_LINK_TYPES } from './socket-links';

export { DEFAULT_BOOT_FILE_DIRS, type SocketEndpoint } from './restore-policy';
export { DomainXmlError } from './domain-tree';

export interface RestoreXmlOptions {
  /** The VM's name in the stored XML. */
  sourceName: string;
  /** Name on the target: the source name keeps identity (failover), another name makes a clone. */
  name: string;
  /** `keep`: same UUID and MAC addresses (failover); `new`: libvirt generates new ones (clone). */
  identity: 'keep' | 'new';
  /** The UUID the VM is defined with (chosen by the restore's plan, so a retried define finds its own VM). */
  assignUuid?: string;
  /**
   * Each restored disk's new file and format, by target. With `nbd` (an instant restore), the file is a qcow2
   * overlay whose backing is that raw NBD export on a unix socket inside `nbdSocketDir`, and the disk gets the stop
   * error policies while it hydrates (docs/adr/0013-instant-restore.md).
   */
  disks: { target: string; file: string; format: 'raw' | 'qcow2'; nbd?: { socket: string; exportName: string } }[];
  /** The only directory an instant restore's NBD sockets may be in (groupsnap's own, under its state dir). */
  nbdSocketDir?: string;
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
  /** groupsnap's metadata namespace (kept for callers; every `<metadata>` is left out of a restored VM). */
  metadataNamespace: string;
  /** Remove what names a host resource (listed in `removed`) instead of refusing the definition. */
  stripHostDevices?: boolean;
  /** Directories read-only boot files may come from. @default DEFAULT_BOOT_FILE_DIRS */
  bootFileDirs?: string[];
  /**
   * The TCP/UDP endpoints of every VM of this restore, from their stored definitions ({@link restoreEndpoints}):
   * a VM may connect only to what another VM of the restore listens on (loopback), never to the host's services.
   */
  restoreEndpoints: SocketEndpoint[];
}

/** A restored VM's definition: the XML to define, and what `stripHostDevices` removed. */
export interface RestoredDomain {
  xml: string;
  removed: string[];
  /** Files of the VM moved into the image directory (serial logs, sockets, NVRAM): the plan checks they are new. */
  files: string[];
  /** The stored UUID (checked form), for a failover's collision check. */
  uuid?: string;
}

/** The stored definition names host resources (each one listed); nothing may be defined from it as it is. */
export class HostResourceError extends Error {
  override readonly name = 'HostResourceError';
  constructor(readonly offending: string[]) {
    super(
      `the stored definition names resources of the host (refused; --strip-host-devices removes them): ` +
        offending.join('; '),
    );
  }
}

interface Walk {
  o: RestoreXmlOptions;
  offending: string[];
  bootDirs: string[];
  /** Decoded source path -> its file in the image directory (a serial and its console share one). */
  relocated: Map<string, string>;
  /** Files in the image directory this build named (restored disks, relocated files). */
  used: Set<string>;
  /** Boot files checked against the boot-file directories. */
  bootFiles: Set<string>;
  diskFiles: Map<string, { file: string; format: string; nbd?: { socket: string; exportName: string } }>;
  /** Instant restores' NBD backings, put into their disks after the walk (which drops every stored backing). */
  backings: { disk: XmlElement; backing: XmlElement }[];
}

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** `<filesystem type='mount'> (source dir=/srv; target dir=x)`: an element named for a message. */
function describe(e: XmlElement): string {
  const attrs = (x: XmlElement) =>
    Object.entries(x.attrs)
      .filter(([k]) => !k.startsWith('xmlns'))
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
      .join(' ');
  const own = attrs(e);
  const head = `<${e.name}${own ? ` ${own}` : ''}>`;
  const inner = elements(e)
    .filter((c) => ['source', 'target'].includes(c.name) && Object.keys(c.attrs).length)
    .map((c) => `${c.name} ${attrs(c)}`);
  return inner.length ? `${head} (${inner.join('; ')})` : head;
}

/**
 * A file of the VM moved into the image directory: its decoded base name (the source VM's name in it becomes the
 * clone's), reduced to safe characters; never `.`/`..`, never a separator, so it cannot leave the directory.
 */
function relocate(w: Walk, decoded: string, kind: string): string {
  const known = w.relocated.get(decoded);
  if (known) return known;
  let base = posix.basename(decoded.replace(/\/+$/, ''));
  if (/^\.*$/.test(base)) base = kind;
  if (base.includes(w.o.sourceName)) base = base.replace(w.o.sourceName, w.o.name);
  else if (w.o.name !== w.o.sourceName) base = `${w.o.name}.${base}`;
  base = base.replace(/[^A-Za-z0-9._+@-]/g, '_').slice(0, 200);
  if (/^\.*$/.test(base)) base = `${w.o.name}.${kind}`;
  let file = posix.join(w.o.imagesDir, base);
  for (let i = 1; w.used.has(file); i++) file = posix.join(w.o.imagesDir, `${base}.${i}`);
  w.used.add(file);
  w.relocated.set(decoded, file);
  return file;
}

/** A read-only boot file: normalized, inside the boot-file directories, else undefined. */
function bootFile(w: Walk, value: string): string | undefined {
  const p = value.trim();
  if (!p.startsWith('/')) return undefined;
  const file = posix.normalize(p);
  if (!insideAny(file, w.bootDirs)) return undefined;
  w.bootFiles.add(file);
  return file;
}

/** Removes or refuses `e`: records it; `false` tells the caller to leave it out. */
function offend(w: Walk, what: string): false {
  w.offending.push(what);
  return false;
}

/** A character device (serial, console, parallel, channel): by type; files and listening sockets relocated. */
function fixChardev(w: Walk, e: XmlElement): boolean {
  const type = e.attrs.type ?? 'pty';
  const source = child(e, 'source');
  const described = `${describe(e)}: character device reaching a host resource`;
  const label = () => described;
  for (const log of elements(e).filter((c) => c.name === 'log'))
    if (log.attrs.file !== undefined) log.attrs.file = relocate(w, log.attrs.file, `${e.name}.log`);
  // A source path is only kept where the type uses one, and then relocated.
  const path = source?.attrs.path;
  for (const s of elements(e)) if (s.name === 'source') delete s.attrs.path;
  switch (type) {
    case 'pty': // a live pty's name, host-specific
    case 'null':
    case 'vc':
    case 'spicevmc':
    case 'qemu-vdagent':
      return true;
    case 'file':
      if (!source || !path) return offend(w, label());
      source.attrs.path = relocate(w, path, `${e.name}.log`);
      return true;
    case 'unix': {
      // Listening sockets only: connecting would reach a socket of the recovery host.
      if (!source || source.attrs.mode !== 'bind') return offend(w, label());
      // libvirt names a virtio channel's socket itself when the path is left out.
      const virtio = e.name === 'channel' && child(e, 'target')?.attrs.type === 'virtio';
      if (!virtio && path) source.attrs.path = relocate(w, path, `${e.name}.sock`);
      return true;
    }
    case 'tcp':
    case 'udp': {
      const sources = elements(e).filter((c) => c.name === 'source');
      if (!sources.length || sources.some((s) => s.attrs.mode === 'bind' && !isLoopback(s.attrs.host ?? '')))
        return offend(w, label());
      return connectsWithinRestore(w, e, described);
    }
    default:
      return offend(w, label());
  }
}

/**
 * Whether every endpoint `e` connects to (chardev `mode='connect'`, interface `client`, a UDP link's remote side)
 * is one another VM of this restore listens on; otherwise offends (a loopback target is the recovery host's own
 * services: Temporal, a database, a metrics port).
 */
function connectsWithinRestore(w: Walk, e: XmlElement, what: string): boolean {
  const mine = socketEndpoints(w.o.sourceName, {
    name: 'domain',
    attrs: {},
    children: [{ name: 'devices', attrs: {}, children: [e] }],
  });
  const stray = mine.filter((x) => x.role === 'connect' && !servedByRestore(x, w.o.restoreEndpoints));
  if (!stray.length) return true;
  const targets = stray.map((x) => `${x.proto} ${x.address || '(none)'}:${x.port || '(none)'}`).join(', ');
  return offend(w, `${what} connecting to ${targets}, which no other VM of this restore listens on`);
}

/** An interface: network/bridge (renamed by the map) or a loopback socket link; MACs dropped for clones. */
function fixInterface(w: Walk, e: XmlElement): boolean {
  const type = e.attrs.type ?? '';
  const linkish = (SOCKET_LINK_TYPES as readonly string[]).includes(type);
  if (!['network', 'bridge', 'user'].includes(type) && !linkish)
    return offend(w, `${describe(e)}: interface on a host device`);
  if (linkish) {
    if (type === 'mcast') return offend(w, `${describe(e)}: multicast socket link (the host's network)`);
    const sources = elements(e).filter((c) => c.name === 'source');
    const listeners =
      type === 'server' ? sources : sources.flatMap((s) => elements(s).filter((c) => c.name === 'local'));
    if (!sources.length || listeners.some((s) => !isLoopback(s.attrs.address ?? '')))
      return offend(w, `${describe(e)}: socket link to a non-loopback address`);
    if (!connectsWithinRestore(w, e, `${describe(e)}: socket link`)) return false;
  }
  if (w.o.identity === 'new') e.children = e.children.filter((c) => typeof c === 'string' || c.name !== 'mac');
  const source = child(e, 'source');
  for (const k of ['network', 'bridge'] as const) {
    const to = source?.attrs[k] !== undefined ? w.o.networkMap?.[source.attrs[k]] : undefined;
    if (source && to !== undefined) source.attrs[k] = to;
  }
  return true;
}

/** A restored disk on its new file (no backing chain); any other disk names a host resource. */
function fixDisk(w: Walk, e: XmlElement): boolean {
  const dev = child(e, 'target')?.attrs.dev ?? '';
  const restored = w.diskFiles.get(dev);
  if (!restored) return offend(w, `${describe(e)}: disk that is not a restored file`);
  w.diskFiles.delete(dev);
  e.attrs.type = 'file';
  if ((e.attrs.device ?? 'disk') !== 'disk') e.attrs.device = 'disk';
  const keep = e.children.filter(
    (c): c is XmlElement =>
      typeof c !== 'string' && !['source', 'backingStore', 'driver', 'mirror', 'reservations'].includes(c.name),
  );
  const driver = child(e, 'driver') ?? { name: 'driver', attrs: {}, children: [] };
  driver.attrs = { ...driver.attrs, name: 'qemu', type: restored.format };
  const source = { name: 'source', attrs: { file: restored.file }, children: [] };
  e.children = [driver, source, ...keep];
  if (restored.nbd) {
    driver.attrs = { ...driver.attrs, error_policy: 'stop', rerror_policy: 'stop' };
    w.backings.push({ disk: e, backing: nbdBackingStore(w, restored.nbd, restored.format) });
  }
  return true;
}

/**
 * An instant restore's backing: exactly a raw NBD export on a unix socket in groupsnap's own socket directory,
 * under a qcow2 overlay; nothing else is ever allowed as a backing.
 * @throws DomainXmlError for any other socket, export name or format
 */
function nbdBackingStore(w: Walk, nbd: { socket: string; exportName: string }, format: string): XmlElement {
  const dir = w.o.nbdSocketDir;
  const socket = posix.normalize(nbd.socket);
  if (format !== 'qcow2' || !dir || socket !== nbd.socket || !insideAny(socket, [dir]))
    throw new DomainXmlError(`NBD backing on ${JSON.stringify(nbd.socket)} is not one of groupsnap's own sockets`);
  if (!/^[A-Za-z0-9._-]{1,100}$/.test(nbd.exportName))
    throw new DomainXmlError(`NBD export name ${JSON.stringify(nbd.exportName)} is not valid`);
  const host = { name: 'host', attrs: { transport: 'unix', socket }, children: [] };
  return {
    name: 'backingStore',
    attrs: { type: 'network' },
    children: [
      { name: 'format', attrs: { type: 'raw' }, children: [] },
      { name: 'source', attrs: { protocol: 'nbd', name: nbd.exportName }, children: [host] },
      { name: 'backingStore', attrs: {}, children: [] },
    ],
  };
}

/** Graphics: VNC/SPICE on loopback only; a fixed port becomes automatic (the target picks a free one). */
function fixGraphics(w: Walk, e: XmlElement): boolean {
  if (e.attrs.autoport === 'no') {
    for (const k of ['port', 'tlsPort', 'websocket']) delete e.attrs[k];
    e.attrs.autoport = 'yes';
  }
  for (const l of elements(e).filter((c) => c.name === 'listen'))
    if (l.attrs.socket !== undefined) l.attrs.socket = relocate(w, l.attrs.socket, 'graphics.sock');
  e.children = e.children.filter(
    (g) =>
      typeof g === 'string' ||
      g.name !== 'gl' ||
      g.attrs.rendernode === undefined ||
      offend(w, `${describe(e)}: render node ${g.attrs.rendernode} of the host`),
  );
  return true;
}

/** `<os>`: boot files only from the boot-file directories, read-only; NVRAM moved into the image directory. */
function fixOs(w: Walk, e: XmlElement): boolean {
  const outside = `outside the boot-file directories (${w.bootDirs.join(', ')})`;
  e.children = e.children.filter((c) => {
    if (typeof c === 'string') return true;
    if (BOOT_FILE_ELEMENTS.has(c.name) && textOf(c).trim() !== '') {
      const file = bootFile(w, textOf(c));
      if (c.name === 'loader' && c.attrs.type === 'pflash' && c.attrs.readonly !== 'yes')
        return offend(w, `os/${describe(c)} ${JSON.stringify(textOf(c))}: writable firmware file of the host`);
      if (file === undefined) return offend(w, `os/<${c.name}> ${JSON.stringify(textOf(c))}: boot file ${outside}`);
      c.children = [file];
    }
    if (c.name === 'nvram') {
      if (c.attrs.template !== undefined) {
        const t = bootFile(w, c.attrs.template);
        if (t === undefined) return offend(w, `os/<nvram template=${JSON.stringify(c.attrs.template)}>: ${outside}`);
        c.attrs.template = t;
      }
      if (textOf(c).trim() !== '') c.children = [relocate(w, textOf(c).trim(), 'nvram.fd')];
    }
    return true;
  });
  return true;
}

/** Checks and rewrites beyond the allow-list, by `parent/element`. */
const FIXES: Record<string, (w: Walk, e: XmlElement) => boolean> = {
  'devices/serial': fixChardev,
  'devices/console': fixChardev,
  'devices/parallel': fixChardev,
  'devices/channel': fixChardev,
  'devices/interface': fixInterface,
  'devices/disk': fixDisk,
  'devices/graphics': fixGraphics,
  'domain/os': fixOs,
};

/** Text that is the guest's, not a host path (the guest kernel's command line, names, descriptions). */
const FREE_TEXT = new Set(['cmdline', 'name', 'title', 'description']);

/** A value this build put in place: a file in the image directory, a checked boot file, the host's RNG. */
function placed(w: Walk, v: string): boolean {
  return v === '/dev/urandom' || v === '/dev/random' || w.used.has(v) || w.bootFiles.has(v);
}

/** Walks `e` against `rule`: whatever the allow-list does not name is recorded (and left out). */
function walk(w: Walk, e: XmlElement, rule: Rule, where: string): void {
  for (const [k, v] of Object.entries(e.attrs)) {
    const check = rule.free ? (k.includes(':') ? undefined : true) : rule.attrs?.[k];
    let why: string | undefined;
    if (k === 'xmlns' || k.startsWith('xmlns:'))
      why = v === QEMU_NAMESPACE ? 'binds the QEMU namespace (command-line passthrough)' : 'namespace declaration';
    else if (check === undefined) why = 'attribute not in the restore allow-list';
    else if (check !== true) why = check(v, e);
    else if (v.includes('/') && !placed(w, v)) why = 'a path of the host';
    if (rule.free && why === undefined && v.includes('/')) why = 'a path';
    if (why !== undefined) {
      // Namespace declarations go silently when nothing uses them (every prefixed name is refused on its own).
      if (why !== 'namespace declaration') offend(w, `${where}<${e.name} ${k}=${JSON.stringify(v)}>: ${why}`);
      delete e.attrs[k];
    }
  }
  const kept: (XmlElement | string)[] = [];
  for (const c of e.children) {
    if (typeof c === 'string') {
      const freeText = FREE_TEXT.has(e.name) && !rule.free;
      const pathy = c.includes('/') && !freeText && !placed(w, c.trim());
      const check = pathy ? () => 'a path of the host' : rule.free ? true : rule.text;
      if (c.trim() === '' && !rule.text) continue;
      const why = !check ? 'text not in the restore allow-list' : check === true ? undefined : check(c.trim(), e);
      if (why === undefined) kept.push(c);
      else offend(w, `${where}<${e.name}> text ${JSON.stringify(c.trim().slice(0, 80))}: ${why}`);
      continue;
    }
    const sub = rule.free ? (c.name.includes(':') ? undefined : { free: true }) : rule.children?.[c.name];
    if (e.name === 'devices' && c.name === 'interface' && w.o.noNetwork) continue;
    if (sub?.drop) continue;
    if (sub === undefined) {
      const label =
        HOST_RESOURCE_LABELS[c.name] ??
        (c.name.includes(':') ? 'namespaced extension' : 'not in the restore allow-list');
      offend(w, `${where}${e.name === 'domain' ? '' : `${e.name}/`}${describe(c)}: ${label}`);
      continue;
    }
    const fix = rule.free ? undefined : FIXES[`${e.name}/${c.name}`];
    const here = `${where}${e.name === 'domain' ? '' : `${e.name}/`}`;
    const before = w.offending.length;
    const keep = !fix || fix(w, c);
    for (let i = before; i < w.offending.length; i++) w.offending[i] = `${here}${w.offending[i]}`;
    if (!keep) continue;
    walk(w, c, sub, here);
    kept.push(c);
  }
  e.children = kept;
}

/**
 * The definition of a VM restored on another host, built from its stored XML through an allow-list (see
 * docs/restore-policy.md): restored disks on their new files (no backing chain), serial logs, listening sockets
 * and NVRAM moved into the target's image directory, boot files only from `bootFileDirs`, the emulator and
 * metadata left to the target, networks renamed or removed. A clone gets a new name and no UUID or MACs (libvirt
 * generates them); a failover (`identity: 'keep'`) keeps name, UUID and MACs. Anything naming a host resource
 * (host shares and devices, other disks, chardevs reaching host files/devices/networks, non-loopback listeners,
 * QEMU passthrough) is refused, or removed and listed with `stripHostDevices`.
 * @throws DomainXmlError when the XML is malformed, declares a DOCTYPE, or a disk to restore is missing
 * @throws HostResourceError naming every offending element (without `stripHostDevices`)
 */
export function buildRestoredDomain(xml: string, o: RestoreXmlOptions): RestoredDomain {
  const dom = parseDomainTree(xml);
  const stored = dom.attrs.type;
  if (stored !== 'kvm' && stored !== 'qemu')
    throw new DomainXmlError(`domain type ${JSON.stringify(stored ?? '')} cannot be restored (kvm or qemu only)`);
  const w: Walk = {
    o,
    offending: [],
    bootDirs: o.bootFileDirs ?? DEFAULT_BOOT_FILE_DIRS,
    relocated: new Map(),
    used: new Set(o.disks.map((d) => d.file)),
    bootFiles: new Set(),
    diskFiles: new Map(o.disks.map((d) => [d.target, { file: d.file, format: d.format, nbd: d.nbd }])),
    backings: [],
  };
  const uuidEl = child(dom, 'uuid');
  const uuid = uuidEl && UUID.test(textOf(uuidEl).trim()) ? textOf(uuidEl).trim() : undefined;
  if (uuidEl && !uuid) throw new DomainXmlError(`stored UUID ${JSON.stringify(textOf(uuidEl))} is not a UUID`);
  walk(w, dom, DOMAIN_RULE, '');
  for (const b of w.backings) b.disk.children.splice(2, 0, b.backing);
  if (w.diskFiles.size > 0)
    throw new DomainXmlError(`disk(s) ${[...w.diskFiles.keys()].join(', ')} not found in the domain XML`);
  if (w.offending.length && !o.stripHostDevices) throw new HostResourceError(w.offending);
  // Identity: the target's name; the stored UUID only for a failover; no runtime id.
  delete dom.attrs.id;
  dom.attrs.type = o.virtType ?? stored;
  dom.children = dom.children.filter((c) => typeof c === 'string' || (c.name !== 'uuid' && c.name !== 'name'));
  const head: XmlElement[] = [{ name: 'name', attrs: {}, children: [o.name] }];
  if (o.assignUuid !== undefined && !UUID.test(o.assignUuid))
    throw new DomainXmlError(`UUID ${JSON.stringify(o.assignUuid)} is not a UUID`);
  const given = o.assignUuid ?? (o.identity === 'keep' ? uuid : undefined);
  if (given) head.push({ name: 'uuid', attrs: {}, children: [given] });
  dom.children = [...head, ...dom.children];
  if (o.identity === 'new' && o.socketPorts) remapSocketLinkTree(dom, o.socketPorts);
  const out = serializeDomainTree(dom);
  const files = [...new Set(w.relocated.values())];
  return { xml: out, removed: w.offending, files, ...(uuid ? { uuid } : {}) };
}

/**
 * The TCP/UDP endpoints of every VM of one restore, from their stored definitions (name: the stored VM name, the
 * builder's `sourceName`), of the devices the restore keeps ({@link keptEndpoints}). A definition that cannot be
 * parsed contributes none (its own build refuses it).
 */
export function restoreEndpoints(vms: { name: string; xml: string }[]): SocketEndpoint[] {
  const all = vms.flatMap((v) => {
    try {
      return socketEndpoints(v.name, parseDomainTree(v.xml));
    } catch (err) {
      if (err instanceof DomainXmlError) return [];
      throw err;
    }
  });
  return keptEndpoints(all);
}

/** {@link buildRestoredDomain}'s XML. */
export function restoredDomainXml(xml: string, o: RestoreXmlOptions): string {
  return buildRestoredDomain(xml, o).xml;
}

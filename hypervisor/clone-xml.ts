import { basename, dirname, join } from 'node:path';
import { escapeXml, stripBackingStore } from './domain-xml';
import { remapSocketLinkPorts } from './socket-links';

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

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A clone-specific file beside `file`: the source name in the file name becomes the clone's, else a prefix. */
export function clonePath(file: string, sourceName: string, cloneName: string): string {
  const name = basename(file);
  return join(dirname(file), name.includes(sourceName) ? name.replace(sourceName, cloneName) : `${cloneName}.${name}`);
}

function attrOf(tag: string, name: string): string | undefined {
  const m = new RegExp(`\\s${name}=(['"])(.*?)\\1`).exec(tag);
  return m?.[2];
}

/** Replaces the value of attribute `name` (XML-escaped in the tag) through `fn` on the unescaped value. */
function mapAttr(text: string, element: string, name: string, fn: (value: string) => string): string {
  return text.replace(
    new RegExp(`(<${element}\\b[^>]*?\\s${name}=)(['"])(.*?)\\2`, 'g'),
    (_m, head: string, q: string, v: string) => `${head}${q}${escapeXml(fn(unescapeXml(v)))}${q}`,
  );
}

function unescapeXml(s: string): string {
  return s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&apos;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, '&');
}

/**
 * The definition of a clone of a VM from its inactive XML: new name, no uuid and no MAC addresses (libvirt
 * generates new ones), no groupsnap metadata (the clone must not inherit the VM's tags and catalog, or it would
 * join its groups), file-backed serial/console/log outputs, listening unix sockets of serial ports and consoles, and
 * the NVRAM file moved to clone-specific paths, fixed graphics ports made automatic, bind-mode virtio channel
 * sockets left for libvirt to name, and each cloned disk pointed at its new qcow2 overlay. Writable disks that are
 * not cloned are left out; CD-ROMs and read-only disks are kept. Socket-link ports are mapped through
 * `socketPorts` when given.
 * @throws Error when a disk to clone is not in the XML, or a socket-link port is not in `socketPorts`
 */
export function cloneDomainXml(xml: string, options: CloneXmlOptions): CloneXml {
  const { sourceName, cloneName } = options;
  const path = (p: string) => clonePath(p, sourceName, cloneName);
  let out = xml.replace(/<name>[^<]*<\/name>/, `<name>${escapeXml(cloneName)}</name>`);
  out = out.replace(/\s*<uuid>[^<]*<\/uuid>/, '');
  out = out.replace(/\s*<mac\b[^>]*?\baddress=(['"])[^'"]*\1[^>]*\/>/g, '');

  // groupsnap's element inside <metadata> (any prefix bound to its namespace); other applications' stay.
  const ns = escapeRegExp(options.metadataNamespace);
  out = out.replace(/<metadata>([\s\S]*?)<\/metadata>/, (_m, inner: string) => {
    const kept = inner.replace(
      new RegExp(
        `\\s*<([\\w.-]+):([\\w.-]+)\\b[^>]*\\sxmlns:\\1=(['"])${ns}\\3[^>]*?(?:/>|>[\\s\\S]*?</\\1:\\2>)`,
        'g',
      ),
      '',
    );
    return kept.trim() === '' ? '' : `<metadata>${kept}</metadata>`;
  });

  // Character devices writing to files: a clone writing into the source's log would interleave with it.
  const chardev = /<(serial|console|parallel|channel)\b((?:[^>/]|\/(?!>))*)(?:\/>|>[\s\S]*?<\/\1>)/g;
  out = out.replace(chardev, (dev, el: string, attrs: string) => {
    let d = dev;
    if (attrOf(` ${attrs}`, 'type') === 'file') d = mapAttr(d, 'source', 'path', path);
    if (attrOf(` ${attrs}`, 'type') === 'unix' && /<source\b[^>]*?\bmode=(['"])bind\1/.test(d)) {
      if (el === 'channel' && /<target\b[^>]*?\btype=(['"])virtio\1/.test(d)) {
        // libvirt names a virtio channel's socket itself when the path is left out.
        d = d.replace(/(<source\b[^>]*?\bmode=(['"])bind\2[^>]*?)\s+path=(['"])[^'"]*\3/, '$1');
        d = d.replace(/(<source\b[^>]*?)\s+path=(['"])[^'"]*\2([^>]*?\bmode=(['"])bind\4)/, '$1$3');
      } else {
        // A serial port's (console's, ...) listening socket needs a path: the clone's own, beside the source's.
        d = mapAttr(d, 'source', 'path', path);
      }
    }
    return mapAttr(d, 'log', 'file', path);
  });
  out = out.replace(/(<nvram\b[^>]*>)([^<]+)(<\/nvram>)/, (_m, open: string, p: string, close: string) => {
    return `${open}${escapeXml(path(unescapeXml(p.trim())))}${close}`;
  });
  out = out.replace(/<graphics\b[^>]*>/g, (tag) =>
    attrOf(tag, 'autoport') === 'no'
      ? tag
          .replace(/\s(port|tlsPort|websocket)=(['"])[^'"]*\2/g, '')
          .replace(/\sautoport=(['"])no\1/, " autoport='yes'")
      : tag,
  );

  const droppedDisks: string[] = [];
  const wanted = new Map(options.disks.map((d) => [d.target, d.file]));
  out = out.replace(/\s*<disk\b([^>]*)>[\s\S]*?<\/disk>/g, (disk, attrs: string) => {
    const target = /<target\b[^>]*?\bdev=(['"])([^'"]+)\1/.exec(disk)?.[2] ?? '';
    const file = wanted.get(target);
    if (file === undefined) {
      const device = attrOf(attrs, 'device') ?? 'disk';
      if (device === 'cdrom' || device === 'floppy' || /<readonly\s*\/>/.test(disk)) return disk;
      droppedDisks.push(target);
      return '';
    }
    wanted.delete(target);
    let d = stripBackingStore(disk);
    d = d.replace(/(<disk\b[^>]*?\stype=)(['"])[^'"]*\2/, "$1'file'");
    d = d.replace(/<source\b[^>]*?(?:\/>|>[\s\S]*?<\/source>)/, `<source file='${escapeXml(file)}'/>`);
    if (!/<driver\b/.test(d)) d = d.replace(/(<disk\b[^>]*>)/, "$1<driver name='qemu' type='qcow2'/>");
    else if (/<driver\b[^>]*?\stype=/.test(d)) d = d.replace(/(<driver\b[^>]*?\stype=)(['"])[^'"]*\2/, "$1'qcow2'");
    else d = d.replace(/<driver\b/, "<driver type='qcow2'");
    return d;
  });
  if (wanted.size > 0) throw new Error(`disk(s) ${[...wanted.keys()].join(', ')} not found in the domain XML`);
  if (options.socketPorts) out = remapSocketLinkPorts(out, options.socketPorts);
  return { xml: out, droppedDisks };
}

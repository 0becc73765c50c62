/**
 * What a VM restored from the off-host repository may keep of its stored definition (an allow-list of libvirt
 * domain elements and attributes), and the checks on values that could reach the recovery host's resources.
 * Pure data and small predicates; restore-xml.ts walks a definition with them. See docs/restore-policy.md.
 */
import { posix } from 'node:path';
import type { XmlElement } from './domain-tree';

/** The QEMU namespace of libvirt's domain XML (`<qemu:commandline>`, `<qemu:override>`, ...). */
export const QEMU_NAMESPACE = 'http://libvirt.org/schemas/domain/qemu/1.0';

/**
 * Directories a restored VM's read-only boot files (`<loader>`, `<nvram template>`, `<kernel>`, `<initrd>`,
 * `<dtb>`) may come from unless the worker names others (`--boot-files-dir`): the distributions' firmware.
 */
export const DEFAULT_BOOT_FILE_DIRS = [
  '/usr/share/OVMF',
  '/usr/share/AAVMF',
  '/usr/share/edk2',
  '/usr/share/qemu',
  '/usr/share/seabios',
  '/usr/share/ovmf',
];

/** Why an attribute value is refused, or undefined when it is fine. */
export type ValueCheck = (value: string, el: XmlElement) => string | undefined;

/**
 * An allowed element: its attributes (true: any value; a check), its children, whether it holds text; `free`:
 * any unprefixed subtree whose values hold no `/` (CPU, clock, features: nothing there names a host resource);
 * `drop`: left out silently (host-specific, the target's default applies, no host resource reached).
 */
export interface Rule {
  attrs?: Record<string, true | ValueCheck>;
  children?: Record<string, Rule>;
  text?: boolean | ValueCheck;
  free?: boolean;
  drop?: boolean;
}

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1|localhost|::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i;

/** Whether an address reaches only the host's loopback interface. */
export const isLoopback = (address: string): boolean => LOOPBACK.test(address.trim().replace(/^\[|\]$/g, ''));

const loopback: ValueCheck = (v) => (isLoopback(v) ? undefined : `address ${v} is not loopback`);
const oneOf =
  (...values: string[]): ValueCheck =>
  (v) =>
    values.includes(v) ? undefined : `${JSON.stringify(v)} is not one of ${values.join(', ')}`;
const noSlash: ValueCheck = (v) => (v.includes('/') ? `${JSON.stringify(v)} looks like a path` : undefined);

/** Whether `file` (absolute, normalized) lies inside one of `dirs`. */
export function insideAny(file: string, dirs: string[]): boolean {
  return dirs.some((d) => {
    const dir = posix.normalize(d).replace(/\/+$/, '');
    return dir !== '' && file.startsWith(`${dir}/`);
  });
}

const empty: Rule = {};
const address: Rule = { free: true };
const alias: Rule = { attrs: { name: noSlash } };
const driverAttrs = (...names: string[]) => Object.fromEntries(names.map((n) => [n, true as const]));
const common = { address, alias };

/** Host resources refused by name, with what they reach (for the message). */
export const HOST_RESOURCE_LABELS: Record<string, string> = {
  filesystem: 'host directory share',
  hostdev: 'host device passthrough',
  redirdev: 'USB redirection from the host',
  redirfilter: 'USB redirection filter',
  smartcard: 'smartcard passthrough',
  shmem: 'host shared memory',
  lease: 'lock lease on a host file',
  memory: 'memory device backed by the host',
  crypto: 'host crypto backend',
  nvram: 'host NVRAM device',
  'qemu:commandline': 'QEMU command-line passthrough',
  commandline: 'QEMU command-line passthrough',
  blkiotune: 'host block device tuning',
  sysinfo: 'system information from host files',
  seclabel: 'security label',
};

/** Character device children (serial, console, parallel, channel); the source is checked by type in restore-xml. */
const chardevChildren: Record<string, Rule> = {
  source: {
    attrs: { path: true, mode: oneOf('bind', 'connect'), host: loopback, service: true, append: true },
    // The old host's labelling of the file: the target's confinement applies.
    children: { seclabel: { drop: true } },
  },
  target: {
    attrs: { type: true, port: true, name: noSlash, state: true, address: loopback },
    children: { model: { attrs: { name: true } } },
  },
  log: { attrs: { file: true, append: true } },
  protocol: { attrs: { type: oneOf('raw', 'telnet', 'telnets', 'tls') } },
  ...common,
};
const chardev: Rule = { attrs: { type: true, tty: true }, children: chardevChildren };

const bootText = true; // checked against the boot-file directories in restore-xml

/** The allow-list of `<domain>`'s content. */
export const DOMAIN_RULE: Rule = {
  attrs: { type: oneOf('kvm', 'qemu'), id: true },
  children: {
    name: { text: true },
    uuid: { text: true },
    genid: { text: true },
    title: { text: true },
    description: { text: true },
    metadata: { drop: true },
    resource: { drop: true },
    seclabel: { drop: true },
    keywrap: { drop: true },
    memory: { attrs: { unit: true, dumpCore: true }, text: true },
    currentMemory: { attrs: { unit: true }, text: true },
    maxMemory: { attrs: { unit: true, slots: true }, text: true },
    vcpu: { attrs: { placement: true, current: true, cpuset: true }, text: true },
    iothreads: { text: true },
    ...Object.fromEntries(
      ['vcpus', 'iothreadids', 'cputune', 'memtune', 'numatune', 'features', 'cpu', 'clock', 'pm', 'perf'].map((n) => [
        n,
        { free: true },
      ]),
    ),
    on_poweroff: { text: true },
    on_reboot: { text: true },
    on_crash: { text: true },
    on_lockfailure: { text: true },
    memoryBacking: {
      children: {
        hugepages: { free: true },
        nosharepages: empty,
        locked: empty,
        source: { attrs: { type: oneOf('anonymous', 'memfd') } },
        access: { attrs: { mode: true } },
        allocation: { attrs: { mode: true, threads: true } },
        discard: empty,
      },
    },
    os: {
      attrs: { firmware: oneOf('efi', 'bios') },
      children: {
        type: { attrs: { arch: true, machine: true }, text: true },
        boot: { attrs: { dev: true } },
        bootmenu: { attrs: { enable: true, timeout: true } },
        smbios: { attrs: { mode: oneOf('emulate', 'host') } },
        bios: { attrs: { useserial: true, rebootTimeout: true } },
        loader: {
          attrs: { readonly: true, type: oneOf('rom', 'pflash'), secure: true, stateless: true, format: true },
          text: bootText,
        },
        nvram: { attrs: { template: true, format: true, templateFormat: true }, text: true },
        kernel: { text: bootText },
        initrd: { text: bootText },
        dtb: { text: bootText },
        cmdline: { text: true },
        firmware: { children: { feature: { attrs: { enabled: true, name: true } } } },
      },
    },
    devices: { children: {} }, // filled below
  },
};

/** The allow-list of `<devices>`' content (disks, interfaces, character devices and graphics get checks too). */
DOMAIN_RULE.children!.devices.children = {
  emulator: { drop: true },
  disk: {
    attrs: { type: true, device: true, snapshot: true, model: true, rawio: oneOf('no') },
    children: {
      driver: {
        attrs: driverAttrs(
          'name',
          'type',
          'cache',
          'error_policy',
          'rerror_policy',
          'io',
          'ioeventfd',
          'event_idx',
          'copy_on_read',
          'discard',
          'detect_zeroes',
          'iothread',
          'queues',
          'queue_size',
          'iommu',
          'ats',
          'packed',
          'discard_no_unref',
        ),
      },
      source: { attrs: { file: true } },
      target: { attrs: { dev: noSlash, bus: true, tray: true, removable: true, rotation_rate: true } },
      backingStore: { drop: true },
      boot: { attrs: { order: true, loadparm: true } },
      serial: { text: true },
      wwn: { text: true },
      vendor: { text: true },
      product: { text: true },
      blockio: { free: true },
      iotune: { free: true },
      geometry: { free: true },
      readonly: empty,
      shareable: empty,
      transient: { attrs: { shareBacking: true } },
      ...common,
    },
  },
  controller: {
    attrs: driverAttrs('type', 'index', 'model', 'ports', 'vectors', 'maxGrantFrames', 'maxEventChannels'),
    children: {
      model: { attrs: { name: true } },
      target: { free: true },
      driver: { free: true },
      master: { attrs: { startport: true } },
      pcihole64: { attrs: { unit: true }, text: true },
      ...common,
    },
  },
  interface: {
    attrs: { type: true, trustGuestRxFilters: true },
    children: {
      mac: { attrs: { address: true, type: true, check: true } },
      source: {
        attrs: { network: noSlash, bridge: noSlash, portgroup: noSlash, address: loopback, port: true },
        children: { local: { attrs: { address: loopback, port: true } } },
      },
      model: { attrs: { type: true } },
      driver: { free: true },
      boot: { attrs: { order: true, loadparm: true } },
      link: { attrs: { state: true } },
      mtu: { attrs: { size: true } },
      coalesce: { free: true },
      bandwidth: { free: true },
      rom: { attrs: { bar: true, enabled: true } },
      target: { drop: true },
      ...common,
    },
  },
  serial: chardev,
  console: chardev,
  parallel: chardev,
  channel: chardev,
  input: { attrs: { type: true, bus: true, model: true }, children: { driver: { free: true }, ...common } },
  graphics: {
    attrs: {
      type: oneOf('vnc', 'spice'),
      port: true,
      autoport: true,
      websocket: true,
      tlsPort: true,
      listen: loopback,
      keymap: true,
      passwd: true,
      passwdValidTo: true,
      connected: true,
      sharePolicy: true,
      defaultMode: true,
      powerControl: true,
    },
    children: {
      listen: { attrs: { type: oneOf('address', 'none', 'socket'), address: loopback, socket: true } },
      gl: { attrs: { enable: true } },
      audio: { attrs: { id: true } },
      ...Object.fromEntries(
        ['image', 'jpeg', 'zlib', 'playback', 'streaming', 'clipboard', 'mouse', 'filetransfer', 'channel'].map((n) => [
          n,
          { free: true },
        ]),
      ),
    },
  },
  video: {
    children: {
      model: {
        attrs: driverAttrs('type', 'vram', 'heads', 'primary', 'ram', 'vgamem', 'vram64', 'blob'),
        children: { acceleration: { attrs: { accel3d: true, accel2d: true } }, resolution: { free: true } },
      },
      driver: { free: true },
      ...common,
    },
  },
  sound: {
    attrs: { model: true },
    children: { codec: { attrs: { type: true } }, audio: { attrs: { id: true } }, ...common },
  },
  audio: { attrs: { id: true, type: oneOf('none', 'spice') } },
  memballoon: {
    attrs: { model: true, autodeflate: true, freePageReporting: true },
    children: { stats: { attrs: { period: true } }, driver: { free: true }, ...common },
  },
  rng: {
    attrs: { model: true },
    children: {
      backend: { attrs: { model: oneOf('random', 'builtin') }, text: oneOf('/dev/urandom', '/dev/random', '') },
      rate: { attrs: { bytes: true, period: true } },
      driver: { free: true },
      ...common,
    },
  },
  watchdog: { attrs: { model: true, action: true }, children: common },
  panic: { attrs: { model: true }, children: common },
  vsock: { attrs: { model: true }, children: { cid: { attrs: { auto: true, address: true } }, ...common } },
  tpm: {
    attrs: { model: true },
    children: {
      backend: {
        attrs: { type: oneOf('emulator'), version: true, persistent_state: true },
        children: { active_pcr_banks: { free: true } },
      },
      ...common,
    },
  },
  hub: { attrs: { type: true }, children: common },
  iommu: { attrs: { model: true }, children: { driver: { free: true }, ...common } },
};

/** Boot files whose path must lie in the worker's boot-file directories (read-only use). */
export const BOOT_FILE_ELEMENTS = new Set(['loader', 'kernel', 'initrd', 'dtb']);

/**
 * A network endpoint of a VM's QEMU on its host: a character device's TCP/UDP socket or a socket-link interface's.
 * `kind` keeps the two apart: clones remap socket-link ports (socket-links.ts) but not character devices', so only
 * endpoints of the same kind stay paired.
 */
export interface SocketEndpoint {
  /** The VM (its stored name) that has it. */
  vm: string;
  kind: 'chardev' | 'link';
  proto: 'tcp' | 'udp';
  address: string;
  port: string;
  /** `listen`: the VM's QEMU binds it (chardev `mode='bind'`, interface `server`, a UDP link's `<local>`). */
  role: 'listen' | 'connect';
  /** The device's index among the VM's `<devices>` children (a device is kept or removed whole). */
  device: number;
}

const CHARDEVS = new Set(['serial', 'console', 'parallel', 'channel']);
const normAddress = (a: string) =>
  a
    .trim()
    .replace(/^\[|\]$/g, '')
    .toLowerCase();
const normPort = (p: string) => (/^\s*\d+\s*$/.test(p) ? String(Number(p)) : p.trim());

/** Every TCP/UDP endpoint of a parsed domain (character devices and socket-link interfaces), in document order. */
export function socketEndpoints(vm: string, dom: XmlElement): SocketEndpoint[] {
  const out: SocketEndpoint[] = [];
  const devices = dom.children.find((c): c is XmlElement => typeof c !== 'string' && c.name === 'devices');
  const els = (e: XmlElement, name: string) =>
    e.children.filter((c): c is XmlElement => typeof c !== 'string' && c.name === name);
  const push = (
    kind: SocketEndpoint['kind'],
    proto: 'tcp' | 'udp',
    role: SocketEndpoint['role'],
    a?: string,
    p?: string,
  ) => out.push({ vm, kind, proto, role, address: normAddress(a ?? ''), port: normPort(p ?? ''), device });
  let device = -1;
  for (const d of devices?.children ?? []) {
    if (typeof d === 'string') continue;
    device++;
    const type = d.attrs.type ?? '';
    if (CHARDEVS.has(d.name) && (type === 'tcp' || type === 'udp'))
      for (const s of els(d, 'source'))
        push('chardev', type, s.attrs.mode === 'bind' ? 'listen' : 'connect', s.attrs.host, s.attrs.service);
    if (d.name !== 'interface') continue;
    for (const s of els(d, 'source')) {
      if (type === 'server') push('link', 'tcp', 'listen', s.attrs.address, s.attrs.port);
      if (type === 'client') push('link', 'tcp', 'connect', s.attrs.address, s.attrs.port);
      if (type === 'mcast') push('link', 'udp', 'connect', s.attrs.address, s.attrs.port);
      if (type !== 'udp') continue;
      push('link', 'udp', 'connect', s.attrs.address, s.attrs.port);
      for (const l of els(s, 'local')) push('link', 'udp', 'listen', l.attrs.address, l.attrs.port);
    }
  }
  return out;
}

/**
 * Whether a connecting endpoint of VM `vm` reaches one that another VM of the same restore listens on (loopback
 * only: a listener elsewhere is refused on its own). Anything else it connects to is the recovery host's or beyond.
 */
export function servedByRestore(e: SocketEndpoint, listeners: SocketEndpoint[]): boolean {
  return listeners.some(
    (l) =>
      l.role === 'listen' &&
      l.vm !== e.vm &&
      l.kind === e.kind &&
      l.proto === e.proto &&
      isLoopback(l.address) &&
      l.address === normAddress(e.address) &&
      l.port !== '' &&
      l.port === normPort(e.port),
  );
}

/**
 * The endpoints of the devices a restore keeps: a device goes when one of its listeners is not on loopback or one of
 * its connections is served by no kept device of another VM; repeated until nothing more goes (a device whose only
 * peer goes, goes too: its listener must not be counted for others).
 */
export function keptEndpoints(all: SocketEndpoint[]): SocketEndpoint[] {
  const key = (e: SocketEndpoint) => `${e.vm}\0${e.device}`;
  let live = all;
  for (;;) {
    const gone = new Set(
      live.filter((e) => (e.role === 'listen' ? !isLoopback(e.address) : !servedByRestore(e, live))).map(key),
    );
    if (gone.size === 0) return live;
    live = live.filter((e) => !gone.has(key(e)));
  }
}

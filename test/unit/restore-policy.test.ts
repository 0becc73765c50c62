import { posix } from 'node:path';
import fc from 'fast-check';
import { METADATA_NAMESPACE } from '../../common/names';
import { parseDomainTree, type XmlElement } from '../../hypervisor/domain-tree';
import { socketEndpoints } from '../../hypervisor/restore-policy';
import {
  buildRestoredDomain,
  DomainXmlError,
  HostResourceError,
  restoreEndpoints,
  restoredDomainXml,
  type RestoreXmlOptions,
} from '../../hypervisor/restore-xml';

const IMAGES = '/var/lib/b/images';
const BOOT = '/srv/boot';
const DISK = `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/a/vm-vda.qcow2'/><target dev='vda' bus='virtio'/></disk>`;
const vm = (devices: string, os = `<os><type arch='x86_64' machine='q35'>hvm</type></os>`, head = '') =>
  `<domain type='kvm'${head}><name>vm</name><uuid>0b8e5a8e-1111-2222-3333-444455556666</uuid><memory unit='MiB'>64</memory>${os}<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>${DISK}${devices}</devices></domain>`;
const opts: RestoreXmlOptions = {
  sourceName: 'vm',
  name: 'vm-dr',
  identity: 'new',
  disks: [{ target: 'vda', file: `${IMAGES}/vm-dr.vda.r1.qcow2`, format: 'qcow2' }],
  imagesDir: IMAGES,
  metadataNamespace: METADATA_NAMESPACE,
  restoreEndpoints: [],
  bootFileDirs: [BOOT],
};

/** Every path-like value of a built definition (attributes and text with a `/`, except free text). */
function pathsOf(e: XmlElement, out: string[] = []): string[] {
  for (const v of Object.values(e.attrs)) if (v.includes('/')) out.push(v);
  for (const c of e.children) {
    if (typeof c === 'string') {
      if (c.includes('/') && !['cmdline', 'description', 'title', 'name'].includes(e.name)) out.push(c);
    } else pathsOf(c, out);
  }
  return out;
}

/** Inside the image directory, a boot file of the allowed directory, or the host's random source. */
function allowed(p: string): boolean {
  const n = posix.normalize(p);
  if (n !== p) return false;
  return n.startsWith(`${IMAGES}/`) || n.startsWith(`${BOOT}/`) || n === '/dev/urandom' || n === '/dev/random';
}

const refused = (xml: string, o: Partial<RestoreXmlOptions> = {}): string[] => {
  try {
    buildRestoredDomain(xml, { ...opts, ...o });
  } catch (err) {
    if (err instanceof HostResourceError) return err.offending;
    throw err;
  }
  throw new Error('not refused');
};

describe('restored definitions: what names a host resource is refused, or stripped and listed', () => {
  const cases: [string, string, RegExp][] = [
    [
      'host directory share',
      `<filesystem type='mount'><source dir='/srv/share'/><target dir='x'/></filesystem>`,
      /<filesystem type="mount"> \(source dir="\/srv\/share".*host directory share/,
    ],
    [
      'PCI passthrough',
      `<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>`,
      /<hostdev .*host device passthrough/,
    ],
    ['USB redirection', `<redirdev bus='usb' type='spicevmc'/>`, /<redirdev .*USB redirection/],
    [
      'smartcard',
      `<smartcard mode='passthrough' type='tcp'><source mode='connect' host='10.0.0.1' service='2001'/></smartcard>`,
      /<smartcard .*smartcard passthrough/,
    ],
    [
      'block disk',
      `<disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/></disk>`,
      /<disk type="block".*\/dev\/sdb.*not a restored file/,
    ],
    [
      'network disk',
      `<disk type='network' device='disk'><source protocol='nbd' name='x'><host name='10.0.0.9' port='10809'/></source><target dev='vdc'/></disk>`,
      /<disk type="network".*not a restored file/,
    ],
    [
      'volume disk',
      `<disk type='volume' device='disk'><source pool='default' volume='v'/><target dev='vdd'/></disk>`,
      /<disk type="volume".*not a restored file/,
    ],
    [
      'dir disk',
      `<disk type='dir' device='disk'><source dir='/etc'/><target dev='vde'/></disk>`,
      /<disk type="dir".*not a restored file/,
    ],
    [
      'cdrom',
      `<disk type='file' device='cdrom'><source file='/srv/a/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>`,
      /device="cdrom".*not a restored file/,
    ],
    [
      'floppy',
      `<disk type='file' device='floppy'><source file='/srv/a/f.img'/><target dev='fda'/></disk>`,
      /device="floppy".*not a restored file/,
    ],
    [
      'other file disk',
      `<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdf'/></disk>`,
      /\/etc\/shadow.*not a restored file/,
    ],
    [
      'serial on a host device',
      `<serial type='dev'><source path='/dev/ttyS0'/><target port='1'/></serial>`,
      /<serial type="dev">.*character device reaching a host resource/,
    ],
    [
      'serial on a pipe',
      `<serial type='pipe'><source path='&#47;etc/passwd'/><target port='1'/></serial>`,
      /<serial type="pipe"> \(source path="\/etc\/passwd".*character device/,
    ],
    [
      'tcp to a remote host',
      `<serial type='tcp'><source mode='connect' host='10.1.2.3' service='23'/><target port='1'/></serial>`,
      /<serial type="tcp">/,
    ],
    [
      'udp to a remote host',
      `<channel type='udp'><source mode='bind' host='127.0.0.1' service='1'/><source mode='connect' host='8.8.8.8' service='2'/><target type='virtio' name='x'/></channel>`,
      /<channel type="udp">/,
    ],
    [
      'unix socket connect',
      `<channel type='unix'><source mode='connect' path='/run/x.sock'/><target type='virtio' name='x'/></channel>`,
      /<channel type="unix">/,
    ],
    [
      'VNC on every address',
      `<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'/>`,
      /<graphics listen="0.0.0.0">: address 0.0.0.0 is not loopback/,
    ],
    [
      'VNC listen element on every address',
      `<graphics type='vnc'><listen type='address' address='0.0.0.0'/></graphics>`,
      /<listen address="0.0.0.0">/,
    ],
    [
      'listen on a host network',
      `<graphics type='spice'><listen type='network' network='default'/></graphics>`,
      /<listen (type|network)=/,
    ],
    ['SDL on the host display', `<graphics type='sdl' display=':0'/>`, /<graphics type="sdl"/],
    [
      'macvtap on a host NIC',
      `<interface type='direct'><source dev='eth0' mode='bridge'/></interface>`,
      /<interface type="direct">.*interface on a host device/,
    ],
    [
      'host tap device',
      `<interface type='ethernet'><target dev='tap0'/><script path='/etc/qemu-ifup'/></interface>`,
      /<interface type="ethernet">/,
    ],
    [
      'vhost-user socket',
      `<interface type='vhostuser'><source type='unix' path='/run/vu.sock' mode='client'/></interface>`,
      /<interface type="vhostuser">/,
    ],
    [
      'interface option ROM from a host file',
      `<interface type='network'><source network='n'/><rom file='/srv/evil.rom'/></interface>`,
      /<rom file="\/srv\/evil.rom">/,
    ],
    ['input from a host evdev', `<input type='evdev'><source dev='/dev/input/event0'/></input>`, /<source dev=/],
    ['host audio', `<audio id='1' type='pulseaudio'/>`, /<audio type="pulseaudio">/],
    ['host shared memory', `<shmem name='x'><model type='ivshmem-plain'/></shmem>`, /host shared memory/],
    [
      'rng from a host device',
      `<rng model='virtio'><backend model='random'>/dev/hwrng</backend></rng>`,
      /<backend> text "\/dev\/hwrng"/,
    ],
    [
      'TPM passthrough',
      `<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>`,
      /<backend type="passthrough">/,
    ],
  ];
  it.each(cases)('%s: refused naming it; stripped: removed and listed', (_what, device, named) => {
    const offending = refused(vm(device));
    expect(offending.join('\n')).toMatch(named);
    const r = buildRestoredDomain(vm(device), { ...opts, stripHostDevices: true });
    expect(r.removed).toEqual(offending);
    for (const p of pathsOf(parseDomainTree(r.xml))) expect(allowed(p)).toBe(true);
  });

  it('names every offending element at once, and nothing when the definition is clean', () => {
    const all = cases.map((c) => c[1]).join('');
    expect(refused(vm(all)).length).toBeGreaterThanOrEqual(cases.length);
    expect(buildRestoredDomain(vm(''), opts).removed).toEqual([]);
  });

  it.each([
    [
      'the QEMU namespace, odd prefix',
      vm('', undefined, ` xmlns:zz9='http://libvirt.org/schemas/domain/qemu/1.0'`).replace(
        '</devices>',
        '</devices><zz9:commandline><zz9:arg value="-chardev"/></zz9:commandline>',
      ),
      /xmlns:zz9.*binds the QEMU namespace[\s\S]*<zz9:commandline>/,
    ],
    [
      'a default namespace redeclared on an element',
      vm(`<commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'><arg value='-x'/></commandline>`),
      /devices\/<commandline>: QEMU command-line passthrough/,
    ],
    ['a prefixed attribute', vm(`<memballoon model='none' q:x='1' xmlns:q='urn:x'/>`), /<memballoon q:x="1">/],
    [
      'a comment inside an element hiding nothing',
      vm(`<serial type='pipe'><!-- <source path='/ok'/> --><source path='/etc/passwd'/></serial>`),
      /<serial type="pipe"> \(source path="\/etc\/passwd"\)/,
    ],
  ])('%s is refused', (_what, xml, named) => {
    let message = '';
    try {
      buildRestoredDomain(xml, opts);
    } catch (err) {
      message = err instanceof HostResourceError ? err.offending.join('\n') : (err as Error).message;
    }
    expect(message).toMatch(named);
  });

  it('refuses DOCTYPE and entity declarations outright, even with --strip-host-devices', () => {
    const doctype = `<!DOCTYPE domain [<!ENTITY p "/etc/passwd">]>${vm(`<serial type='file'><source path='&p;'/></serial>`)}`;
    expect(() => buildRestoredDomain(doctype, { ...opts, stripHostDevices: true })).toThrow(DomainXmlError);
    expect(() => buildRestoredDomain(doctype, { ...opts, stripHostDevices: true })).toThrow(/DOCTYPE/);
    expect(() => buildRestoredDomain(vm(`<serial type='file'><source path='&undeclared;'/></serial>`), opts)).toThrow(
      /undeclared entity/,
    );
  });

  it('relocates by the decoded value: entities, CDATA and comments do not keep a host path', () => {
    const xml = vm(
      `<serial type='file'><source path='&#47;etc&#x2F;passwd'/><target port='0'/></serial>` +
        `<console type='file'><source path='&#47;etc&#x2F;passwd'/><target type='serial' port='0'/></console>` +
        `<serial type='unix'><source mode='bind' path='/srv/a/..'/><log file='&#x2F;root/.ssh/authorized_keys'/><target port='1'/></serial>` +
        `<channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/vm.org.qemu.guest_agent.0'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
      `<os><type arch='x86_64'>hvm</type><kernel><![CDATA[/srv/boot/../../etc/vmlinuz]]></kernel><nvram>/var/lib/libvirt/qemu/nvram/vm<!-- x -->_VARS.fd</nvram></os>`,
    );
    const offending = refused(xml);
    expect(offending).toEqual([
      expect.stringMatching(/os\/<kernel> "\/srv\/boot\/\.\.\/\.\.\/etc\/vmlinuz": boot file outside/),
    ]);
    const r = buildRestoredDomain(xml, { ...opts, stripHostDevices: true });
    expect(r.xml).toContain(`<source path='${IMAGES}/vm-dr.passwd'/>`);
    expect(r.xml.match(/vm-dr\.passwd'/g)).toHaveLength(2); // the serial and its console: one file
    expect(r.xml).toContain(`<log file='${IMAGES}/vm-dr.authorized_keys'/>`);
    expect(r.xml).toContain(`<source mode='bind' path='${IMAGES}/vm-dr.serial.sock'/>`); // a `..` base name
    expect(r.xml).toContain(`<nvram>${IMAGES}/vm-dr_VARS.fd</nvram>`);
    expect(r.xml).not.toContain('/var/lib/libvirt/qemu/channel'); // libvirt names the agent socket
    expect(r.xml).not.toContain('<emulator>'); // the target's default
    for (const p of pathsOf(parseDomainTree(r.xml))) expect(allowed(p)).toBe(true);
  });

  it('lists the files it moved into the image directory (the plan refuses existing ones: another VM may own them)', () => {
    const xml = vm(
      `<serial type='file'><source path='/x/other-vm.vda.qcow2'/><target port='0'/></serial>` +
        `<console type='file'><source path='/x/other-vm.vda.qcow2'/></console>` +
        `<serial type='file'><source path='/y/vm-dr.vda.r1.qcow2'/><target port='1'/></serial>`,
    );
    const r = buildRestoredDomain(xml, { ...opts, name: 'vm', identity: 'keep' });
    // Never the VM's own restored disk: a clash gets a suffix.
    expect(r.files).toEqual([`${IMAGES}/other-vm.vda.qcow2`, `${IMAGES}/vm-dr.vda.r1.qcow2.1`]);
  });

  it('keeps read-only boot files from the allowed directories, refuses the others and writable firmware', () => {
    const os = (inner: string) => `<os><type arch='x86_64'>hvm</type>${inner}</os>`;
    const ok = buildRestoredDomain(
      vm(
        '',
        os(
          `<loader readonly='yes' type='pflash'>/srv/boot/OVMF_CODE.fd</loader><nvram template='/srv/boot/./OVMF_VARS.fd'/><kernel>/srv/boot/k/vmlinuz</kernel><initrd>/srv/boot/k/initrd.img</initrd><cmdline>console=ttyS0 root=/dev/vda</cmdline>`,
        ),
      ),
      opts,
    );
    expect(ok.xml).toContain('<kernel>/srv/boot/k/vmlinuz</kernel>');
    expect(ok.xml).toContain(`<nvram template='/srv/boot/OVMF_VARS.fd'/>`);
    expect(refused(vm('', os(`<loader type='pflash'>/srv/boot/OVMF_CODE.fd</loader>`)))).toEqual([
      expect.stringMatching(/writable firmware file/),
    ]);
    expect(refused(vm('', os(`<initrd>/srv/bootx/initrd</initrd><nvram template='/etc/x'/>`)))).toHaveLength(2);
    expect(refused(vm('', os(`<kernel>/srv/boot/../etc/k</kernel>`)))).toHaveLength(1);
  });

  it('keeps what a restored VM needs: loopback VNC (fixed port made automatic), pty console, balloon, RNG', () => {
    const xml = vm(
      `<graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>` +
        `<console type='pty'><target type='serial' port='0'/></console><memballoon model='virtio'/>` +
        `<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>` +
        `<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/><protocol type='telnet'/><target port='2'/></serial>` +
        `<serial type='file'><source path='/x/vm.log'><seclabel model='dac' relabel='no'/></source><target port='3'/></serial>`,
    );
    const r = buildRestoredDomain(xml, opts);
    expect(r.removed).toEqual([]);
    expect(r.xml).toContain(`<graphics type='vnc' autoport='yes' listen='127.0.0.1'>`);
    expect(r.xml).toContain(`<backend model='random'>/dev/urandom</backend>`);
    expect(r.xml).toMatch(/^<domain type='kvm'><name>vm-dr<\/name><memory/);
    expect(r.xml).toContain(`<source path='${IMAGES}/vm-dr.log'/>`); // the old host's label is not kept
  });

  it('refuses a domain type other than kvm/qemu, malformed XML and a missing restored disk', () => {
    expect(() => restoredDomainXml(vm('').replace("type='kvm'", "type='xen'"), opts)).toThrow(/domain type "xen"/);
    expect(() => restoredDomainXml('<domain type="kvm"><name>x</name>', opts)).toThrow(DomainXmlError);
    expect(() => restoredDomainXml(vm('').replace("dev='vda'", "dev='vdz'"), opts)).toThrow(/vda not found/);
  });
});

describe('property: no stored definition yields a host path outside the image directory', () => {
  const segment = fc.oneof(
    fc.constantFrom(
      '..',
      '.',
      '',
      'etc',
      'passwd',
      'vm',
      'vm..',
      '&#47;',
      '&#x2F;',
      '&amp;#47;',
      '%2F',
      'é',
      '\u2215',
      '..\\',
    ),
    fc.stringMatching(/^[a-z0-9._-]{1,8}$/),
    fc.string({ maxLength: 4, unit: 'binary' }).map((s) => s.replace(/[<>&'"\0]/g, '')),
  );
  const path = fc
    .tuple(
      fc.constantFrom('/', '', '//', '/srv/boot/', IMAGES + '/'),
      fc.array(fc.tuple(segment, fc.constantFrom('/', '/../', '//')), { maxLength: 6 }),
    )
    .map(([head, segs]) => head + segs.map(([seg, sep]) => seg + sep).join(''));
  const device = fc.oneof(
    path.map((p) => `<serial type='file'><source path='${p}'/><target port='0'/></serial>`),
    path.map((p) => `<console type='file'><source path='${p}'/></console>`),
    path.map((p) => `<serial type='unix'><source mode='bind' path='${p}'/><log file='${p}'/></serial>`),
    path.map((p) => `<channel type='unix'><source mode='bind' path='${p}'/><target type='virtio' name='x'/></channel>`),
    path.map((p) => `<serial type='pipe'><source path='${p}'/></serial>`),
    path.map((p) => `<filesystem type='mount'><source dir='${p}'/><target dir='x'/></filesystem>`),
    path.map((p) => `<disk type='file' device='cdrom'><source file='${p}'/><target dev='sdb'/></disk>`),
    path.map((p) => `<graphics type='spice'><listen type='socket' socket='${p}'/></graphics>`),
    path.map((p) => `<interface type='network'><source network='n'/><rom file='${p}'/></interface>`),
    path.map((p) => `<rng model='virtio'><backend model='random'>${p}</backend></rng>`),
    path.map((p) => `<memballoon model='none'><stats period='${p}'/></memballoon>`),
    fc.constantFrom(
      `<hostdev mode='subsystem' type='usb'/>`,
      `<redirdev bus='usb' type='tcp'/>`,
      `<input type='tablet' bus='usb'/>`,
    ),
  );
  const osPart = fc.oneof(
    path.map((p) => `<kernel>${p}</kernel>`),
    path.map((p) => `<initrd><![CDATA[${p}]]></initrd>`),
    path.map((p) => `<loader readonly='yes'>${p}</loader>`),
    path.map((p) => `<nvram template='${p}'>${p}</nvram>`),
  );

  it('every path in the result lies in the image directory (or is an allowed boot file); refusals name something', () => {
    fc.assert(
      fc.property(
        fc.array(device, { maxLength: 5 }),
        fc.array(osPart, { maxLength: 3 }),
        fc.constantFrom('vm', 'a', '..', 'v.m'),
        (devices, os, name) => {
          const xml = vm(devices.join(''), `<os><type arch='x86_64'>hvm</type>${os.join('')}</os>`);
          const o = { ...opts, name, sourceName: 'vm', stripHostDevices: true };
          let built;
          try {
            built = buildRestoredDomain(xml, o);
          } catch (err) {
            // Only malformed input (e.g. a random `&` sequence) may fail with stripping on, never silently.
            expect(err).toBeInstanceOf(DomainXmlError);
            return;
          }
          for (const p of pathsOf(parseDomainTree(built.xml))) {
            if (!allowed(p)) throw new Error(`${p} escapes (from ${xml})`);
          }
          // Without stripping: refused exactly when something was removed.
          let refusedList: string[] = [];
          try {
            buildRestoredDomain(xml, { ...o, stripHostDevices: false });
          } catch (err) {
            if (err instanceof HostResourceError) refusedList = err.offending;
            else throw err;
          }
          expect(refusedList).toEqual(built.removed);
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('connecting endpoints: only to what another VM of the same restore listens on', () => {
  // What the other VM of the restore ("peer") listens on.
  const PEER = vm(
    `<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4600'/><target port='0'/></serial>` +
      `<channel type='udp'><source mode='bind' host='127.0.0.1' service='4601'/><target type='virtio' name='u'/></channel>` +
      `<interface type='server'><source address='127.0.0.1' port='4700'/></interface>` +
      `<interface type='udp'><source address='127.0.0.1' port='4711'><local address='127.0.0.1' port='4710'/></source></interface>`,
  ).replace('<name>vm</name>', '<name>peer</name>');
  const group = (self: string) =>
    restoreEndpoints([
      { name: 'vm', xml: self },
      { name: 'peer', xml: PEER },
    ]);
  const build = (devices: string, o: Partial<RestoreXmlOptions> = {}) =>
    buildRestoredDomain(vm(devices), { ...opts, restoreEndpoints: group(vm(devices)), ...o });
  const refusedIn = (devices: string, o: Partial<RestoreXmlOptions> = {}) =>
    refused(vm(devices), { restoreEndpoints: group(vm(devices)), ...o });

  const hostServices: [string, string, RegExp][] = [
    [
      "serial tcp connecting to the recovery host's Temporal frontend",
      `<serial type='tcp'><source mode='connect' host='127.0.0.1' service='7233'/><target port='1'/></serial>`,
      /<serial type="tcp">.*connecting to tcp 127\.0\.0\.1:7233, which no other VM of this restore listens on/,
    ],
    [
      'console tcp without a mode (connect is the default)',
      `<console type='tcp'><source host='localhost' service='5432'/></console>`,
      /<console type="tcp">.*connecting to tcp localhost:5432/,
    ],
    [
      'channel udp sending to a host port',
      `<channel type='udp'><source mode='bind' host='127.0.0.1' service='4800'/><source mode='connect' host='::1' service='9100'/><target type='virtio' name='x'/></channel>`,
      /<channel type="udp">.*connecting to udp ::1:9100/,
    ],
    [
      'parallel tcp to a loopback alias',
      `<parallel type='tcp'><source mode='connect' host='127.0.0.53' service='53'/></parallel>`,
      /connecting to tcp 127\.0\.0\.53:53/,
    ],
    [
      'socket-link client to a host port',
      `<interface type='client'><source address='127.0.0.1' port='7233'/></interface>`,
      /<interface type="client">.*socket link connecting to tcp 127\.0\.0\.1:7233/,
    ],
    [
      'UDP socket link whose remote side is a host port',
      `<interface type='udp'><source address='127.0.0.1' port='8125'><local address='127.0.0.1' port='4900'/></source></interface>`,
      /<interface type="udp">.*connecting to udp 127\.0\.0\.1:8125/,
    ],
    [
      'a chardev connecting to a socket link of the peer (clones remap only links: it would reach the old port)',
      `<serial type='tcp'><source mode='connect' host='127.0.0.1' service='4700'/></serial>`,
      /connecting to tcp 127\.0\.0\.1:4700/,
    ],
    [
      'the right port on another loopback address',
      `<interface type='client'><source address='127.0.0.2' port='4700'/></interface>`,
      /connecting to tcp 127\.0\.0\.2:4700/,
    ],
    [
      'UDP to a TCP listener',
      `<interface type='udp'><source address='127.0.0.1' port='4700'><local address='127.0.0.1' port='4901'/></source></interface>`,
      /connecting to udp 127\.0\.0\.1:4700/,
    ],
    [
      'multicast',
      `<interface type='mcast'><source address='230.0.0.1' port='5558'/></interface>`,
      /<interface type="mcast">.*multicast socket link/,
    ],
  ];
  it.each(hostServices)('%s: refused naming it; stripped: removed and listed', (_what, device, named) => {
    const offending = refusedIn(device);
    expect(offending).toHaveLength(1);
    expect(offending[0]).toMatch(named);
    const r = build(device, { stripHostDevices: true });
    expect(r.removed).toEqual(offending);
    expect(socketEndpoints('vm', parseDomainTree(r.xml)).filter((e) => e.role === 'connect')).toEqual([]);
  });

  it("keeps connections to what another VM of the restore listens on, and refuses a VM's own listener", () => {
    const served =
      `<serial type='tcp'><source mode='connect' host='127.0.0.1' service='4600'/><target port='1'/></serial>` +
      `<channel type='udp'><source mode='bind' host='127.0.0.1' service='4602'/><source mode='connect' host='127.0.0.1' service='4601'/><target type='virtio' name='u'/></channel>` +
      `<interface type='client'><source address='127.0.0.1' port='4700'/></interface>` +
      `<interface type='udp'><source address='127.0.0.1' port='4710'><local address='127.0.0.1' port='4711'/></source></interface>`;
    const r = build(served);
    expect(r.removed).toEqual([]);
    expect(socketEndpoints('vm', parseDomainTree(r.xml)).filter((e) => e.role === 'connect')).toHaveLength(4);
    // The same definitions restored without the peer: every connection would reach the recovery host.
    expect(refused(vm(served), { restoreEndpoints: restoreEndpoints([{ name: 'vm', xml: vm(served) }]) })).toHaveLength(
      4,
    );
    // A VM connecting to its own listener is not "another VM of the restore".
    const own =
      `<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4444'/></serial>` +
      `<serial type='tcp'><source mode='connect' host='127.0.0.1' service='4444'/></serial>`;
    expect(refusedIn(own)).toEqual([expect.stringMatching(/connecting to tcp 127\.0\.0\.1:4444/)]);
  });

  it('a listener of the peer on a non-loopback address serves nobody (and is refused in its own build)', () => {
    const peer = PEER.replace(`address='127.0.0.1' port='4700'`, `address='10.0.0.5' port='4700'`);
    const device = `<interface type='client'><source address='10.0.0.5' port='4700'/></interface>`;
    const endpoints = restoreEndpoints([
      { name: 'vm', xml: vm(device) },
      { name: 'peer', xml: peer },
    ]);
    expect(refused(vm(device), { restoreEndpoints: endpoints }).join()).toMatch(/connecting to tcp 10\.0\.0\.5:4700/);
    expect(refused(peer, { sourceName: 'peer', name: 'peer', restoreEndpoints: endpoints }).join()).toMatch(
      /<interface type="server">.*non-loopback/,
    );
  });
});

describe('property: no restored VM connects to an endpoint the restore itself does not serve', () => {
  const address = fc.constantFrom('127.0.0.1', '127.0.0.2', 'localhost', '::1', '[::1]', '10.0.0.1', '0.0.0.0', '');
  const port = fc.constantFrom('4000', '4001', '04001', '4002', '7233');
  const mode = fc.constantFrom('bind', 'connect', '');
  const modeAttr = (m: string) => (m ? ` mode='${m}'` : '');
  const endpoint = fc.oneof(
    fc
      .tuple(
        fc.constantFrom('serial', 'console', 'parallel', 'channel'),
        fc.constantFrom('tcp', 'udp'),
        mode,
        address,
        port,
      )
      .map(
        ([el, t, m, a, p]) =>
          `<${el} type='${t}'><source${modeAttr(m)} host='${a}' service='${p}'/><target type='virtio' name='n'/></${el}>`,
      ),
    fc
      .tuple(address, port, address, port)
      .map(
        ([a, p, la, lp]) =>
          `<channel type='udp'><source mode='bind' host='${la}' service='${lp}'/><source mode='connect' host='${a}' service='${p}'/><target type='virtio' name='n'/></channel>`,
      ),
    fc
      .tuple(fc.constantFrom('server', 'client', 'mcast'), address, port)
      .map(([t, a, p]) => `<interface type='${t}'><source address='${a}' port='${p}'/></interface>`),
    fc
      .tuple(address, port, address, port)
      .map(
        ([a, p, la, lp]) =>
          `<interface type='udp'><source address='${a}' port='${p}'><local address='${la}' port='${lp}'/></source></interface>`,
      ),
  );
  const ports = { '4000': 5000, '4001': 5001, '4002': 5002, '7233': 8233 };

  it('every connecting endpoint left reaches a loopback listener of another VM of the restore, after the remap', () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(endpoint, { maxLength: 4 }), { minLength: 1, maxLength: 3 }),
        fc.boolean(),
        (vms, asClone) => {
          const stored = vms.map((devices, i) => ({
            name: `v${i}`,
            xml: vm(devices.join('')).replace('<name>vm</name>', `<name>v${i}</name>`),
          }));
          const endpoints = restoreEndpoints(stored);
          const built = stored.map((v) => {
            const o = {
              ...opts,
              sourceName: v.name,
              name: asClone ? `${v.name}-c` : v.name,
              identity: asClone ? ('new' as const) : ('keep' as const),
              restoreEndpoints: endpoints,
              stripHostDevices: true,
              ...(asClone ? { socketPorts: ports } : {}),
            };
            const r = buildRestoredDomain(v.xml, o);
            // Without stripping: refused exactly when something was removed.
            let refusedList: string[] = [];
            try {
              buildRestoredDomain(v.xml, { ...o, stripHostDevices: false });
            } catch (err) {
              if (err instanceof HostResourceError) refusedList = err.offending;
              else throw err;
            }
            expect(refusedList).toEqual(r.removed);
            return socketEndpoints(v.name, parseDomainTree(r.xml));
          });
          const out = built.flat();
          for (const e of out) {
            if (e.role === 'listen') {
              expect(['127.0.0.1', '127.0.0.2', 'localhost', '::1']).toContain(e.address);
              continue;
            }
            const peer = out.find(
              (l) =>
                l.role === 'listen' &&
                l.vm !== e.vm &&
                l.kind === e.kind &&
                l.proto === e.proto &&
                l.address === e.address &&
                l.port === e.port,
            );
            if (!peer)
              throw new Error(
                `${e.vm} connects to ${e.proto} ${e.address}:${e.port}, not served (${JSON.stringify(vms)})`,
              );
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

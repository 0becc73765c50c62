import { diskNamesFile, parseDomainXml, retargetDiskSource, serialOutputs } from '../../hypervisor/domain-xml';
import { DomainXmlError, parseDomainTree } from '../../hypervisor/domain-tree';

describe('parseDomainXml', () => {
  it('reads a disk whose backing chain is hundreds of layers deep (one nested <backingStore> per layer)', () => {
    const depth = 300;
    let chain = '<backingStore/>';
    for (let i = depth - 1; i >= 0; i--) {
      chain = `<backingStore type='file'><format type='qcow2'/><source file='/img/l${i}.qcow2'/>${chain}</backingStore>`;
    }
    const xml =
      `<domain type='kvm'><name>deep</name><devices><disk type='file' device='disk'>` +
      `<driver name='qemu' type='qcow2'/><source file='/img/top.qcow2'/>${chain}<target dev='vda' bus='virtio'/>` +
      `</disk></devices></domain>`;
    const { disks } = parseDomainXml(xml);
    expect(disks).toEqual([expect.objectContaining({ target: 'vda', source: '/img/top.qcow2', format: 'qcow2' })]);
  });
});

describe('retargetDiskSource / diskNamesFile on the parsed tree', () => {
  const chain = (depth: number) => {
    let c = '<backingStore/>';
    for (let i = depth - 1; i >= 0; i--)
      c = `<backingStore type='file'><format type='qcow2'/><source file='/img/l${i}.qcow2'/>${c}</backingStore>`;
    return c;
  };
  const domain = (depth: number, extra = '') =>
    `<domain type='kvm'><name>deep</name><devices>${extra}<disk type='file' device='disk'>` +
    `<driver name='qemu' type='qcow2'/><source file='/img/top &amp; co.qcow2'/>${chain(depth)}` +
    `<target dev='vda' bus='virtio'/></disk></devices></domain>`;

  it('points a disk at another file and drops its whole chain, however deep', () => {
    for (const depth of [3, 300, 1000]) {
      const out = retargetDiskSource(domain(depth), 'vda', '/img/top & co.qcow2', '/img/l0.qcow2');
      expect(out).not.toContain('backingStore');
      expect(parseDomainXml(out).disks[0].source).toBe('/img/l0.qcow2');
    }
  });

  it('reads elements, not text: a commented-out disk of the same target is not the disk', () => {
    const decoy = `<!-- <disk type='file'><source file='/img/top &amp; co.qcow2'/><target dev='vda'/></disk> -->`;
    const out = retargetDiskSource(domain(2, decoy), 'vda', '/img/top & co.qcow2', '/img/new.qcow2');
    expect(parseDomainXml(out).disks.map((d) => d.source)).toEqual(['/img/new.qcow2']);
    expect(() => retargetDiskSource(domain(2), 'vdb', '/x', '/y')).toThrow(/disk vdb not found/);
    expect(() => retargetDiskSource(domain(2), 'vda', '/img/other.qcow2', '/y')).toThrow(/not on \/img\/other/);
  });

  it('finds a file anywhere in a disk chain (the commit wait), by its decoded name', () => {
    expect(diskNamesFile(domain(300), 'vda', '/img/l299.qcow2')).toBe(true);
    expect(diskNamesFile(domain(3), 'vda', '/img/top & co.qcow2')).toBe(true);
    expect(diskNamesFile(domain(3), 'vda', '/img/l7.qcow2')).toBe(false);
    expect(diskNamesFile(domain(3), 'vdb', '/img/l0.qcow2')).toBe(false);
  });
});

describe('serialOutputs (what a drill reads a guest console from)', () => {
  it('reads serial and console devices of type file/unix, decoded; not comments, not other devices', () => {
    const xml =
      `<domain type='kvm'><name>v</name><devices>` +
      `<!-- <serial type='file'><source path='/old/ttyS9.log'/></serial> -->` +
      `<serial type='file'><source path='/var/log/v &amp; w.log'/><target port='0'/></serial>` +
      `<console type='unix'><source mode='bind' path="/run/v's.sock"/></console>` +
      `<serial type='pty'/><channel type='unix'><source mode='bind' path='/run/agent'/></channel>` +
      `<serial type='file'/></devices></domain>`;
    expect(serialOutputs(xml)).toEqual([{ file: '/var/log/v & w.log' }, { socket: "/run/v's.sock" }]);
  });
});

describe('nesting beyond the bound', () => {
  it('is a DomainXmlError (bad input), not a stack overflow', () => {
    let c = '<backingStore/>';
    for (let i = 0; i < 5000; i++) c = `<backingStore type='file'><source file='/l${i}'/>${c}</backingStore>`;
    const xml = `<domain type='kvm'><name>d</name><devices><disk type='file'><source file='/top'/>${c}<target dev='vda'/></disk></devices></domain>`;
    expect(() => parseDomainTree(xml)).toThrow(DomainXmlError);
  });
});

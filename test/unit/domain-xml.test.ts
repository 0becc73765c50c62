import { parseDomainXml } from '../../hypervisor/domain-xml';

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

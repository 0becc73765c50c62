import { METADATA_NAMESPACE } from '../../common/names';
import { cloneDomainXml } from '../../hypervisor/clone-xml';
import { parseDomainTree, serializeDomainTree } from '../../hypervisor/domain-tree';
import { parseDomainXml } from '../../hypervisor/domain-xml';

const domain = (devices: string, head = '', top = '') =>
  `<domain type='kvm'${top}><name>web</name><uuid>0b8e5a8e-1111-2222-3333-444455556666</uuid>${head}<devices>` +
  `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/web.qcow2'/>` +
  `<backingStore type='file'><format type='qcow2'/><source file='/img/base.qcow2'/><backingStore/></backingStore>` +
  `<target dev='vda' bus='virtio'/></disk>${devices}</devices></domain>`;
const clone = (xml: string) =>
  cloneDomainXml(xml, {
    sourceName: 'web',
    cloneName: 'web-c',
    disks: [{ target: 'vda', file: '/img/web-c.vda.qcow2' }],
    metadataNamespace: METADATA_NAMESPACE,
  });

/** Local clones: built on the parsed tree (domain-tree.ts), not by rewriting the XML text. */
describe('cloneDomainXml on the parsed tree', () => {
  it('reads elements, not text: a commented-out disk is not a disk, a MAC with a closing tag goes too', () => {
    const xml = domain(
      `<!-- old data disk: <disk type='file' device='disk'><source file='/img/old.raw'/><target dev='vdb'/></disk> -->` +
        `<interface type='network'><mac address='52:54:00:aa:bb:cc'></mac><source network='default'/></interface>`,
    );
    const { xml: out, droppedDisks } = clone(xml);
    expect(droppedDisks).toEqual([]);
    expect(out).not.toContain('52:54:00:aa:bb:cc');
    expect(out).not.toContain('<uuid>');
    expect(parseDomainXml(out).disks.map((d) => [d.target, d.source, d.format])).toEqual([
      ['vda', '/img/web-c.vda.qcow2', 'qcow2'],
    ]);
  });

  it("drops only groupsnap's metadata element, however deep its content nests", () => {
    const xml = domain(
      '',
      `<metadata><gs:catalog xmlns:gs='${METADATA_NAMESPACE}'><gs:catalog><gs:catalog/></gs:catalog></gs:catalog>` +
        `<app:owner xmlns:app='urn:app'>ops</app:owner></metadata>`,
    );
    const out = clone(xml).xml;
    expect(out).toContain(`<metadata><app:owner xmlns:app='urn:app'>ops</app:owner></metadata>`);
    expect(out).not.toContain('catalog');
    expect(() => parseDomainTree(out)).not.toThrow();
  });

  it('keeps what the same host may keep (QEMU passthrough, other devices) and writes canonical XML', () => {
    const xml = domain(
      `<serial type='file'><source path="/var/log/vms/web &amp; co.log"/><target port='0'/></serial>` +
        `<graphics type="spice" autoport="no" port="5930"><channel name="main" mode="secure"/></graphics>`,
      '',
      ` xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'`,
    ).replace('</devices>', `</devices><qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline>`);
    const out = clone(xml).xml;
    expect(out).toContain(`<qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline>`);
    expect(out).toContain(`<source path='/var/log/vms/web-c &amp; co.log'/>`);
    expect(out).toContain(`<graphics type='spice' autoport='yes'><channel name='main' mode='secure'/></graphics>`);
    expect(out).toMatch(/^<domain type='kvm' xmlns:qemu='[^']+'><name>web-c<\/name><devices>/);
    expect(serializeDomainTree(parseDomainTree(out))).toBe(out);
  });
});

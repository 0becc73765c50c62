import { normalizeRepoRestoreInput, parseNetworkMapping } from '../../common/repo-restore';
import { normalizeDrillInput } from '../../common/drill';
import { METADATA_NAMESPACE } from '../../common/names';
import { BadInputError } from '../../common/failures';
import {
  buildRestoredDomain,
  DomainXmlError,
  HostResourceError,
  restoredDomainXml,
} from '../../hypervisor/restore-xml';
import { diskNbdBacking, withoutNbdBacking } from '../../hypervisor/domain-xml';
import { restoreCommand } from '../../cli/restore-command';

const SOURCE = `<domain type='kvm'>
  <name>db-1</name>
  <uuid>0b8e5a8e-1111-2222-3333-444455556666</uuid>
  <metadata><gs:vm xmlns:gs='${METADATA_NAMESPACE}'><gs:tags>shop</gs:tags></gs:vm></metadata>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/srv/a/db-1-vda.gs-1.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/srv/a/db-1-vda.qcow2'/><backingStore/></backingStore>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/srv/a/install.iso'/>
      <target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='prod'/><model type='virtio'/></interface>
    <interface type='bridge'><mac address='52:54:00:aa:bb:02'/><source bridge='br-prod'/><model type='virtio'/></interface>
    <serial type='file'><source path='/srv/a/db-1.console.log'/><target port='0'/></serial>
  </devices>
</domain>`;

const base = {
  sourceName: 'db-1',
  imagesDir: '/var/lib/b/images',
  disks: [{ target: 'vda', file: '/var/lib/b/images/db-1-dr.vda.r1.raw', format: 'raw' as const }],
  metadataNamespace: METADATA_NAMESPACE,
  restoreEndpoints: [],
  // SOURCE's CD-ROM is a file of the old host: refused unless stripped (see the first case).
  stripHostDevices: true,
};

describe("an instant restore: an overlay over groupsnap's own NBD export, nothing else", () => {
  const instant = (nbd: { socket: string; exportName: string }, format: 'qcow2' | 'raw' = 'qcow2') => ({
    ...base,
    name: 'db-1-dr',
    identity: 'new' as const,
    disks: [{ target: 'vda', file: '/var/lib/b/images/db-1-dr.vda.r1.qcow2', format, nbd }],
    nbdSocketDir: '/var/lib/gs/state/instant',
  });
  const ok = { socket: '/var/lib/gs/state/instant/r1/ab12.sock', exportName: 'disk-ab12' };

  it('the overlay gets exactly that raw NBD backing and the stop error policies; the stored chain is dropped', () => {
    const xml = restoredDomainXml(SOURCE, instant(ok));
    expect(xml).toContain("<driver name='qemu' type='qcow2' error_policy='stop' rerror_policy='stop'/>");
    expect(xml).toContain(
      "<backingStore type='network'><format type='raw'/><source protocol='nbd' name='disk-ab12'>" +
        "<host transport='unix' socket='/var/lib/gs/state/instant/r1/ab12.sock'/></source><backingStore/></backingStore>",
    );
    expect(xml).not.toContain('/srv/a/db-1-vda.qcow2');
    expect(diskNbdBacking(xml, 'vda')).toEqual(ok);
    // Once hydrated: no NBD backing, no stop policies; libvirt probes the (now standalone) image.
    const clean = withoutNbdBacking(xml);
    expect(clean).not.toContain('backingStore');
    expect(clean).not.toContain('error_policy');
    expect(diskNbdBacking(clean, 'vda')).toBeUndefined();
  });

  it('refuses any other socket, an unsafe export name, or a raw overlay', () => {
    for (const nbd of [
      { socket: '/run/other.sock', exportName: 'disk-1' },
      { socket: '/var/lib/gs/state/instant/../../x.sock', exportName: 'disk-1' },
      { socket: '/var/lib/gs/state/instantx/a.sock', exportName: 'disk-1' },
      { socket: ok.socket, exportName: 'a b' },
    ])
      expect(() => restoredDomainXml(SOURCE, instant(nbd))).toThrow(DomainXmlError);
    expect(() => restoredDomainXml(SOURCE, instant(ok, 'raw'))).toThrow(DomainXmlError);
    expect(() => restoredDomainXml(SOURCE, { ...instant(ok), nbdSocketDir: undefined })).toThrow(DomainXmlError);
  });

  it('an NBD backing in the stored definition is dropped like any stored chain', () => {
    const stored = SOURCE.replace(
      "<backingStore type='file'><format type='qcow2'/><source file='/srv/a/db-1-vda.qcow2'/><backingStore/></backingStore>",
      "<backingStore type='network'><format type='raw'/><source protocol='nbd' name='x'><host transport='unix' socket='/run/evil.sock'/></source></backingStore>",
    );
    const xml = restoredDomainXml(stored, { ...base, name: 'db-1-dr', identity: 'new' });
    expect(xml).not.toContain('evil');
    expect(xml).not.toContain('backingStore');
  });
});

describe('the domain XML of a VM restored on another host', () => {
  it("refuses the old host's CD-ROM unless asked to strip it, then lists it as removed", () => {
    expect(() =>
      restoredDomainXml(SOURCE, { ...base, stripHostDevices: false, name: 'db-1-dr', identity: 'new' }),
    ).toThrow(HostResourceError);
    const r = buildRestoredDomain(SOURCE, { ...base, name: 'db-1-dr', identity: 'new' });
    expect(r.removed).toEqual([
      expect.stringMatching(/^devices\/<disk .*device="cdrom".*install\.iso.*not a restored file/),
    ]);
  });

  it('a clone: new name, no UUID or MACs, restored disk without backing chain, host paths moved, networks renamed', () => {
    const xml = restoredDomainXml(SOURCE, {
      ...base,
      name: 'db-1-dr',
      identity: 'new',
      networkMap: { prod: 'dr-net', 'br-prod': 'br-dr' },
      virtType: 'qemu',
    });
    expect(xml).toContain('<name>db-1-dr</name>');
    expect(xml).not.toContain('<uuid>');
    expect(xml).not.toContain('52:54:00');
    expect(xml).not.toContain('backingStore');
    expect(xml).toMatch(
      /<driver name='qemu' type='raw'\/>\s*<source file='\/var\/lib\/b\/images\/db-1-dr.vda.r1.raw'\/>/,
    );
    expect(xml).not.toContain('/srv/a/'); // the CD-ROM of the old host is left out, the console log moved
    expect(xml).toContain("<source path='/var/lib/b/images/db-1-dr.console.log'/>");
    expect(xml).toContain("<source network='dr-net'/>");
    expect(xml).toContain("<source bridge='br-dr'/>");
    expect(xml).not.toContain('gs:tags');
    expect(xml).toMatch(/^<domain type='qemu'>/);
  });

  it('as the original: same name, UUID and MACs; without network when asked', () => {
    const xml = restoredDomainXml(SOURCE, { ...base, name: 'db-1', identity: 'keep', noNetwork: false });
    expect(xml).toContain('<name>db-1</name><uuid>0b8e5a8e-1111-2222-3333-444455556666</uuid>');
    expect(xml).toContain("<interface type='network'><mac address='52:54:00:aa:bb:01'/>");
    expect(xml).toContain("<interface type='bridge'><mac address='52:54:00:aa:bb:02'/>");
    expect(xml).toContain("<source network='prod'/>");
    expect(xml).toMatch(/^<domain type='kvm'>/);
    const isolated = restoredDomainXml(SOURCE, { ...base, name: 'db-1', identity: 'keep', noNetwork: true });
    expect(isolated).not.toContain('<interface');
  });
});

describe('restore and drill requests', () => {
  it('are checked before anything runs, every problem at once', () => {
    expect(() =>
      normalizeRepoRestoreInput({
        group: 'g/..',
        snapshotId: 's',
        repo: 'http://x',
        toHost: 'b',
        mode: 'original',
        suffix: '-x',
        format: 'vmdk' as 'raw',
      }),
    ).toThrow(/group .*repository URL.*suffix applies to clones only.*disk format/);
    expect(normalizeRepoRestoreInput({ group: 'g', snapshotId: 's', repo: 'file:///r', toHost: 'b' })).toMatchObject({
      mode: 'clone',
      format: 'qcow2',
      start: true,
      noNetwork: false,
    });
    expect(parseNetworkMapping('prod=dr')).toEqual(['prod', 'dr']);
    expect(() => parseNetworkMapping('prod')).toThrow(BadInputError);
    expect(() =>
      normalizeDrillInput({ group: 'g', repo: 'file:///r', toHost: 'b', serialLine: '(', check: 'true', timeoutMs: 5 }),
    ).toThrow(/one readiness check.*serial line pattern.*timeout/);
  });
});

describe('--strip-host-devices', () => {
  it('is checked like the other flags: a boolean, and only for a restore from the repository', () => {
    const req = { group: 'g', snapshotId: 's', repo: 'file:///r', toHost: 'b' };
    expect(normalizeRepoRestoreInput(req).stripHostDevices).toBe(false);
    expect(normalizeRepoRestoreInput({ ...req, stripHostDevices: true }).stripHostDevices).toBe(true);
    expect(() => normalizeRepoRestoreInput({ ...req, stripHostDevices: 'yes' as unknown as boolean })).toThrow(
      /stripHostDevices must be true or false/,
    );
    expect(() =>
      normalizeDrillInput({ group: 'g', repo: 'file:///r', toHost: 'b', stripHostDevices: 1 as unknown as boolean }),
    ).toThrow(/stripHostDevices must be true or false/);
    // A restore on the VMs' own host (snapshots, not the repository) has no stored definition to strip.
    expect(() => restoreCommand('g', 's', { asClone: true, stripHostDevices: true })).toThrow(
      /--strip-host-devices applies to a restore from the repository \(--from-repo\) only/,
    );
  });
});

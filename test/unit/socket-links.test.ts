import { createSocket } from 'node:dgram';
import { chooseSocketPorts } from '../../activities/socket-ports';
import { METADATA_NAMESPACE } from '../../common/names';
import { mergeSocketPortChoices } from '../../common/socket-ports';
import { cloneDomainXml } from '../../hypervisor/clone-xml';
import { restoreEndpoints, restoredDomainXml } from '../../hypervisor/restore-xml';
import { remapSocketLinkPorts, socketLinkPorts } from '../../hypervisor/socket-links';

const vm = (name: string, interfaces: string) => `<domain type='kvm'>
  <name>${name}</name>
  <uuid>0b8e5a8e-1111-2222-3333-44445555666${name.length}</uuid>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/${name}.qcow2'/>
      <target dev='vda' bus='virtio'/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='prod' port='99'/><model type='virtio'/></interface>
    ${interfaces}
  </devices>
</domain>`;

// A UDP link pair: a sends to b's local port and b to a's.
const UDP_A = `<interface type='udp'><mac address='52:54:00:00:00:0a'/><source address='127.0.0.1' port='40002'>
      <local address='127.0.0.1' port='40001'/></source><model type='virtio'/></interface>`;
const UDP_B = `<interface type='udp'><mac address='52:54:00:00:00:0b'/><source address='127.0.0.1' port='40001'>
      <local address='127.0.0.1' port='40002'/></source><model type='virtio'/></interface>`;
// A TCP link: a listens, b connects.
const TCP_SERVER = `<interface type='server'><mac address='52:54:00:00:01:0a'/><source address='169.254.7.1' port='40010'/><model type='e1000'/></interface>`;
const TCP_CLIENT = `<interface type="client"><mac address="52:54:00:00:01:0b"/><source address="169.254.7.1" port="40010"/><model type="e1000"/></interface>`;

const clone = (xml: string, name: string, socketPorts?: Record<string, number>) =>
  cloneDomainXml(xml, {
    sourceName: name,
    cloneName: `${name}-c`,
    disks: [{ target: 'vda', file: `/srv/${name}-c.vda.qcow2` }],
    metadataNamespace: METADATA_NAMESPACE,
    ...(socketPorts ? { socketPorts } : {}),
  }).xml;

const ports = (xml: string) => socketLinkPorts(xml).map((l) => `${l.type}:${l.role}:${l.address}:${l.port}`);

describe('socket-link interfaces of clones', () => {
  const map = { '40001': 51001, '40002': 51002, '40010': 51010 };

  it('finds every endpoint with its role (bind or connect), not other interfaces', () => {
    expect(ports(vm('a', UDP_A + TCP_SERVER))).toEqual([
      'udp:connect:127.0.0.1:40002',
      'udp:bind:127.0.0.1:40001',
      'server:bind:169.254.7.1:40010',
    ]);
    expect(ports(vm('b', TCP_CLIENT))).toEqual(['client:connect:169.254.7.1:40010']);
    expect(socketLinkPorts(vm('c', ''))).toEqual([]);
  });

  it('reads interfaces, not text: a commented-out link has no ports, a closing </interface> in a comment ends none', () => {
    const xml = vm('a', `<!-- was: ${TCP_SERVER} --><!-- </interface> -->${UDP_A}`);
    expect(ports(xml)).toEqual(['udp:connect:127.0.0.1:40002', 'udp:bind:127.0.0.1:40001']);
    expect(ports(remapSocketLinkPorts(xml, { '40001': 51001, '40002': 51002 }))).toEqual([
      'udp:connect:127.0.0.1:51002',
      'udp:bind:127.0.0.1:51001',
    ]);
  });

  it('a UDP pair: both clones move to the new ports and still send to each other', () => {
    const a = clone(vm('a', UDP_A), 'a', map);
    const b = clone(vm('b', UDP_B), 'b', map);
    expect(ports(a)).toEqual(['udp:connect:127.0.0.1:51002', 'udp:bind:127.0.0.1:51001']);
    expect(ports(b)).toEqual(['udp:connect:127.0.0.1:51001', 'udp:bind:127.0.0.1:51002']);
    // Addresses, the other interface (its port attribute too) and the rest are unchanged.
    expect(a).toContain("<source network='prod' port='99'/>");
    expect(a).not.toMatch(/port='4000[12]'/);
  });

  it('a TCP server/client pair: the client clone connects to the server clone, not to the original', () => {
    const s = clone(vm('s', TCP_SERVER), 's', map);
    const c = clone(vm('c', TCP_CLIENT), 'c', map);
    expect(ports(s)).toEqual(['server:bind:169.254.7.1:51010']);
    expect(ports(c)).toEqual(['client:connect:169.254.7.1:51010']);
    expect(c).toContain("<source address='169.254.7.1' port='51010'/>"); // serialized canonically
  });

  it('a VM with both kinds of links gets every port mapped', () => {
    const both = clone(vm('a', UDP_A + TCP_SERVER), 'a', map);
    expect(ports(both)).toEqual([
      'udp:connect:127.0.0.1:51002',
      'udp:bind:127.0.0.1:51001',
      'server:bind:169.254.7.1:51010',
    ]);
  });

  it('refuses a map that misses a port (the clone would keep the original port)', () => {
    expect(() => clone(vm('a', UDP_A), 'a', { '40001': 51001 })).toThrow(/40002/);
    expect(() => remapSocketLinkPorts(vm('a', TCP_SERVER), {})).toThrow(/40010/);
  });

  it('without a map (before the fix) a clone keeps the ports', () => {
    expect(ports(clone(vm('a', UDP_A), 'a'))).toEqual(['udp:connect:127.0.0.1:40002', 'udp:bind:127.0.0.1:40001']);
  });

  it('restored from the repository: clones get the map, a restore as the original keeps its ports', () => {
    const base = {
      sourceName: 'a',
      imagesDir: '/var/lib/b/images',
      disks: [{ target: 'vda', file: '/var/lib/b/images/a-dr.vda.raw', format: 'raw' as const }],
      metadataNamespace: METADATA_NAMESPACE,
      socketPorts: map,
      // a's UDP link sends to b's local port: b is restored with it.
      restoreEndpoints: restoreEndpoints([
        { name: 'a', xml: vm('a', UDP_A) },
        { name: 'b', xml: vm('b', UDP_B) },
      ]),
    };
    // A restored VM's socket links stay on loopback: a listener on another address of the recovery host is refused.
    expect(() => restoredDomainXml(vm('a', TCP_SERVER), { ...base, name: 'a-dr', identity: 'new' })).toThrow(
      /<interface type="server">.*socket link to a non-loopback address/,
    );
    const LOOPBACK_SERVER = TCP_SERVER.replace('169.254.7.1', '127.0.0.1');
    const asClone = restoredDomainXml(vm('a', UDP_A + LOOPBACK_SERVER), { ...base, name: 'a-dr', identity: 'new' });
    expect(ports(asClone)).toEqual([
      'udp:connect:127.0.0.1:51002',
      'udp:bind:127.0.0.1:51001',
      'server:bind:127.0.0.1:51010',
    ]);
    const original = vm('a', UDP_A + LOOPBACK_SERVER);
    const asOriginal = restoredDomainXml(original, { ...base, name: 'a', identity: 'keep' });
    expect(ports(asOriginal)).toEqual(ports(original));
    // A drill drops every interface, socket links included: an isolated clone talks to nothing.
    const drill = restoredDomainXml(original, { ...base, name: 'a-drill', identity: 'new', noNetwork: true });
    expect(asOriginal).toContain('<interface');
    expect(drill).not.toContain('<interface');
    // Without b in the restore, a's link would send to whatever listens on the recovery host's port 40002.
    expect(() => restoredDomainXml(original, { ...base, name: 'a-dr', identity: 'new', restoreEndpoints: [] })).toThrow(
      /<interface type="udp">.*connecting to udp 127\.0\.0\.1:40002, which no other VM of this restore/,
    );
  });
});

describe('choosing the fresh ports', () => {
  it('maps every port of the group once, to distinct ports other than the originals, free on this host', async () => {
    // A port held by someone else on this host is never chosen... (bound here for the length of the test)
    const held = createSocket('udp4');
    await new Promise<void>((r) => held.bind(0, '127.0.0.1', () => r()));
    const heldPort = held.address().port;
    try {
      const choice = await chooseSocketPorts(
        [vm('a', UDP_A + TCP_SERVER), vm('b', UDP_B), vm('c', TCP_CLIENT)],
        [heldPort],
      );
      // Bound somewhere in the group: 40001 (a), 40002 (b), 40010 (a's server); nothing is only connected to.
      expect(Object.keys(choice.bound).sort()).toEqual(['40001', '40002', '40010']);
      expect(choice.connected).toEqual({});
      const fresh = Object.values(choice.bound);
      expect(new Set(fresh).size).toBe(3);
      for (const p of fresh) expect([40001, 40002, 40010, heldPort]).not.toContain(p);
      // The map applies to every clone: the pair stays paired.
      const map = mergeSocketPortChoices([choice]);
      const a = socketLinkPorts(clone(vm('a', UDP_A), 'a', map));
      const b = socketLinkPorts(clone(vm('b', UDP_B), 'b', map));
      expect(a.find((l) => l.role === 'bind')!.port).toBe(b.find((l) => l.role === 'connect')!.port);
      expect(b.find((l) => l.role === 'bind')!.port).toBe(a.find((l) => l.role === 'connect')!.port);
    } finally {
      held.close();
    }
  });

  it('a port only connected to (peer outside the group) still gets a fresh port; hosts merge, binders first', async () => {
    const host2 = await chooseSocketPorts([vm('c', TCP_CLIENT)]);
    expect(Object.keys(host2.connected)).toEqual(['40010']);
    const host1 = await chooseSocketPorts([vm('s', TCP_SERVER)], Object.values(host2.connected));
    expect(host1.bound['40010']).not.toBe(host2.connected['40010']);
    // The port the server's host chose wins over the client host's guess, whatever the order of the hosts.
    expect(mergeSocketPortChoices([host2, host1])['40010']).toBe(host1.bound['40010']);
    expect(mergeSocketPortChoices([host1, host2])['40010']).toBe(host1.bound['40010']);
  });
});

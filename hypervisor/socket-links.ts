/**
 * QEMU socket-link network interfaces (`<interface type='udp'|'server'|'client'|'mcast'>`): VMs wired to each other
 * through host ports. A clone keeping its source's ports would bind the original's ports (UDP: the last bind takes
 * the original's traffic; TCP server: cannot listen) or connect to the original's peer, so clones of one restore
 * get every such port mapped to a fresh one, the same map for every clone: clone pairs stay paired.
 */
import { child, elements, parseDomainTree, serializeDomainTree, type XmlElement } from './domain-tree';

/** Interface types whose endpoints are host ports. */
export const SOCKET_LINK_TYPES = ['udp', 'server', 'client', 'mcast'] as const;
export type SocketLinkType = (typeof SOCKET_LINK_TYPES)[number];

export interface SocketLinkPort {
  type: SocketLinkType;
  /** `bind`: the VM's QEMU binds this port on its host (UDP local, TCP server, multicast); `connect`: it sends to or connects to it. */
  role: 'bind' | 'connect';
  address?: string;
  port: number;
}

/** The socket-link interfaces of a parsed domain, with their type. */
function linkInterfaces(dom: XmlElement): { type: SocketLinkType; e: XmlElement }[] {
  const devices = child(dom, 'devices');
  return (devices ? elements(devices) : [])
    .filter((e) => e.name === 'interface' && (SOCKET_LINK_TYPES as readonly string[]).includes(e.attrs.type ?? ''))
    .map((e) => ({ type: e.attrs.type as SocketLinkType, e }));
}

/** A link's endpoint elements: each `<source>`, then its `<local>` (document order). */
const endpointsOf = (e: XmlElement): XmlElement[] =>
  elements(e)
    .filter((c) => c.name === 'source')
    .flatMap((s) => [s, ...elements(s).filter((c) => c.name === 'local')]);

/** Every socket-link endpoint of a parsed domain, in document order. */
export function socketLinkPortsOf(dom: XmlElement): SocketLinkPort[] {
  const out: SocketLinkPort[] = [];
  for (const { type, e } of linkInterfaces(dom))
    for (const end of endpointsOf(e)) {
      const port = end.attrs.port;
      if (port === undefined) continue;
      const role = end.name === 'local' || type === 'server' || type === 'mcast' ? 'bind' : 'connect';
      out.push({ type, role, address: end.attrs.address, port: Number(port) });
    }
  return out;
}

/**
 * Every socket-link endpoint of a domain XML, in document order.
 * @throws DomainXmlError when the XML is not a well-formed domain
 */
export function socketLinkPorts(xml: string): SocketLinkPort[] {
  return socketLinkPortsOf(parseDomainTree(xml));
}

/**
 * Replaces every socket-link port of a parsed domain through `map` (old port -> new port; addresses unchanged).
 * @throws Error when a socket-link port has no entry in `map` (the clone would keep its source's port)
 */
export function remapSocketLinkTree(dom: XmlElement, map: Record<string, number>): void {
  const missing = new Set<number>();
  for (const { e } of linkInterfaces(dom))
    for (const end of endpointsOf(e)) {
      const port = end.attrs.port;
      if (port === undefined || !/^\s*\d+\s*$/.test(port)) continue;
      const to = map[String(Number(port))];
      if (to === undefined) missing.add(Number(port));
      else end.attrs.port = String(to);
    }
  if (missing.size > 0) throw new Error(`no new port for socket-link port(s) ${[...missing].join(', ')}`);
}

/**
 * The domain XML with every socket-link port replaced through `map` (old port -> new port; addresses unchanged),
 * serialized canonically (domain-tree.ts).
 * @throws Error when a socket-link port has no entry in `map` (the clone would keep its source's port)
 */
export function remapSocketLinkPorts(xml: string, map: Record<string, number>): string {
  const dom = parseDomainTree(xml);
  remapSocketLinkTree(dom, map);
  return serializeDomainTree(dom);
}

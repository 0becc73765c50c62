/**
 * QEMU socket-link network interfaces (`<interface type='udp'|'server'|'client'|'mcast'>`): VMs wired to each other
 * through host ports. A clone keeping its source's ports would bind the original's ports (UDP: the last bind takes
 * the original's traffic; TCP server: cannot listen) or connect to the original's peer, so clones of one restore
 * get every such port mapped to a fresh one, the same map for every clone: clone pairs stay paired.
 */

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

const INTERFACE = /<interface\b([^>]*)>([\s\S]*?)<\/interface>/g;

function attr(tag: string, name: string): string | undefined {
  return new RegExp(`\\s${name}=(['"])(.*?)\\1`).exec(tag)?.[2];
}

function linkType(attrs: string): SocketLinkType | undefined {
  const t = attr(attrs, 'type');
  return (SOCKET_LINK_TYPES as readonly string[]).includes(t ?? '') ? (t as SocketLinkType) : undefined;
}

/** Every socket-link endpoint of a domain XML, in document order. */
export function socketLinkPorts(xml: string): SocketLinkPort[] {
  const out: SocketLinkPort[] = [];
  for (const m of xml.matchAll(INTERFACE)) {
    const type = linkType(m[1]);
    if (!type) continue;
    for (const tag of m[2].match(/<(?:source|local)\b[^>]*>/g) ?? []) {
      const port = attr(tag, 'port');
      if (port === undefined) continue;
      const local = tag.startsWith('<local');
      const role = local || type === 'server' || type === 'mcast' ? 'bind' : 'connect';
      out.push({ type, role, address: attr(tag, 'address'), port: Number(port) });
    }
  }
  return out;
}

/**
 * The domain XML with every socket-link port replaced through `map` (old port -> new port; addresses unchanged).
 * @throws Error when a socket-link port has no entry in `map` (the clone would keep its source's port)
 */
export function remapSocketLinkPorts(xml: string, map: Record<string, number>): string {
  const missing = new Set<number>();
  const out = xml.replace(INTERFACE, (iface, attrs: string) => {
    if (!linkType(attrs)) return iface;
    return iface.replace(
      /(<(?:source|local)\b[^>]*?\sport=)(['"])(\d+)\2/g,
      (m, head: string, q: string, p: string) => {
        const to = map[String(Number(p))];
        if (to === undefined) {
          missing.add(Number(p));
          return m;
        }
        return `${head}${q}${to}${q}`;
      },
    );
  });
  if (missing.size > 0) throw new Error(`no new port for socket-link port(s) ${[...missing].join(', ')}`);
  return out;
}

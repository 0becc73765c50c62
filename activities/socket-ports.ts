import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import type { SocketPortChoice } from '../common/socket-ports';
import { socketLinkPorts } from '../hypervisor/socket-links';

function tcpFree(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(undefined));
    srv.listen(port, () => {
      const addr = srv.address();
      const got = typeof addr === 'object' && addr ? addr.port : undefined;
      srv.close(() => resolve(got));
    });
  });
}

function udpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    s.unref();
    s.once('error', () => {
      s.close();
      resolve(false);
    });
    s.bind(port, () => s.close(() => resolve(true)));
  });
}

/** A port free for both TCP and UDP on every address of this host, not in `avoid`. */
export async function freeSocketPort(avoid: Set<number>): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const port = await tcpFree(0);
    if (port !== undefined && !avoid.has(port) && (await udpFree(port))) return port;
  }
  throw new Error('no free port found for a socket link');
}

/**
 * Chooses fresh ports for every socket-link port in `xmls` (the domain XMLs of one host's VMs of a restore), none
 * of them in `avoid` (ports already chosen on other hosts of the same restore) nor equal to an original port.
 */
export async function chooseSocketPorts(xmls: string[], avoid: number[] = []): Promise<SocketPortChoice> {
  const links = xmls.flatMap((x) => socketLinkPorts(x));
  const taken = new Set([...avoid, ...links.map((l) => l.port)]);
  const choice: SocketPortChoice = { bound: {}, connected: {} };
  const chosen = new Map<number, number>();
  const pick = async (port: number) => {
    let to = chosen.get(port);
    if (to === undefined) {
      to = await freeSocketPort(taken);
      taken.add(to);
      chosen.set(port, to);
    }
    return to;
  };
  for (const l of links.filter((x) => x.role === 'bind')) choice.bound[String(l.port)] = await pick(l.port);
  for (const l of links.filter((x) => x.role === 'connect'))
    if (!(String(l.port) in choice.bound)) choice.connected[String(l.port)] = await pick(l.port);
  return choice;
}

import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** Asks the kernel for a free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A free TCP port on 127.0.0.1 in `[min, max]`, tried at random. For servers that cannot take the kernel's
 * ephemeral ports (32768 and up here), e.g. Temporal's membership ports, which its SQL schema stores as smallint.
 * @throws Error when 200 random tries found none free.
 */
export async function freePortIn(min: number, max: number): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = min + Math.floor(Math.random() * (max - min + 1));
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.unref();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free port on 127.0.0.1 between ${min} and ${max}`);
}

/** The kernel's range of local ports for outgoing connections (`net.ipv4.ip_local_port_range`). */
export function ephemeralPortRange(): [number, number] {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high) && low > 1024 && low <= high) return [low, high];
  } catch {
    // Not Linux, or no /proc: the range Linux uses by default.
  }
  return [32768, 60999];
}

/**
 * A free TCP port on 127.0.0.1 below the kernel's ephemeral range, for a server a test kills and starts again on
 * the same port: while it is down, clients retrying their connection to it could otherwise be given that very port
 * as their own local port (a TCP self-connect to 127.0.0.1:p from 127.0.0.1:p), and the restart would fail with
 * "address already in use".
 */
export function restartablePort(): Promise<number> {
  const [low] = ephemeralPortRange();
  return freePortIn(Math.max(1025, low - 12_000), low - 1);
}

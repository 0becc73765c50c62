import { connect, createServer, type Socket } from 'node:net';

/** A TCP load balancer on 127.0.0.1, as several Temporal frontends sit behind one address in production. */
export interface TcpBalancer {
  /** host:port clients connect to. */
  readonly address: string;
  readonly port: number;
  /** Connections handed to each backend so far. */
  readonly connections: Record<string, number>;
  /** Stops listening and closes every proxied connection. */
  close(): Promise<void>;
}

/**
 * Round-robin TCP balancer over `backends()` (`host:port` each, read on every new connection): a new connection
 * goes to the next backend that accepts it within `connectTimeoutMs`, skipping dead ones, as an L4 load balancer
 * with health checks would. A connection whose backend dies is closed, so the client reconnects and lands on a
 * live one. gRPC over HTTP/2 passes through unchanged.
 */
export async function startTcpBalancer(
  backends: () => string[],
  options: { port?: number; connectTimeoutMs?: number } = {},
): Promise<TcpBalancer> {
  const sockets = new Set<Socket>();
  const connections: Record<string, number> = {};
  let next = 0;
  const track = (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  };
  const dial = (target: string): Promise<Socket | undefined> =>
    new Promise((resolve) => {
      const i = target.lastIndexOf(':');
      const upstream = connect({ host: target.slice(0, i), port: Number(target.slice(i + 1)) });
      const timer = setTimeout(() => upstream.destroy(), options.connectTimeoutMs ?? 1000);
      upstream.once('connect', () => {
        clearTimeout(timer);
        resolve(upstream);
      });
      upstream.once('error', () => undefined);
      upstream.once('close', () => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
  const server = createServer((client) => {
    track(client);
    client.pause();
    client.on('error', () => client.destroy());
    void (async () => {
      const list = backends();
      for (let tries = 0; tries < list.length && !client.destroyed; tries++) {
        const target = list[next++ % list.length];
        const upstream = await dial(target);
        if (!upstream) continue;
        if (client.destroyed) {
          upstream.destroy();
          return;
        }
        track(upstream);
        connections[target] = (connections[target] ?? 0) + 1;
        upstream.on('error', () => upstream.destroy());
        upstream.once('close', () => client.destroy());
        client.once('close', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        return;
      }
      client.destroy();
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    address: `127.0.0.1:${port}`,
    port,
    connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

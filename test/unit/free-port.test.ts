import { createServer } from 'node:net';
import { ephemeralPortRange, restartablePort } from '../../dev/free-port';

// A server a test restarts on the same port must not take a port the kernel also hands out as the local port of
// outgoing connections: a client retrying against the dead server could self-connect on it and keep the port.
test('a restartable port is free and below the kernel ephemeral range', async () => {
  const [low, high] = ephemeralPortRange();
  expect(low).toBeGreaterThan(1024);
  expect(high).toBeGreaterThanOrEqual(low);
  for (let i = 0; i < 20; i++) {
    const port = await restartablePort();
    expect(port).toBeLessThan(low);
    expect(port).toBeGreaterThan(1024);
    await new Promise<void>((resolve, reject) => {
      const srv = createServer();
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve()));
    });
  }
});

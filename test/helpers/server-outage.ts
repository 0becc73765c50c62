import { readFileSync } from 'node:fs';
import { startDevServer, type DevServer } from '../../dev/temporal-dev-server';

/** The real server process under the dev server's watchdog shell (its only child). */
export function serverPid(server: DevServer): number {
  return Number(readFileSync(`/proc/${server.pid}/task/${server.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
}

/**
 * A dev server that a test SIGKILLs and starts again on the same port and SQLite file (the port from
 * `restartablePort()`, so no client's retries can take it while the server is down).
 */
export class RestartableServer {
  private servers: DevServer[] = [];

  private constructor(
    private server: DevServer,
    private readonly port: number,
    private readonly dbFilename: string,
  ) {
    this.servers.push(server);
  }

  static async start(port: number, dbFilename: string): Promise<RestartableServer> {
    return new RestartableServer(await startDevServer({ port, dbFilename }), port, dbFilename);
  }

  get address(): string {
    return this.server.address;
  }

  /** SIGKILLs the server now; the returned promise starts it again `downMs` later and resolves once it answers. */
  outage(downMs = 2000): Promise<void> {
    process.kill(serverPid(this.server), 'SIGKILL');
    return (async () => {
      await new Promise((r) => setTimeout(r, downMs));
      this.server = await startDevServer({ port: this.port, dbFilename: this.dbFilename });
      this.servers.push(this.server);
    })();
  }

  async stop(): Promise<void> {
    for (const s of this.servers) await s.stop().catch(() => undefined);
  }
}

/**
 * The disaster-recovery test set-up shared by the restore and drill tests: two real hypervisors (dev/hypervisor-hosts),
 * a Temporal dev server the hosts reach over their veth pairs, groupsnap's workflows in this process, a repository
 * in a directory with its key (readable by host B's user), and each host's worker process holding that key.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { Repository } from '../../backup/repository';
import { HypervisorHosts, type HostWorker } from '../../dev/hypervisor-hosts';
import { S3Server } from '../../dev/s3-server';
import { startDevServer, type DevServer } from '../../dev/temporal-dev-server';
import { groupsnapWorkflowsPlugin } from '../../worker/plugins';
import { uniqueId } from './temporal';
import { workflowBundle } from './workers';

export interface DrFixture {
  hosts: HypervisorHosts;
  server: DevServer;
  /** The server's address as the hosts' namespaces reach it. */
  hostAddress: string;
  client: Client;
  hostA: string;
  hostB: string;
  workerA: HostWorker;
  workerB: HostWorker;
  dir: string;
  url: string;
  /** With `s3: true`: versitygw holding the repository (the hosts reach it over their veth pairs). */
  s3?: S3Server;
  key: Buffer;
  keyFile: string;
  /** Opens the repository (the caller closes it). */
  repo(): Promise<Repository>;
  close(): Promise<void>;
}

export async function startDrFixture(
  options: { workerArgsB?: string[]; namespaces?: string[]; s3?: boolean } = {},
): Promise<DrFixture> {
  const hostA = uniqueId('hva');
  const hostB = uniqueId('hvb');
  const closers: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((err: unknown) => console.error(err));
  };
  try {
    const hosts = await HypervisorHosts.create({ ids: [hostA, hostB] });
    closers.push(() => hosts.destroy());
    const server = await startDevServer({ namespaces: options.namespaces ?? [] });
    closers.push(() => server.stop());
    const hostAddress = await hosts.expose(server.address);
    const connection = await Connection.connect({ address: server.address });
    closers.push(() => connection.close());
    const client = new Client({ connection });
    const wfConnection = await NativeConnection.connect({ address: server.address });
    closers.push(() => wfConnection.close());
    const plugin = groupsnapWorkflowsPlugin({ workflowBundle: await workflowBundle() });
    const worker = await Worker.create({ connection: wfConnection, taskQueue: plugin.taskQueue, plugins: [plugin] });
    const running = worker.run();
    closers.push(async () => {
      worker.shutdown();
      await running;
    });

    const dir = await mkdtemp(join(tmpdir(), 'gs-dr-'));
    closers.push(() => rm(dir, { recursive: true, force: true }));
    chmodSync(dir, 0o755);
    let url = pathToFileURL(join(dir, 'repo')).href;
    let env: Record<string, string> | undefined;
    let s3: S3Server | undefined;
    if (options.s3) {
      // The repository on versitygw (127.0.0.1), reached by the hosts through their veth pairs.
      s3 = await S3Server.start();
      closers.push(() => s3!.stop());
      await s3.createBucket('groupsnap-dr');
      Object.assign(process.env, s3.env);
      env = { ...s3.env, AWS_ENDPOINT_URL_S3: `http://${await hosts.expose(`127.0.0.1:${s3.port}`)}` };
      url = 's3://groupsnap-dr/repo';
    }
    const key = randomBytes(32);
    const keyFile = join(dir, 'repo.key');
    writeFileSync(keyFile, key.toString('base64') + '\n', { mode: 0o600 });
    hosts.giveToHost(hostB, keyFile);
    (await Repository.init(url, key, { chunkSize: 1024 * 1024 })).close();

    const workerA = await hosts.worker(hostA, hostAddress, { args: ['--key-file', keyFile], ...(env ? { env } : {}) });
    const workerB = await hosts.worker(hostB, hostAddress, {
      args: ['--key-file', keyFile, ...(options.workerArgsB ?? [])],
      ...(env ? { env } : {}),
    });
    closers.push(async () => {
      await workerA.stop();
      await workerB.stop();
    });
    await Promise.all([workerA.start(client), workerB.start(client)]);
    return {
      hosts,
      server,
      hostAddress,
      client,
      hostA,
      hostB,
      workerA,
      workerB,
      dir,
      url,
      ...(s3 ? { s3 } : {}),
      key,
      keyFile,
      repo: () => Repository.open(url, key),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

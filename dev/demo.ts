import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { Command } from 'commander';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import * as libvirt from '@groupsnap/libvirt';
import {
  createGroup,
  listGroupSnapshots,
  restoreGroup,
  snapshotGroup,
  snapshotNamedGroup,
  tagVm,
  waitForHostWorkers,
} from '../client';
import { formatResult } from '../cli/format';
import { parseInteger } from '../cli/parse';
import { defaults } from '../common/config';
import { LibvirtHypervisor } from '../hypervisor/libvirt-hypervisor';
import { ensureGuard, runningGuardPid } from '../worker/guard';
import { createGroupsnapWorker } from '../worker/worker';
import { freePort } from './free-port';
import { startDevServer } from './temporal-dev-server';
import { REPO_ROOT } from './tools';
import { VmFleet, virtType } from './vms';
import { backupTour } from './demo-backup';

/** `preferred` when it is free (so the usual localhost:7233 / :8233 work), else any free port. */
async function portOr(preferred: number): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(freePort()));
    srv.listen(preferred, '127.0.0.1', () => srv.close(() => resolve(preferred)));
  });
}

/**
 * `npm start`, the README's main job (dev tooling, not part of the shipped `groupsnap` command): a local Temporal dev server (UI on), a worker for this host, demo VMs, and one real
 * group snapshot of them, printed. Everything is torn down at the end (after Ctrl-C with --keep).
 */
export async function demo(opts: { vms: number; keep?: boolean }): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const keep = opts.keep ?? Boolean(process.stdout.isTTY);
  const port = await portOr(7233);
  const uiPort = await portOr(port + 1000);
  console.log(`Starting a Temporal dev server on 127.0.0.1:${port} ...`);
  const server = await startDevServer({ ui: true, port, uiPort });
  const stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-demo-state-'));
  const libvirtUri = defaults.libvirtUri();
  const hostId = defaults.hostId();
  let fleet: VmFleet | undefined;
  let hypervisor: LibvirtHypervisor | undefined;
  let worker: Awaited<ReturnType<typeof createGroupsnapWorker>> | undefined;
  let running: Promise<void> | undefined;
  try {
    console.log(`Temporal UI: ${server.uiUrl}`);
    console.log(`Creating ${opts.vms} demo VMs (no OS, 2 qcow2 disks each, ${virtType()}) ...`);
    fleet = await VmFleet.create({ prefix: 'groupsnap-demo', count: opts.vms, uri: libvirtUri });
    hypervisor = await LibvirtHypervisor.open(libvirtUri);
    // The guard is the shipped CLI's `guard` command, as `groupsnap worker` starts it.
    ensureGuard(stateDir, libvirtUri, join(REPO_ROOT, 'dist/cli/main.js'));
    const connectionOptions = { address: server.address };
    worker = await createGroupsnapWorker({
      connectionOptions,
      namespace: 'default',
      hostId,
      hypervisor,
      stateDir,
    });
    running = worker.run();
    const connection = await Connection.connect(connectionOptions);
    try {
      const client = new Client({ connection });
      console.log(`Taking a group snapshot of ${fleet.names.join(', ')} on host ${hostId} ...`);
      await waitForHostWorkers(client, [hostId]);
      const result = await snapshotGroup(client, {
        group: 'demo',
        vms: fleet.names.map((domain) => ({ domain, host: hostId })),
        label: 'demo',
      });
      console.log(formatResult(result));
      console.log(
        `\nSee it in the Temporal UI: ${server.uiUrl}/namespaces/default/workflows/${encodeURIComponent(result.workflowId)}`,
      );
      if (result.status !== 'completed') process.exitCode = 1;
      else await drTour(client, fleet.names, hostId);
    } finally {
      await connection.close();
    }
    if (keep) {
      console.log('\nServer, worker and VMs keep running; press Ctrl-C to clean up and exit.');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    }
  } finally {
    worker?.shutdown();
    await running?.catch(() => undefined);
    await hypervisor?.close().catch(() => undefined);
    if (fleet) await removeClones(fleet);
    await fleet?.destroy().catch((err) => console.error(`cleaning up demo VMs: ${(err as Error).message}`));
    await server.stop();
    stopGuard(stateDir);
    await rm(stateDir, { recursive: true, force: true });
  }
}

function stopGuard(stateDir: string): void {
  const pid = runningGuardPid(stateDir);
  if (pid) process.kill(pid, 'SIGTERM');
}

/** The DR side, briefly: tag the VMs, define a group by tag, snapshot it by name, list, restore as clones. */
async function drTour(client: Client, vms: string[], hostId: string): Promise<void> {
  console.log(`\nTagging the VMs 'demo-db' and defining group 'demo-db' by that tag ...`);
  for (const domain of vms) await tagVm(client, { domain, host: hostId }, { add: ['demo-db'] });
  await createGroup(client, { name: 'demo-db', selector: { tag: 'demo-db' } });
  const run = await snapshotNamedGroup(client, 'demo-db', { label: 'by-name' });
  console.log(
    `Snapshot of group demo-db by name: ${run.snapshot.snapshotId} ${run.snapshot.status}, ` +
      `members ${run.members.map((m) => m.domain).join(', ')}`,
  );
  const listed = await listGroupSnapshots(client, 'demo-db');
  console.log(`groupsnap snapshot list demo-db: ${listed.map((s) => s.snapshotId).join(', ')}`);
  const restored = await restoreGroup(client, {
    group: 'demo-db',
    snapshotId: run.snapshot.snapshotId,
    mode: 'clone',
    suffix: '-restored',
  });
  console.log(
    `Restored as clones (${restored.status}): ${restored.vms.map((v) => `${v.clone} ${v.state}`).join(', ')}`,
  );
  await backupTour(client, 'demo-db', run.snapshot.snapshotId);
}

/** Restore clones of the demo VMs (named after them) are not part of the fleet: remove them first. */
async function removeClones(fleet: VmFleet): Promise<void> {
  const all = await fleet.conn.listAllDomains().catch(() => []);
  for (const d of all) {
    if (fleet.names.includes(d.name) || !fleet.names.some((n) => d.name.startsWith(`${n}-`))) continue;
    try {
      const dom = await fleet.conn.lookupByName(d.name);
      await dom.destroy().catch(() => undefined);
      await dom
        .undefine(libvirt.UndefineFlags.SNAPSHOTS_METADATA | libvirt.UndefineFlags.KEEP_NVRAM)
        .catch(() => dom.undefine());
      dom.free();
    } catch (err) {
      console.error(`cleaning up clone ${d.name}: ${(err as Error).message}`);
    }
  }
}

if (require.main === module) {
  const program = new Command('npm start')
    .description('start a local Temporal dev server and worker, create demo VMs, take a group snapshot')
    .option('--vms <n>', 'number of demo VMs', parseInteger, 3)
    .option('--keep', 'keep the server, worker and VMs until Ctrl-C (default when run on a terminal)')
    .option('--no-keep', 'clean up and exit after the snapshot')
    .action(demo);
  program.parseAsync(process.argv).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { Hypervisor } from '../../hypervisor/hypervisor';
import { createGroupsnapWorker, type GroupsnapWorker } from '../../worker/worker';
import { Client, Connection } from '@temporalio/client';
import { waitForHostWorkers } from '../../client';
import { testServerAddress } from './temporal';

async function clientFor(address: string, namespace = 'default'): Promise<{ connection: Connection; client: Client }> {
  const connection = await Connection.connect({ address });
  return { connection, client: new Client({ connection, namespace }) };
}

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;

/** The workflow bundle, built once per test file. */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflowCode({ workflowsPath: require.resolve('../../workflows'), logger: quietLogger });
  return bundle;
}

const quietLogger = { trace() {}, debug() {}, info() {}, warn() {}, error: console.error, log() {} };

export interface RunningHosts {
  workers: GroupsnapWorker[];
  stateDirs: Record<string, string>;
  /** Stops one host's worker (its activities stop being served). */
  stopHost(hostId: string): Promise<void>;
  stop(): Promise<void>;
}

/**
 * In-process groupsnap workers against the test server, one per host id (the first also runs the workflows),
 * each with its own state dir, as on separate hypervisor hosts.
 */
export async function startHosts(
  hosts: { hostId: string; hypervisor: Hypervisor }[],
  options: { namespace?: string; workflows?: boolean; address?: string } = {},
): Promise<RunningHosts> {
  const workflowBundleCode = await workflowBundle();
  const stateDirs: Record<string, string> = {};
  const workers: GroupsnapWorker[] = [];
  const runs = new Map<string, Promise<void>>();
  for (const [i, h] of hosts.entries()) {
    stateDirs[h.hostId] = await mkdtemp(join(tmpdir(), `groupsnap-state-${h.hostId}-`));
    const worker = await createGroupsnapWorker({
      connectionOptions: { address: options.address ?? testServerAddress() },
      namespace: options.namespace ?? 'default',
      hostId: h.hostId,
      hypervisor: h.hypervisor,
      stateDir: stateDirs[h.hostId],
      workflows: options.workflows !== false && i === 0,
      workflowBundle: workflowBundleCode,
    });
    workers.push(worker);
    runs.set(h.hostId, worker.run());
  }
  // Return once every host's queue is polled, as a real deployment would be before snapshots are asked for.
  const { connection, client } = await clientFor(options.address ?? testServerAddress(), options.namespace);
  try {
    await waitForHostWorkers(
      client,
      hosts.map((h) => h.hostId),
    );
  } finally {
    await connection.close();
  }
  const stopHost = async (hostId: string) => {
    workers.find((w) => w.hostId === hostId)?.shutdown();
    await runs.get(hostId);
  };
  return {
    workers,
    stateDirs,
    stopHost,
    async stop() {
      for (const w of workers) w.shutdown();
      await Promise.all(runs.values());
      await Promise.all(Object.values(stateDirs).map((d) => rm(d, { recursive: true, force: true })));
    },
  };
}

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleWorkflowCode, NativeConnection, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { InstantServer } from '../../activities/repo-restore';
import type { Hypervisor } from '../../hypervisor/hypervisor';
import { groupsnapHostPlugin, groupsnapWorkflowsPlugin } from '../../worker/plugins';
import { createGroupsnapWorker } from '../../worker/worker';
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

/**
 * How the test's workers are built: `plain`, groupsnap's own worker (`createGroupsnapWorker`, as `groupsnap worker`
 * runs); `plugins`, plain SDK workers with groupsnap's two plugins, as in another Temporal application.
 */
export type Wiring = 'plain' | 'plugins';
export const WIRINGS: readonly Wiring[] = ['plain', 'plugins'];

export interface RunningHosts {
  workers: { hostId?: string; shutdown(): void }[];
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
  hosts: { hostId: string; hypervisor: Hypervisor; instantServer?: InstantServer }[],
  options: {
    namespace?: string;
    workflows?: boolean;
    address?: string;
    wiring?: Wiring;
    /** Run check commands of drills and recovery plans (`--allow-drill-checks`). */
    allowDrillChecks?: boolean;
  } = {},
): Promise<RunningHosts> {
  const workflowBundleCode = await workflowBundle();
  const address = options.address ?? testServerAddress();
  const namespace = options.namespace ?? 'default';
  const stateDirs: Record<string, string> = {};
  const workers: RunningHosts['workers'] = [];
  const runs = new Map<string, Promise<void>>();
  const native = options.wiring === 'plugins' ? await NativeConnection.connect({ address }) : undefined;
  for (const [i, h] of hosts.entries()) {
    stateDirs[h.hostId] = await mkdtemp(join(tmpdir(), `groupsnap-state-${h.hostId}-`));
    const workflows = options.workflows !== false && i === 0;
    if (native) {
      const plugin = groupsnapHostPlugin({ hostId: h.hostId, hypervisor: h.hypervisor, stateDir: stateDirs[h.hostId] });
      const worker = await Worker.create({
        connection: native,
        namespace,
        taskQueue: plugin.taskQueue,
        plugins: [plugin],
      });
      workers.push({ hostId: h.hostId, shutdown: () => worker.shutdown() });
      runs.set(h.hostId, worker.run());
      if (workflows) {
        const wf = groupsnapWorkflowsPlugin({ workflowBundle: workflowBundleCode });
        const wfWorker = await Worker.create({ connection: native, namespace, taskQueue: wf.taskQueue, plugins: [wf] });
        workers.push({ shutdown: () => wfWorker.shutdown() });
        runs.set('(workflows)', wfWorker.run());
      }
      continue;
    }
    const worker = await createGroupsnapWorker({
      connectionOptions: { address },
      namespace,
      hostId: h.hostId,
      hypervisor: h.hypervisor,
      stateDir: stateDirs[h.hostId],
      ...(h.instantServer ? { instantServer: h.instantServer } : {}),
      workflows,
      workflowBundle: workflowBundleCode,
      ...(options.allowDrillChecks ? { allowDrillChecks: true } : {}),
    });
    workers.push(worker);
    runs.set(h.hostId, worker.run());
  }
  // Return once every host's queue is polled, as a real deployment would be before snapshots are asked for.
  const { connection, client } = await clientFor(address, namespace);
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
      await native?.close();
      await Promise.all(Object.values(stateDirs).map((d) => rm(d, { recursive: true, force: true })));
    },
  };
}

import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type NativeConnectionOptions, type WorkerOptions } from '@temporalio/worker';
import { createControlActivities } from '../activities/control-activities';
import { createHost } from '../activities/host-activities';
import { HOST_REGISTRY_WORKFLOW_ID } from '../common/groups';
import { hostTaskQueue, WORKFLOW_TASK_QUEUE } from '../common/names';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { ensureSearchAttributes } from './search-attributes';

export interface GroupsnapWorkerOptions {
  /** Temporal connection settings, e.g. from `temporalSettings()`. */
  connectionOptions: NativeConnectionOptions;
  namespace: string;
  /** Host id: this worker serves the activities of VMs `<domain>@<hostId>`. */
  hostId: string;
  hypervisor: Hypervisor;
  /** Freeze journal and leases of this host. */
  stateDir: string;
  /** Also run the workflow worker on the shared queue. @default true */
  workflows?: boolean;
  /** A pre-built bundle (tests build one per suite); else the workflows are bundled at start. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  /** Check (and add) the search attributes at start. Needs a client connection. @default true */
  ensureSearchAttributes?: boolean;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

export interface GroupsnapWorker {
  readonly hostId: string;
  /** Runs until `shutdown()` or a fatal error. */
  run(): Promise<void>;
  shutdown(): void;
}

/**
 * A groupsnap worker for one hypervisor host: the host's activities on its own task queue and (by default) the
 * workflows on the shared queue. At start it finishes freezes a crashed predecessor left open.
 */
export async function createGroupsnapWorker(options: GroupsnapWorkerOptions): Promise<GroupsnapWorker> {
  const log = options.log ?? (() => {});
  const clientConnection = await Connection.connect(
    options.connectionOptions as Parameters<typeof Connection.connect>[0],
  );
  try {
    if (options.ensureSearchAttributes !== false) {
      const added = await ensureSearchAttributes(clientConnection, options.namespace);
      if (added.length) log('added search attributes', { namespace: options.namespace, added });
    }
    await registerHost(new Client({ connection: clientConnection, namespace: options.namespace }), options.hostId);
  } finally {
    await clientConnection.close();
  }
  const host = createHost({ hypervisor: options.hypervisor, hostId: options.hostId, stateDir: options.stateDir, log });
  const recovered = await host.recover();
  for (const r of recovered)
    log('resumed a VM left paused by an interrupted freeze', { domain: r.domain, snapshotId: r.snapshotId });

  const connection = await NativeConnection.connect(options.connectionOptions);
  const workers: Worker[] = [
    await Worker.create({
      connection,
      namespace: options.namespace,
      taskQueue: hostTaskQueue(options.hostId),
      activities: host.activities,
      // A group's VMs are paused in parallel: never queue them behind each other.
      maxConcurrentActivityTaskExecutions: 200,
    }),
  ];
  if (options.workflows !== false) {
    workers.push(
      await Worker.create({
        connection,
        namespace: options.namespace,
        taskQueue: WORKFLOW_TASK_QUEUE,
        activities: createControlActivities(),
        ...(options.workflowBundle
          ? { workflowBundle: options.workflowBundle }
          : { workflowsPath: require.resolve('../workflows') }),
      }),
    );
  }
  return {
    hostId: options.hostId,
    async run() {
      try {
        await Promise.all(workers.map((w) => w.run()));
      } finally {
        host.shutdown();
        await connection.close();
      }
    },
    shutdown() {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    },
  };
}

/**
 * Registers `hostId` in the namespace's host registry (starting the registry workflow if this is the first host), so
 * tag selectors and listings know to ask this host.
 */
export async function registerHost(client: Client, hostId: string): Promise<void> {
  await client.workflow.signalWithStart('hostRegistry', {
    workflowId: HOST_REGISTRY_WORKFLOW_ID,
    taskQueue: WORKFLOW_TASK_QUEUE,
    args: [{ hosts: [] }],
    signal: 'registerHost',
    signalArgs: [{ hostId, at: new Date().toISOString() }],
    staticSummary: 'groupsnap host registry',
  });
}

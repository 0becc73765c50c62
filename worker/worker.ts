import type { MetricMeter } from '@temporalio/common';
import { NativeConnection, Worker, type NativeConnectionOptions, type WorkerOptions } from '@temporalio/worker';
import type { InstantServer } from '../activities/repo-restore';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { groupsnapHostPlugin, groupsnapWorkflowsPlugin, registerHost } from './plugins';
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
  /** Where restored and cloned disks go on this host. @default defaultImagesDir(hypervisor.uri) */
  imagesDir?: string;
  /** The off-host repository's key file on this host. @default $GROUPSNAP_REPO_KEY_FILE */
  repoKeyFile?: string;
  /** Run DR drills' check commands on this host. @default false */
  allowDrillChecks?: boolean;
  /** More directories restored VMs may boot read-only files from (added to the firmware directories). */
  bootFileDirs?: string[];
  /** What serves instant restores' disks from the repository (NBD). @default groupsnap's serving process */
  instantServer?: InstantServer;
  /** Also run the workflow worker on the shared queue. @default true */
  workflows?: boolean;
  /** A pre-built bundle (tests build one per suite); else the workflows are bundled at start. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  /** Check (and add) the search attributes at start. @default true */
  ensureSearchAttributes?: boolean;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** Meter for groupsnap's host metrics. @default `Runtime.instance().metricMeter` (a no-op unless metrics are on) */
  metricMeter?: MetricMeter;
  /** Most snapshots this host takes at once in the `group-paused` order (1-64). @default 2 */
  snapshotsInFlight?: number;
}

export interface GroupsnapWorker {
  readonly hostId: string;
  /** Runs until `shutdown()` or a fatal error. */
  run(): Promise<void>;
  shutdown(): void;
}

/**
 * A groupsnap worker for one hypervisor host: the host's activities on its own task queue and (by default) the
 * workflows on the shared queue, each a plain `Worker` built from groupsnap's plugins (worker/plugins.ts), the same
 * ones an existing Temporal application adds to its own workers. Before it returns, the namespace has groupsnap's
 * search attributes, the host is registered, and the freezes a crashed predecessor left open are finished.
 */
export async function createGroupsnapWorker(options: GroupsnapWorkerOptions): Promise<GroupsnapWorker> {
  const log = options.log ?? (() => {});
  const connection = await NativeConnection.connect(options.connectionOptions);
  const workers: Worker[] = [];
  try {
    // Done here (not by the workflows plugin) so that a host-only worker checks them too.
    if (options.ensureSearchAttributes !== false) {
      const added = await ensureSearchAttributes(connection, options.namespace);
      if (added.length) log('added search attributes', { namespace: options.namespace, added });
    }
    const host = groupsnapHostPlugin({
      hostId: options.hostId,
      hypervisor: options.hypervisor,
      stateDir: options.stateDir,
      ...(options.imagesDir ? { imagesDir: options.imagesDir } : {}),
      ...(options.repoKeyFile ? { repoKeyFile: options.repoKeyFile } : {}),
      ...(options.allowDrillChecks ? { allowDrillChecks: true } : {}),
      ...(options.bootFileDirs?.length ? { bootFileDirs: options.bootFileDirs } : {}),
      ...(options.instantServer ? { instantServer: options.instantServer } : {}),
      log,
      ...(options.metricMeter ? { metricMeter: options.metricMeter } : {}),
      ...(options.snapshotsInFlight !== undefined ? { snapshotsInFlight: options.snapshotsInFlight } : {}),
    });
    workers.push(
      await Worker.create({ connection, namespace: options.namespace, taskQueue: host.taskQueue, plugins: [host] }),
    );
    if (options.workflows !== false) {
      const workflows = groupsnapWorkflowsPlugin({
        ensureSearchAttributes: false,
        log,
        ...(options.workflowBundle ? { workflowBundle: options.workflowBundle } : {}),
      });
      workers.push(
        await Worker.create({
          connection,
          namespace: options.namespace,
          taskQueue: workflows.taskQueue,
          plugins: [workflows],
        }),
      );
    }
  } catch (err) {
    await connection.close();
    throw err;
  }
  return {
    hostId: options.hostId,
    async run() {
      try {
        await Promise.all(workers.map((w) => w.run()));
      } finally {
        await connection.close();
      }
    },
    shutdown() {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    },
  };
}

export { registerHost };

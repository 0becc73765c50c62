/**
 * groupsnap as Temporal worker plugins, for adding groupsnap to an existing Temporal application:
 *
 *   const host = groupsnapHostPlugin({ hostId: 'hv-a', hypervisor, stateDir: '/var/lib/groupsnap/hv-a' });
 *   const workflows = groupsnapWorkflowsPlugin();
 *   await Promise.all([
 *     (await Worker.create({ connection, namespace, taskQueue: host.taskQueue, plugins: [host] })).run(),
 *     (await Worker.create({ connection, namespace, taskQueue: workflows.taskQueue, plugins: [workflows] })).run(),
 *   ]);
 *
 * `groupsnap worker` (createGroupsnapWorker in worker.ts) is built from the same two plugins.
 *
 * The only module that touches `@temporalio/plugin`, whose API is experimental in SDK 1.24: a change there is
 * absorbed here.
 */
import type { MetricMeter } from '@temporalio/common';
import { Client } from '@temporalio/client';
import { SimplePlugin } from '@temporalio/plugin';
import {
  NativeConnection,
  Runtime,
  type BundleOptions,
  type BundlerPlugin,
  type ReplayWorkerOptions,
  type Worker,
  type WorkerOptions,
  type WorkerPlugin,
  type WorkflowBundleOption,
} from '@temporalio/worker';
import { createControlActivities } from '../activities/control-activities';
import { createExportActivities } from '../activities/export-activities';
import { createHost } from '../activities/host-activities';
import { createDrillActivities } from '../activities/drill';
import { createRepoRestoreActivities, type InstantServer } from '../activities/repo-restore';
import { defaultImagesDir } from '../common/images-dir';
import { HOST_REGISTRY_WORKFLOW_ID } from '../common/groups';
import { HOST_ACTIVITY_SCHEMAS } from '../common/host-requests';
import { hostTaskQueue, WORKFLOW_TASK_QUEUE } from '../common/names';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { groupsnapNexusServiceHandler } from './nexus-handlers';
import { ensureSearchAttributes } from './search-attributes';
import { guardActivities } from './activity-door';

type Log = (message: string, fields?: Record<string, unknown>) => void;

/** Path of groupsnap's workflows, for a worker (or `bundleWorkflowCode`) that bundles them itself. */
export const GROUPSNAP_WORKFLOWS_PATH = require.resolve('../workflows');

/** How many activities a host worker runs at once by default: a group's VMs are paused in parallel. */
const HOST_MAX_CONCURRENT_ACTIVITIES = 200;

/**
 * Long polls a host worker keeps open on its queue by default (the SDK's default is 10). A host runs few activities,
 * each long: 2 polls take the next task at once, and 1,000 hosts stay within the server's 1,200 concurrent polls
 * per frontend (`frontend.namespaceCount`) with two frontends, where 10 each would need nine (docs/adr/0014).
 */
const HOST_ACTIVITY_POLLERS = 2;

export interface GroupsnapHostPluginOptions {
  /** This host's id: the worker serves the activities of VMs `<domain>@<hostId>`, on `groupsnap-host/<hostId>`. */
  hostId: string;
  hypervisor: Hypervisor;
  /** Freeze journal and leases of this host; must survive the worker process. */
  stateDir: string;
  /** Where restored and cloned disks go on this host. @default defaultImagesDir(hypervisor.uri) */
  imagesDir?: string;
  /** The off-host repository's key file on this host (exports, restores, drills). @default $GROUPSNAP_REPO_KEY_FILE */
  repoKeyFile?: string;
  /** Run DR drills' check commands on this host (`sh -c`, as the worker's user). @default false */
  allowDrillChecks?: boolean;
  /**
   * More directories restored VMs may boot read-only files from (kernel, initrd, firmware), added to
   * `DEFAULT_BOOT_FILE_DIRS` and `$GROUPSNAP_BOOT_FILE_DIRS` (docs/restore-policy.md).
   */
  bootFileDirs?: string[];
  /** What serves instant restores' disks from the repository (NBD). @default groupsnap's serving process */
  instantServer?: InstantServer;
  log?: Log;
  /** Meter for groupsnap's host metrics. @default `Runtime.instance().metricMeter` (a no-op unless metrics are on) */
  metricMeter?: MetricMeter;
  /** Most snapshots this host takes at once in the `group-paused` order (1-64). @default 2 */
  snapshotsInFlight?: number;
}

export interface GroupsnapWorkflowsPluginOptions {
  /** A pre-built bundle of groupsnap's workflows; else the worker bundles {@link GROUPSNAP_WORKFLOWS_PATH}. */
  workflowBundle?: WorkflowBundleOption;
  /** Check (and add) groupsnap's search attributes in the namespace when the worker is created. @default true */
  ensureSearchAttributes?: boolean;
  log?: Log;
}

/** The task queue `options` ask for must be `expected` (or none): groupsnap's routing depends on it. */
function onTaskQueue(plugin: string, options: WorkerOptions, expected: string): WorkerOptions {
  if (options.taskQueue && options.taskQueue !== expected) {
    throw new TypeError(
      `${plugin} serves task queue ${JSON.stringify(expected)}, not ${JSON.stringify(options.taskQueue)}: ` +
        `create a Worker of its own for it (taskQueue: plugin.taskQueue)`,
    );
  }
  return { ...options, taskQueue: expected };
}

/** Runs `fn` with the worker's connection, or (like `Worker.create`) a default one made for the occasion. */
async function withConnection<T>(options: WorkerOptions, fn: (c: NativeConnection) => Promise<T>): Promise<T> {
  if (options.connection) return fn(options.connection);
  const connection = await NativeConnection.connect();
  try {
    return await fn(connection);
  } finally {
    await connection.close();
  }
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

/**
 * A plugin made of a {@link SimplePlugin} (what it adds to the worker: activities, Nexus services) and groupsnap's own
 * steps around it: `SimplePlugin.configureWorker` is synchronous, and groupsnap's set-up talks to Temporal and
 * libvirt, so the steps wrap the SimplePlugin instead of overriding it.
 */
abstract class GroupsnapPlugin implements WorkerPlugin, BundlerPlugin {
  protected constructor(protected readonly simple: SimplePlugin) {}

  get name(): string {
    return this.simple.name;
  }

  configureWorker(options: WorkerOptions): WorkerOptions | Promise<WorkerOptions> {
    return this.simple.configureWorker(options);
  }

  configureReplayWorker(options: ReplayWorkerOptions): ReplayWorkerOptions {
    return this.simple.configureReplayWorker(options);
  }

  configureBundler(options: BundleOptions): BundleOptions {
    return this.simple.configureBundler(options);
  }

  runWorker(worker: Worker, next: (w: Worker) => Promise<void>): Promise<void> {
    return this.simple.runWorker(worker, next);
  }
}

/**
 * Every activity a host serves, unguarded (the plugin wraps them in their schemas), and the host whose freezes
 * `recover()` finishes. Exported for the test that every one of them has a request schema.
 */
export function hostActivities(options: GroupsnapHostPluginOptions) {
  const { hypervisor, hostId, stateDir, log = () => {} } = options;
  const keyFile = options.repoKeyFile ? { keyFile: options.repoKeyFile } : {};
  const imagesDir = options.imagesDir ?? defaultImagesDir(hypervisor.uri);
  const host = createHost({
    hypervisor,
    hostId,
    stateDir,
    log,
    metrics: options.metricMeter ?? Runtime.instance().metricMeter,
    ...(options.snapshotsInFlight !== undefined ? { snapshotsInFlight: options.snapshotsInFlight } : {}),
  });
  const activities = {
    ...host.activities,
    ...createRepoRestoreActivities({
      hypervisor,
      hostId,
      imagesDir,
      stateDir,
      ...keyFile,
      ...(options.bootFileDirs ? { bootFileDirs: options.bootFileDirs } : {}),
      ...(options.instantServer ? { instantServer: options.instantServer } : {}),
      log,
    }),
    ...createDrillActivities({
      hypervisor,
      hostId,
      imagesDir,
      stateDir,
      ...keyFile,
      allowChecks: options.allowDrillChecks ?? false,
    }),
    // Off-host exports (activities/export-activities.ts); the key file is read when an export runs.
    ...createExportActivities({ hypervisor, hostId, stateDir, log, ...keyFile }),
  };
  return { host, activities };
}

/**
 * groupsnap on one hypervisor host: its activities over `hypervisor`, on the host's task queue. When the worker is
 * created, the host registers itself in the namespace's host registry and finishes the freezes a crashed
 * predecessor left open (resuming VMs it left paused), before the worker polls for anything. One worker per plugin.
 */
export class GroupsnapHostPlugin extends GroupsnapPlugin {
  readonly taskQueue: string;
  private host: ReturnType<typeof createHost> | undefined;

  constructor(private readonly hostOptions: GroupsnapHostPluginOptions) {
    super(new SimplePlugin({ name: 'groupsnap-host' }));
    this.taskQueue = hostTaskQueue(hostOptions.hostId);
  }

  override async configureWorker(options: WorkerOptions): Promise<WorkerOptions> {
    if (this.host) throw new Error(`the groupsnap host plugin of ${this.hostOptions.hostId} already serves a worker`);
    const configured = onTaskQueue(this.name, this.simple.configureWorker(options), this.taskQueue);
    const { hostId, log = () => {} } = this.hostOptions;
    await withConnection(options, (connection) =>
      registerHost(new Client({ connection, namespace: options.namespace ?? 'default' }), hostId),
    );
    const { host, activities } = hostActivities(this.hostOptions);
    const recovered = await host.recover();
    for (const r of recovered)
      log('resumed a VM left paused by an interrupted freeze', { domain: r.domain, snapshotId: r.snapshotId });
    this.host = host;
    return {
      ...configured,
      // The one door: each activity's request is parsed by its schema before it runs (worker/activity-door.ts).
      activities: { ...configured.activities, ...guardActivities(activities, HOST_ACTIVITY_SCHEMAS) },
      maxConcurrentActivityTaskExecutions:
        configured.maxConcurrentActivityTaskExecutions ?? HOST_MAX_CONCURRENT_ACTIVITIES,
      activityTaskPollerBehavior: configured.activityTaskPollerBehavior ?? {
        type: 'simple-maximum',
        maximum: HOST_ACTIVITY_POLLERS,
      },
    };
  }

  override async runWorker(worker: Worker, next: (w: Worker) => Promise<void>): Promise<void> {
    try {
      await this.simple.runWorker(worker, next);
    } finally {
      // The in-process freeze deadline timers end with the worker (the journal and the guard outlive it).
      this.host?.shutdown();
    }
  }
}

/**
 * groupsnap's workflows on the shared `groupsnap` task queue: the snapshot saga, groups, schedules' runs, deletion,
 * restore and the host registry, with the control activities they use and groupsnap's Nexus service handlers.
 * Any number of these workers may run in a namespace (each host's worker can run one, or none).
 */
export class GroupsnapWorkflowsPlugin extends GroupsnapPlugin {
  readonly taskQueue = WORKFLOW_TASK_QUEUE;

  constructor(private readonly workflowsOptions: GroupsnapWorkflowsPluginOptions = {}) {
    super(
      new SimplePlugin({
        name: 'groupsnap-workflows',
        activities: createControlActivities(),
        nexusServices: [groupsnapNexusServiceHandler()],
      }),
    );
  }

  override async configureWorker(options: WorkerOptions): Promise<WorkerOptions> {
    const configured = onTaskQueue(this.name, this.withWorkflows(this.simple.configureWorker(options)), this.taskQueue);
    if (this.workflowsOptions.ensureSearchAttributes !== false) {
      const namespace = options.namespace ?? 'default';
      const added = await withConnection(options, (connection) => ensureSearchAttributes(connection, namespace));
      if (added.length) this.workflowsOptions.log?.('added search attributes', { namespace, added });
    }
    return configured;
  }

  override configureReplayWorker(options: ReplayWorkerOptions): ReplayWorkerOptions {
    return this.withWorkflows(this.simple.configureReplayWorker(options));
  }

  /** groupsnap's workflows: the bundle given (to the plugin or the worker), else groupsnap's workflows path. */
  private withWorkflows<T extends Pick<WorkerOptions, 'workflowsPath' | 'workflowBundle'>>(options: T): T {
    const bundle = this.workflowsOptions.workflowBundle ?? options.workflowBundle;
    if (options.workflowsPath && options.workflowsPath !== GROUPSNAP_WORKFLOWS_PATH) {
      throw new TypeError(
        `${this.name} runs groupsnap's workflows, not those of ${options.workflowsPath}: ` +
          `create a Worker of its own for it (taskQueue: plugin.taskQueue)`,
      );
    }
    return bundle
      ? { ...options, workflowsPath: undefined, workflowBundle: bundle }
      : { ...options, workflowsPath: GROUPSNAP_WORKFLOWS_PATH, workflowBundle: undefined };
  }
}

/** The plugin for a hypervisor host's worker (see {@link GroupsnapHostPlugin}). */
export function groupsnapHostPlugin(options: GroupsnapHostPluginOptions): GroupsnapHostPlugin {
  return new GroupsnapHostPlugin(options);
}

/** The plugin for a worker of groupsnap's workflows and Nexus service (see {@link GroupsnapWorkflowsPlugin}). */
export function groupsnapWorkflowsPlugin(options: GroupsnapWorkflowsPluginOptions = {}): GroupsnapWorkflowsPlugin {
  return new GroupsnapWorkflowsPlugin(options);
}

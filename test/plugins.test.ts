import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { waitForHostWorkers } from '../client';
import { createGroup, listHosts, snapshotNamedGroup } from '../client/dr';
import { FreezeJournal } from '../activities/freeze-journal';
import { WORKFLOW_TASK_QUEUE } from '../common/names';
import { SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { groupsnapHostPlugin, groupsnapWorkflowsPlugin } from '../worker/plugins';
import { FakeHost } from './helpers/fake-hosts';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';

/**
 * groupsnap added to "someone else's" Temporal application: plain `Worker.create({ plugins })` workers, one per host
 * with the host plugin and one with the workflows plugin (which bundles groupsnap's workflows itself), and nothing
 * else of groupsnap's. What only the plugins do is checked here; the saga's flows run on this wiring too in
 * group-snapshot-fake.test.ts (both wirings).
 */
describe('groupsnap as Temporal worker plugins', () => {
  let namespace: string;
  let connection: NativeConnection;
  let clientConnection: Connection;
  let client: Client;
  let hostA: FakeHost;
  let hostB: FakeHost;
  const stateDirs: string[] = [];
  const workers: Worker[] = [];
  const runs: Promise<void>[] = [];

  beforeAll(async () => {
    namespace = await freshNamespace('gsplug');
    connection = await NativeConnection.connect({ address: testServerAddress() });
    clientConnection = await Connection.connect({ address: testServerAddress() });
    client = new Client({ connection: clientConnection, namespace });
    hostA = new FakeHost(uniqueId('pa'), { latencyMs: { suspend: 2, snapshot: 20, resume: 2 } });
    hostB = new FakeHost(uniqueId('pb'), { latencyMs: { suspend: 2, snapshot: 20, resume: 2 } });

    // Host A's previous worker crashed with a VM paused past its freeze deadline.
    hostA.addVm('left-paused');
    await hostA.hypervisor.suspend('left-paused');
    const stateA = await mkdtemp(join(tmpdir(), 'groupsnap-plugin-a-'));
    new FreezeJournal(stateA).write({
      snapshotId: 'gs-crashed',
      domain: 'left-paused',
      state: 'paused',
      pausedAtMs: Date.now() - 9000,
      deadlineMs: Date.now() - 4000,
    });
    stateDirs.push(stateA, await mkdtemp(join(tmpdir(), 'groupsnap-plugin-b-')));

    for (const [i, host] of [hostA, hostB].entries()) {
      const plugin = groupsnapHostPlugin({ hostId: host.hostId, hypervisor: host.hypervisor, stateDir: stateDirs[i] });
      workers.push(await Worker.create({ connection, namespace, taskQueue: plugin.taskQueue, plugins: [plugin] }));
    }
    const workflows = groupsnapWorkflowsPlugin();
    workers.push(await Worker.create({ connection, namespace, taskQueue: workflows.taskQueue, plugins: [workflows] }));
    for (const w of workers) runs.push(w.run());
    await waitForHostWorkers(client, [hostA.hostId, hostB.hostId]);
  });

  afterAll(async () => {
    for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    await Promise.all(runs);
    await connection?.close();
    await clientConnection?.close();
    hostA?.cleanup();
    hostB?.cleanup();
    for (const d of stateDirs) await rm(d, { recursive: true, force: true });
  });

  const vmsOn = (host: FakeHost, names: string[]) => names.map((domain) => ({ domain, host: host.hostId }));

  it('sets up the host and the namespace when the workers are created: recovery, registration, search attributes', async () => {
    expect(hostA.state('left-paused')).toBe('running');
    expect(new FreezeJournal(stateDirs[0]).read('gs-crashed', 'left-paused')!.state).not.toBe('paused');
    expect((await listHosts(client)).map((h) => h.hostId)).toEqual([hostA.hostId, hostB.hostId].sort());
    const attrs = await clientConnection.operatorService.listSearchAttributes({ namespace });
    expect(Object.keys(attrs.customAttributes ?? {})).toEqual(expect.arrayContaining(Object.keys(SEARCH_ATTRIBUTES)));
  });

  it('takes a named group snapshot (group entity, run, control activities)', async () => {
    const vm = uniqueId('n1');
    hostB.addVm(vm);
    const name = uniqueId('named');
    await createGroup(client, { name, selector: { vms: vmsOn(hostB, [vm]) } });
    const run = await snapshotNamedGroup(client, name, { label: 'plugins' });
    expect(run.snapshot).toMatchObject({ status: 'completed', label: 'plugins' });
    expect(hostB.chain(vm)).toHaveLength(2);
  });

  it("keeps 2 long polls open on a host's queue unless told otherwise (the SDK's 10 each: 1,000 hosts past the server's limit)", async () => {
    const options = async (extra: Partial<WorkerOptions>) => {
      const dir = await mkdtemp(join(tmpdir(), 'groupsnap-plugin-polls-'));
      stateDirs.push(dir);
      const plugin = groupsnapHostPlugin({ hostId: uniqueId('pp'), hypervisor: hostB.hypervisor, stateDir: dir });
      return plugin.configureWorker({ connection, namespace, taskQueue: plugin.taskQueue, ...extra });
    };
    expect((await options({})).activityTaskPollerBehavior).toEqual({ type: 'simple-maximum', maximum: 2 });
    const own = { type: 'autoscaling', maximum: 20 } as const;
    expect((await options({ activityTaskPollerBehavior: own })).activityTaskPollerBehavior).toEqual(own);
  });

  it('refuses to serve another task queue or other workflows than its own', async () => {
    await expect(
      Worker.create({ connection, namespace, taskQueue: 'my-app', plugins: [groupsnapWorkflowsPlugin()] }),
    ).rejects.toThrow(/serves task queue "groupsnap", not "my-app"/);
    await expect(
      Worker.create({
        connection,
        namespace,
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowsPath: __filename,
        plugins: [groupsnapWorkflowsPlugin()],
      }),
    ).rejects.toThrow(/runs groupsnap's workflows/);
  });
});

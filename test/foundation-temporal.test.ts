import { Worker } from '@temporalio/worker';
import { Connection } from '@temporalio/client';
import { connectTestClient, connectTestWorker, uniqueId } from './helpers/temporal';
import { echoActivities } from './fixtures/echo-activities';
import { echo } from './fixtures/echo-workflow';
import { startDevServer } from '../dev/temporal-dev-server';
import { SEARCH_ATTRIBUTES } from '../common/search-attributes';

describe('real Temporal dev server', () => {
  it('runs a workflow and its activity on a real worker', async () => {
    const { client, close } = await connectTestClient();
    const connection = await connectTestWorker();
    const taskQueue = uniqueId('foundation');
    try {
      const worker = await Worker.create({
        connection,
        taskQueue,
        workflowsPath: require.resolve('./fixtures/echo-workflow'),
        activities: echoActivities,
      });
      const result = await worker.runUntil(
        client.workflow.execute(echo, { taskQueue, workflowId: uniqueId('echo'), args: ['hello'] }),
      );
      expect(result).toBe('HELLO!');
    } finally {
      await connection.close();
      await close();
    }
  });

  it('registers groupsnap search attributes in every namespace it creates', async () => {
    const { client, close } = await connectTestClient('groupsnap-test');
    try {
      const res = await client.connection.operatorService.listSearchAttributes({ namespace: 'groupsnap-test' });
      expect(Object.keys(res.customAttributes ?? {})).toEqual(expect.arrayContaining(Object.keys(SEARCH_ATTRIBUTES)));
    } finally {
      await close();
    }
  });

  it('starts a second server on other free ports, serves the UI, and stops it cleanly', async () => {
    const server = await startDevServer({ ui: true });
    try {
      expect(server.address).not.toBe(process.env.GROUPSNAP_TEST_TEMPORAL_ADDRESS);
      const res = await fetch(server.uiUrl!);
      expect(res.status).toBe(200);
    } finally {
      await server.stop();
    }
    expect(() => process.kill(server.pid, 0)).toThrow();
    await expect(Connection.connect({ address: server.address, connectTimeout: 500 })).rejects.toThrow();
  });
});

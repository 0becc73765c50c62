import Long from 'long';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';

/** Address of the dev server started by jest's global setup. */
export function testServerAddress(): string {
  const address = process.env.GROUPSNAP_TEST_TEMPORAL_ADDRESS;
  if (!address)
    throw new Error('GROUPSNAP_TEST_TEMPORAL_ADDRESS is not set: run the tests through jest (global setup)');
  return address;
}

export async function connectTestClient(namespace = 'default'): Promise<{ client: Client; close(): Promise<void> }> {
  const connection = await Connection.connect({ address: testServerAddress() });
  return { client: new Client({ connection, namespace }), close: () => connection.close() };
}

export function connectTestWorker(): Promise<NativeConnection> {
  return NativeConnection.connect({ address: testServerAddress() });
}

export function uniqueId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A new namespace on the test server, for tests that need a namespace-wide state of their own (the host registry,
 * groups, schedules). Waits until the namespace answers.
 */
export async function freshNamespace(prefix = 'gs'): Promise<string> {
  const namespace = uniqueId(prefix);
  const { client, close } = await connectTestClient();
  try {
    await client.workflowService.registerNamespace({
      namespace,
      workflowExecutionRetentionPeriod: { seconds: Long.fromNumber(24 * 3600) },
    });
    for (let i = 0; ; i++) {
      try {
        await client.workflowService.describeNamespace({ namespace });
        break;
      } catch (err) {
        if (i > 100) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    await close();
  }
  return namespace;
}

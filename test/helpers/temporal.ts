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

import { startDevServer, type DevServer } from '../dev/temporal-dev-server';

declare global {
  var __groupsnapDevServer: DevServer | undefined;
}

/** One real Temporal dev server for the whole run; test files read its address from the environment. */
export default async function globalSetup(): Promise<void> {
  if (process.env.GROUPSNAP_TEST_TEMPORAL_ADDRESS) return; // an outside server was given
  const server = await startDevServer({ namespaces: ['groupsnap-test'] });
  globalThis.__groupsnapDevServer = server;
  process.env.GROUPSNAP_TEST_TEMPORAL_ADDRESS = server.address;
}

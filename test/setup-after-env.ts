// Real servers and real VMs: generous per-test budget; individual tests bound their own waits.
jest.setTimeout(180_000);

import { DefaultLogger, Runtime } from '@temporalio/worker';

// Worker state changes and the expected activity failures of failure-injection tests drown the output.
Runtime.install({ logger: new DefaultLogger('ERROR') });

// Real servers and real VMs: generous per-test budget; individual tests bound their own waits.
jest.setTimeout(180_000);

import { DefaultLogger, Runtime } from '@temporalio/worker';

// Worker state changes at INFO drown the test output; warnings and errors still show.
Runtime.install({ logger: new DefaultLogger('WARN') });

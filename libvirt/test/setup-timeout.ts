// Real VMs: a generous budget per test. Set here rather than as `testTimeout`, which jest rejects when this
// folder runs as a project of the root config.
jest.setTimeout(180_000);

/**
 * Test tiers: `unit` is pure code (no Temporal server, no libvirt, no build; `npm run test:unit`, seconds);
 * `groupsnap` is the integration tier (a real Temporal dev server per run, fake and real hypervisors, real VMs,
 * the built CLI); `@groupsnap/libvirt` is the binding's own. `npm test` runs all three.
 * @type {import('jest').Config}
 */
module.exports = {
  projects: [
    {
      displayName: 'unit',
      preset: 'ts-jest',
      testEnvironment: 'node',
      roots: ['<rootDir>/test/unit'],
      testMatch: ['**/*.test.ts'],
    },
    {
      displayName: 'groupsnap',
      preset: 'ts-jest',
      testEnvironment: 'node',
      roots: ['<rootDir>/test'],
      testMatch: ['**/*.test.ts'],
      testPathIgnorePatterns: ['/node_modules/', '<rootDir>/test/unit/'],
      globalSetup: '<rootDir>/test/global-setup.ts',
      globalTeardown: '<rootDir>/test/global-teardown.ts',
      setupFilesAfterEnv: ['<rootDir>/test/setup-after-env.ts'],
    },
    '<rootDir>/libvirt',
  ],
};

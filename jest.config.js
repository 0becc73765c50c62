/** @type {import('jest').Config} */
module.exports = {
  projects: [
    {
      displayName: 'groupsnap',
      preset: 'ts-jest',
      testEnvironment: 'node',
      roots: ['<rootDir>/test'],
      testMatch: ['**/*.test.ts'],
      globalSetup: '<rootDir>/test/global-setup.ts',
      globalTeardown: '<rootDir>/test/global-teardown.ts',
      setupFilesAfterEnv: ['<rootDir>/test/setup-after-env.ts'],
    },
    '<rootDir>/libvirt',
  ],
};

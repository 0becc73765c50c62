// Self-contained so the root config can list this folder as a jest project.
/** @type {import('jest').Config} */
module.exports = {
  displayName: 'libvirt',
  rootDir: __dirname,
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  setupFilesAfterEnv: ['<rootDir>/test/setup-timeout.ts'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.test.json' }],
  },
};

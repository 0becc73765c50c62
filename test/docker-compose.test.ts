import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { temporalServerHome } from '../dev/temporal-cluster';
import { REPO_ROOT } from '../dev/tools';
import { CLI } from './helpers/worker-process';
import { composeFile, composeTemporalAndCluster } from './helpers/compose';

const exec = promisify(execFile);

/**
 * No Docker engine runs here, so the deployment files are checked statically; the checks that need the built CLI
 * (dist/) or the built Temporal server are here, the others in test/unit/docker-compose.test.ts.
 */
describe('docker-compose.yml', () => {
  const { services } = composeFile();
  it('runs groupsnap commands and flags that the CLI has', async () => {
    for (const [, s] of services.filter(([, s]) => s.build)) {
      const args = Array.isArray(s.command) ? s.command : [];
      if (args.length === 0) continue;
      const { stdout } = await exec(process.execPath, [CLI, args[0], '--help']);
      for (const flag of args.filter((a) => a.startsWith('--'))) expect(stdout).toContain(flag);
    }
    const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toContain('"/app/dist/cli/main.js"');
    expect(existsSync(CLI)).toBe(true);
  });
});

/** The two-process test cluster (dev/temporal-cluster.ts) must be the compose file's Temporal, run without Docker. */
describe('docker-compose.yml and the test cluster describe the same Temporal', () => {
  const { env, dynamicConfig, clusterEnv } = composeTemporalAndCluster();
  it("uses only settings the release's config template reads, and a dynamic config the server accepts", async () => {
    const home = await temporalServerHome();
    const template = readFileSync(join(home, 'config/docker.yaml'), 'utf8');
    const read = new Set([...template.matchAll(/env "([A-Z0-9_]+)"/g)].map((m) => m[1]));
    for (const key of new Set([...Object.keys(env), ...Object.keys(clusterEnv)]))
      expect([key, read.has(key)]).toEqual([key, true]);
    const { stdout } = await exec(join(home, 'bin/temporal-server'), ['validate-dynamic-config', dynamicConfig]);
    expect(stdout).not.toMatch(/error|warning/);
  });
});

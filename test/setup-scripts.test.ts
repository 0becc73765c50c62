import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function script(name: string, env: Record<string, string> = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await exec('bash', [join(REPO_ROOT, 'scripts', name)], {
      env: { ...process.env, ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const pidOf = async (name: string) => (await exec('pgrep', ['-x', name])).stdout.trim();

describe('set-up scripts', () => {
  let stateDir: string;

  beforeAll(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-setup-'));
  });

  afterAll(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  it('setup-libvirt.sh run twice changes nothing the second time', async () => {
    const first = await script('setup-libvirt.sh', { GROUPSNAP_STATE_DIR: stateDir });
    expect(first.code).toBe(0);
    const conf = await readFile('/etc/libvirt/qemu.conf', 'utf8');
    const daemon = await pidOf('libvirtd');
    const second = await script('setup-libvirt.sh', { GROUPSNAP_STATE_DIR: stateDir });
    expect(second.code).toBe(0);
    expect(second.stderr).toContain('packages already installed');
    expect(second.stderr).toContain('libvirtd already running');
    expect(second.stderr).not.toMatch(/installing|starting|created|set /);
    expect(await readFile('/etc/libvirt/qemu.conf', 'utf8')).toBe(conf);
    expect(await pidOf('libvirtd')).toBe(daemon);
    expect(second.stdout.trim()).toBe(first.stdout.trim());
    expect(['kvm', 'qemu']).toContain(second.stdout.trim());
  });

  it('falls back to TCG and says so when KVM is not usable', async () => {
    const run = await script('setup-libvirt.sh', {
      GROUPSNAP_STATE_DIR: stateDir,
      GROUPSNAP_KVM_DEVICE: '/nonexistent/kvm',
    });
    expect(run.code).toBe(0);
    expect(run.stdout.trim()).toBe('qemu');
    expect(run.stderr).toMatch(/KVM not usable \(\/nonexistent\/kvm is missing\): VMs fall back to TCG/);
    expect((await readFile(join(stateDir, 'virt-type'), 'utf8')).trim()).toBe('qemu');
  });

  it('says clearly when libvirtd fails to start or never answers', async () => {
    const failing = await script('setup-libvirt.sh', {
      GROUPSNAP_STATE_DIR: stateDir,
      GROUPSNAP_LIBVIRT_SOCK: join(stateDir, 'no.sock'),
      GROUPSNAP_LIBVIRTD: '/bin/false',
    });
    expect(failing.code).toBe(1);
    expect(failing.stderr).toMatch(/error: libvirtd failed to start/);
    const silent = await script('setup-libvirt.sh', {
      GROUPSNAP_STATE_DIR: stateDir,
      GROUPSNAP_LIBVIRT_SOCK: join(stateDir, 'no.sock'),
      GROUPSNAP_LIBVIRTD: '/bin/true',
      GROUPSNAP_LIBVIRTD_WAIT_S: '1',
    });
    expect(silent.code).toBe(1);
    expect(silent.stderr).toMatch(/error: libvirtd did not come up within 1 s/);
  });

  it('ensure-temporal.sh reuses the CLI it found or built', async () => {
    const first = await script('ensure-temporal.sh');
    const second = await script('ensure-temporal.sh');
    expect(first.code).toBe(0);
    expect(second.stdout).toBe(first.stdout);
    expect(second.stderr).not.toContain('building');
    const { stdout } = await exec(first.stdout.trim(), ['--version']);
    expect(stdout).toMatch(/temporal version/);
  });

  it('ensure-temporal.sh explains what to do without Go and without temporal on PATH', async () => {
    const node = dirname(process.execPath);
    const run = await script('ensure-temporal.sh', {
      PATH: ['/usr/sbin', '/sbin', '/bin', node].join(':'),
      GROUPSNAP_TOOLS_DIR: stateDir,
      TEMPORAL_CLI: '',
    });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/no 'temporal' on PATH and no Go toolchain to build it/);
    expect(run.stderr).toMatch(/TEMPORAL_CLI=/);
  });

  it('ensure-chromium.sh finds the installed Chromium without installing it again, or the one given', async () => {
    const first = await script('ensure-chromium.sh');
    expect(first.code).toBe(0);
    expect(first.stdout.trim()).toBe('/usr/bin/chromium');
    const second = await script('ensure-chromium.sh');
    expect(second.stdout).toBe(first.stdout);
    expect(second.stderr).not.toContain('installing');
    const given = await script('ensure-chromium.sh', { GROUPSNAP_CHROMIUM: '/nonexistent/chromium' });
    expect(given.code).toBe(1);
    expect(given.stderr).toMatch(/GROUPSNAP_CHROMIUM=\/nonexistent\/chromium is not an executable file/);
  });
});

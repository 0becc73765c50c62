import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
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

  it('refuses an unknown hypervisor stack before changing anything, and names the two it supports', async () => {
    const list = join(stateDir, 'backports.list');
    const run = await script('setup-libvirt.sh', {
      GROUPSNAP_STATE_DIR: stateDir,
      GROUPSNAP_LIBVIRT_STACK: 'trixie',
      GROUPSNAP_BACKPORTS_LIST: list,
    });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("GROUPSNAP_LIBVIRT_STACK must be debian or backports, not 'trixie'");
    expect(existsSync(list)).toBe(false);
  });

  describe('setup-libvirt.sh never weakens a libvirt it did not install', () => {
    const EXISTING = '# a real host\nsecurity_driver = "apparmor"\n#user = "root"\ncgroup_controllers = [ "cpu" ]\n';
    let sandbox: string;
    let conf: string;
    let marker: string;
    const env = (more: Record<string, string> = {}) => ({
      GROUPSNAP_STATE_DIR: stateDir,
      GROUPSNAP_QEMU_CONF: conf,
      GROUPSNAP_LIBVIRT_MARKER: marker,
      GROUPSNAP_VIRT_TYPE: 'qemu',
      ...more,
    });

    beforeEach(async () => {
      sandbox = await mkdtemp(join(tmpdir(), 'groupsnap-setup-conf-'));
      conf = join(sandbox, 'qemu.conf');
      marker = join(sandbox, 'state', 'libvirt-installed-by-groupsnap');
      await writeFile(conf, EXISTING);
    });

    afterEach(async () => {
      await rm(sandbox, { recursive: true, force: true });
    });

    it('leaves the configuration of a libvirt installed before it exactly as it is, and says so', async () => {
      const run = await script('setup-libvirt.sh', env());
      expect(run.code).toBe(0);
      expect(await readFile(conf, 'utf8')).toBe(EXISTING);
      expect(run.stderr).toContain(
        `libvirt was installed before groupsnap's set-up: leaving its configuration (${conf})`,
      );
      expect(run.stderr).toContain('GROUPSNAP_LIBVIRT_CONFIGURE=1');
      expect(run.stderr).not.toMatch(/ set security_driver|set user/);
    });

    it('configures it for a container only when asked (GROUPSNAP_LIBVIRT_CONFIGURE=1), and says so', async () => {
      const run = await script('setup-libvirt.sh', env({ GROUPSNAP_LIBVIRT_CONFIGURE: '1' }));
      expect(run.code).toBe(0);
      expect(run.stderr).toContain('configuring libvirt for a container as asked (GROUPSNAP_LIBVIRT_CONFIGURE=1)');
      const after = await readFile(conf, 'utf8');
      expect(after).toMatch(/^security_driver = "none"$/m);
      expect(after).toMatch(/^user = "root"$/m);
      expect(after).toMatch(/^group = "root"$/m);
      expect(after).toMatch(/^cgroup_controllers = \[ \]$/m);
      expect(after).not.toContain('apparmor');
    });

    it('configures a libvirt it installed itself (marker written at install), and says so', async () => {
      // Fake dpkg-query (nothing installed) and apt-get (records what it was asked), ahead of the real tools.
      const bin = join(sandbox, 'bin');
      const calls = join(sandbox, 'apt-calls');
      await mkdir(bin);
      await writeFile(join(bin, 'dpkg-query'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
      await writeFile(join(bin, 'apt-get'), `#!/bin/sh\necho "$*" >>${calls}\n`, { mode: 0o755 });
      const run = await script('setup-libvirt.sh', env({ PATH: `${bin}:${process.env.PATH}` }));
      expect(run.code).toBe(0);
      expect(await readFile(calls, 'utf8')).toMatch(/install .*libvirt-daemon /);
      expect(await readFile(marker, 'utf8')).toMatch(/libvirt installed by groupsnap scripts\/setup-libvirt.sh/);
      expect(run.stderr).toContain(`installed libvirt here: recorded in ${marker}`);
      expect(run.stderr).toContain(`libvirt was installed by this script (${marker}): configuring it for a container`);
      expect(await readFile(conf, 'utf8')).toMatch(/^security_driver = "none"$/m);
      // Later runs find the packages and the marker: the configuration stays as the script left it.
      const configured = await readFile(conf, 'utf8');
      const again = await script('setup-libvirt.sh', env());
      expect(again.code).toBe(0);
      expect(again.stderr).toContain('libvirt was installed by this script');
      expect(await readFile(conf, 'utf8')).toBe(configured);
    });
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

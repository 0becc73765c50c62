import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);
const bench = (name: string) => join(REPO_ROOT, `dist/bench/${name}.js`);

/** The benchmark is not a test; this only keeps it runnable (one round of the smallest configurations). */
describe('npm run bench (smoke)', () => {
  it('runs every contender and writes raw samples and a report', async () => {
    const out = await mkdtemp(join(tmpdir(), 'groupsnap-bench-smoke-'));
    try {
      await exec(process.execPath, [
        bench('freeze'),
        ...['--sizes', '1,2', '--rounds', '1', '--hosts', '1,2', '--depth', '2', '--no-big', '--out', out],
      ]);
      const report = readFileSync(join(out, 'BENCHMARKS.md'), 'utf8');
      for (const c of ['groupsnap', 'groupsnap-old', 'floor', 'floor-early', 'naive'])
        expect(report).toMatch(new RegExp(`\\| 2 \\| ${c} \\| \\d+\\.\\d`));
      expect(report).toMatch(/The new floor by snapshots in flight/);
      expect(report).toMatch(/\| hosts \| update, group-paused \| update, group-snapshotted/);
      expect(report).toMatch(/## Simulated hosts/);
      expect(report).toMatch(/\d+ cores \(.*\), \d+ GiB, VMs under \*\*(KVM|TCG)\*\*/);
      expect(existsSync(join(out, 'bench', 'freeze-vs-size.svg'))).toBe(true);
      // The raw results name the hypervisor stack measured (issue 15 benchmarks two), as the tools report it.
      const [raw] = readdirSync(join(out, 'bench', 'results')).filter((f) => f.endsWith('.json'));
      const { stack } = JSON.parse(readFileSync(join(out, 'bench', 'results', raw), 'utf8'));
      const daemon = (await exec('virsh', ['-c', 'qemu:///system', 'version', '--daemon'])).stdout;
      const qemu = (await exec('qemu-system-x86_64', ['--version'])).stdout;
      expect(stack.libvirtd).toMatch(/^\d+\.\d+\.\d+$/);
      expect(daemon).toContain(`Running against daemon: ${stack.libvirtd}`);
      expect(qemu).toMatch(new RegExp(`^QEMU emulator version ${stack.qemu.replace(/\./g, '\\.')}[ (]`));
      expect(stack.packages['libvirt-daemon']).toMatch(new RegExp(`^${stack.libvirtd.replace(/\./g, '\\.')}-`));
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

describe('npm run bench -- --hosts-only (smoke)', () => {
  it("runs only the simulated hosts and keeps the earlier run's real-VM samples", async () => {
    const out = await mkdtemp(join(tmpdir(), 'groupsnap-bench-hosts-'));
    const from = join(REPO_ROOT, 'bench/results/2026-12-01-vm.json');
    try {
      await exec(process.execPath, [
        bench('freeze'),
        '--hosts-only',
        from,
        '--hosts',
        '2',
        '--rounds',
        '1',
        '--out',
        out,
      ]);
      type Results = { samples: { config: string; hosts?: number }[]; hostsRun?: { from: string } };
      const earlier = JSON.parse(readFileSync(from, 'utf8')) as Results;
      const written = JSON.parse(readFileSync(join(out, 'bench/results/2026-12-01-vm-hosts.json'), 'utf8')) as Results;
      expect(written.samples.filter((s) => s.config !== 'hosts')).toEqual(
        earlier.samples.filter((s) => s.config !== 'hosts'),
      );
      // 2 hosts x 8 VMs, both barriers, both orders, one round.
      expect(written.samples.filter((s) => s.config === 'hosts' && s.hosts === 2)).toHaveLength(64);
      expect(written.samples.some((s) => s.config === 'hosts' && s.hosts !== 2)).toBe(false);
      expect(written.hostsRun?.from).toBe('2026-12-01-vm.json');
      const report = readFileSync(join(out, 'BENCHMARKS.md'), 'utf8');
      expect(report).toMatch(
        /From a separate run on .* UTC \(`npm run bench -- --hosts-only bench\/results\/2026-12-01-vm.json`/,
      );
      expect(report).toMatch(/\| 2 \| groupsnap \| \d+\.\d/);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

/** One command line for every benchmark (bench/options.ts): documented options, bad input refused up front. */
describe.each([
  [
    'freeze',
    ['--sizes', '--rounds', '--hosts', '--depth', '--no-big', '--bounds', '--out', '--hosts-only', '--max-freeze-ms'],
    ['--rounds', '0'],
  ],
  [
    'consistency',
    ['--group', '--naive', '--modes', '--batch', '--hosts', '--restore', '--out'],
    ['--modes', 'group,x'],
  ],
  [
    'consistency-pg',
    ['--group', '--naive', '--interval-s', '--gap-ms', '--checkpoint-s', '--out'],
    ['--gap-ms', '3,x'],
  ],
  [
    'consistency-multivm',
    ['--rounds', '--modes', '--interval-s', '--gap-ms', '--checkpoint-s', '--out'],
    ['--modes', 'group,naive'],
  ],
  ['backup', ['--disk', '--data', '--delta', '--rounds', '--out'], ['--rounds', '0']],
  ['restore', ['--disk', '--data', '--rounds', '--vms', '--vm-data', '--out'], ['--vms', 'x']],
  ['copy', ['--data', '--rounds', '--out'], ['--rounds', '0']],
  ['hydrate', ['--disk-size', '--data', '--extents', '--rounds', '--out'], ['--extents', '0']],
  ['recover', ['--rounds', '--instant', '--warmup-s', '--check-timeout-s', '--out'], ['--rounds', '0']],
  ['instant', ['--vms', '--vm-data', '--disk-size', '--rounds', '--out'], ['--vm-data', '64,x']],
])('node dist/bench/%s.js', (name, options, badArgs) => {
  it('lists its options with --help', async () => {
    const { stdout } = await exec(process.execPath, [bench(name), '--help']);
    for (const o of options) expect(stdout).toContain(o);
  });

  it('exits 2 on a bad value or an unknown option, saying which, before starting anything', async () => {
    for (const args of [badArgs, ['--bogus']]) {
      const err = await exec(process.execPath, [bench(name), ...args]).then(
        () => undefined,
        (e: { code: number; stderr: string; stdout: string }) => e,
      );
      expect(err).toMatchObject({ code: 2, stdout: '' });
      expect(err!.stderr).toMatch(args[0] === '--bogus' ? /unknown option '--bogus'/ : /argument '.*' is invalid/);
      expect(err!.stderr).not.toMatch(/machine:/);
    }
  });
});

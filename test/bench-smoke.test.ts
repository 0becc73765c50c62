import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);

/** The benchmark is not a test; this only keeps it runnable (one round of the smallest configurations). */
describe('npm run bench (smoke)', () => {
  it('runs every contender and writes raw samples and a report', async () => {
    const out = await mkdtemp(join(tmpdir(), 'groupsnap-bench-smoke-'));
    try {
      await exec(process.execPath, [
        join(REPO_ROOT, 'dist/bench/freeze.js'),
        ...['--sizes', '1,2', '--rounds', '1', '--hosts', '1,2', '--depth', '2', '--no-big', '--out', out],
      ]);
      const report = readFileSync(join(out, 'BENCHMARKS.md'), 'utf8');
      for (const c of ['groupsnap', 'floor', 'naive'])
        expect(report).toMatch(new RegExp(`\\| 2 \\| ${c} \\| \\d+\\.\\d`));
      expect(report).toMatch(/## Simulated hosts/);
      expect(existsSync(join(out, 'bench', 'freeze-vs-size.svg'))).toBe(true);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

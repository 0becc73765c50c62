import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);

/** `npm run bench:cluster` is not a test; this only keeps it runnable (one round of the smallest configuration). */
describe('npm run bench:cluster (smoke)', () => {
  it('measures both backends and writes raw samples and the cluster section of BENCHMARKS.md', async () => {
    const out = await mkdtemp(join(tmpdir(), 'groupsnap-bench-cluster-smoke-'));
    try {
      await exec(
        process.execPath,
        [
          join(REPO_ROOT, 'dist/bench/cluster.js'),
          ...['--sizes', '1', '--rounds', '1', '--hosts', '2', '--host-rounds', '1', '--out', out],
        ],
        { maxBuffer: 64 * 1024 * 1024 },
      );
      const report = readFileSync(join(out, 'BENCHMARKS.md'), 'utf8');
      expect(report).toContain('## Temporal cluster vs dev server');
      for (const b of ['dev-server', 'cluster']) {
        expect(report).toMatch(new RegExp(`\\| 1 \\| ${b} \\| \\d+\\.\\d`));
        // Simulated hosts: both barriers, each run completed, with its load beside it.
        for (const barrier of ['update', 'sharded'])
          expect(report).toMatch(new RegExp(`\\| 2 \\| ${b} \\| ${barrier}[^|]* \\| 1/1 \\| \\d+\\.\\d`));
      }
      const raw = readdirSync(join(out, 'bench', 'results'));
      expect(raw).toEqual([expect.stringMatching(/^cluster-.*\.json$/)]);
      expect(existsSync(join(out, 'bench', 'results', raw[0]))).toBe(true);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

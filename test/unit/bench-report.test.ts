import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BenchResults, renderReport } from '../../bench/report';
import { REPO_ROOT } from '../../dev/tools';

/**
 * `npm run bench`'s report rendered from the raw samples BENCHMARKS.md names: no VM, no server. The committed
 * BENCHMARKS.md and plots were generated from that file, so the rendering must reproduce them byte for byte.
 */
describe('BENCHMARKS.md rendered from stored raw samples', () => {
  const committed = readFileSync(join(REPO_ROOT, 'BENCHMARKS.md'), 'utf8');
  const rawFile = /from the raw samples in `([^`]+)`/.exec(committed)![1];
  const results = JSON.parse(readFileSync(join(REPO_ROOT, rawFile), 'utf8')) as BenchResults;
  let out: string;
  let report: string;
  beforeAll(() => {
    // An empty output root: the plots go there, and there are no kept sections to append.
    out = mkdtempSync(join(tmpdir(), 'groupsnap-report-'));
    mkdirSync(join(out, 'bench'));
    report = renderReport(results, rawFile, out);
  });
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it('reproduces the generated part of the committed BENCHMARKS.md exactly', () => {
    // The kept sections follow the generated report after one blank line.
    expect(report).toBe(committed.slice(0, committed.indexOf('\n<!-- ')));
  });

  it('reproduces the committed plots', () => {
    for (const svg of ['freeze-vs-size.svg', 'freeze-vs-hosts.svg'])
      expect(readFileSync(join(out, 'bench', svg), 'utf8').trimEnd()).toBe(
        readFileSync(join(REPO_ROOT, 'bench', svg), 'utf8').trimEnd(),
      );
  });

  it('has every section, and figures computed from the samples', () => {
    expect(report.match(/^## .*/gm)).toEqual([
      '## Machine',
      '## Freeze per VM by group size',
      '## Chain depth',
      '## Simulated hosts (cross-host barrier through Temporal)',
    ]);
    expect(report).toMatch(/^\| 8 \| groupsnap \| \d+\.\d \| \d+\.\d \| \d+\.\d \|/m);
    expect(report).toMatch(/^The new floor by snapshots in flight/m);
    expect(report).toMatch(/^Where the floor spends the freeze/m);
    // One figure recomputed here: groupsnap's p50 per-VM freeze at 8 VMs.
    const fr = results.samples
      .filter((s) => s.config === 'size' && s.size === 8 && s.contender === 'groupsnap')
      .map((s) => s.freezeMs)
      .sort((a, b) => a - b);
    const p50 = fr[Math.floor(0.5 * fr.length)];
    expect(report).toContain(`At 8 VMs: groupsnap p50 ${p50.toFixed(1)} ms;`);
  });

  it('appends the sections other benchmarks keep in BENCHMARKS.md', () => {
    const kept = mkdtempSync(join(tmpdir(), 'groupsnap-report-'));
    try {
      mkdirSync(join(kept, 'bench'));
      writeFileSync(join(kept, 'BENCHMARKS.md'), committed);
      const withKept = renderReport(results, rawFile, kept);
      expect(withKept.startsWith(report)).toBe(true);
      for (const name of ['backup', 'restore', 'export-index']) expect(withKept).toContain(`<!-- ${name}:begin -->`);
    } finally {
      rmSync(kept, { recursive: true, force: true });
    }
  });
});

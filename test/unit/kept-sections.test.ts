import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { keptSections, writeSection } from '../../bench/kept-sections';

describe("BENCHMARKS.md sections of the benchmarks' own", () => {
  let dir: string;
  const md = () => readFileSync(join(dir, 'BENCHMARKS.md'), 'utf8');
  const section = (name: string, body: string) => `<!-- ${name}:begin -->\n${body}\n<!-- ${name}:end -->`;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'groupsnap-sections-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('starts the file when there is none', () => {
    writeSection(dir, 'backup', section('backup', 'one'));
    expect(md()).toBe(`# Benchmarks\n\n${section('backup', 'one')}\n`);
  });

  it('replaces its own section in place and leaves everything else as it was', () => {
    writeFileSync(
      join(dir, 'BENCHMARKS.md'),
      `# B\n\n${section('backup', 'old')}\n\n${section('restore', 'r')}\ntail\n`,
    );
    writeSection(dir, 'backup', section('backup', 'new'));
    expect(md()).toBe(`# B\n\n${section('backup', 'new')}\n\n${section('restore', 'r')}\ntail\n`);
  });

  it('appends a section the file does not have yet, and keptSections finds them all', () => {
    writeFileSync(join(dir, 'BENCHMARKS.md'), `# B\n\n${section('backup', 'b')}\n`);
    writeSection(dir, 'restore', section('restore', 'r'));
    expect(md()).toBe(`# B\n\n${section('backup', 'b')}\n\n${section('restore', 'r')}\n`);
    expect(keptSections(dir)).toBe(`\n${section('backup', 'b')}\n\n${section('restore', 'r')}\n`);
  });
});

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Puts `section` (which starts with `<!-- name:begin -->` and ends with `<!-- name:end -->`) into `outRoot`'s
 * BENCHMARKS.md in place of the previous one, or at its end; a missing file is started.
 */
export function writeSection(outRoot: string, name: string, section: string): void {
  const mdFile = join(outRoot, 'BENCHMARKS.md');
  const md = existsSync(mdFile) ? readFileSync(mdFile, 'utf8') : '# Benchmarks\n';
  const [begin, end] = [`<!-- ${name}:begin -->`, `<!-- ${name}:end -->`];
  writeFileSync(
    mdFile,
    md.includes(begin)
      ? md.slice(0, md.indexOf(begin)) + section + md.slice(md.indexOf(end) + end.length)
      : md.trimEnd() + '\n\n' + section + '\n',
  );
}

/**
 * Sections of BENCHMARKS.md written by other benchmarks (between `<!-- name:begin -->` and `<!-- name:end -->`, e.g.
 * bench/backup.ts's), kept when `npm run bench` regenerates the file. Empty when there are none.
 */
export function keptSections(outRoot: string): string {
  let md: string;
  try {
    md = readFileSync(join(outRoot, 'BENCHMARKS.md'), 'utf8');
  } catch {
    return '';
  }
  const blocks = [...md.matchAll(/<!-- ([a-z-]+):begin -->[\s\S]*?<!-- \1:end -->/g)].map((m) => m[0]);
  return blocks.length ? '\n' + blocks.join('\n\n') + '\n' : '';
}

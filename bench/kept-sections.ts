import { readFileSync } from 'node:fs';
import { join } from 'node:path';

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

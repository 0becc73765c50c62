import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

/** The repository root (this file lives in `dev/` both in the sources and in `dist/dev/`). */
export const REPO_ROOT = ((): string => {
  const up = join(__dirname, '..');
  return up.endsWith('dist') ? join(up, '..') : up;
})();

/**
 * Path of the Temporal CLI: `$TEMPORAL_CLI`, a `temporal` on PATH, or the pinned CLI built once into `.tools/`.
 * @throws Error with the script's explanation when none can be found or built.
 */
export function temporalCliPath(): string {
  try {
    return execFileSync('bash', [join(REPO_ROOT, 'scripts/ensure-temporal.sh')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    }).trim();
  } catch {
    throw new Error('no Temporal CLI available (scripts/ensure-temporal.sh failed; see its message above)');
  }
}

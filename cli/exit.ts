import { EXIT, exitCodeFor, type ExitCode } from '../common/failures';

/**
 * How every command ends on an error: its message on stderr (bad input as `{ status: 'rejected', error }` on stdout
 * with `--json`), and the exit code the failure registry declares for it (common/failures.ts: 2 bad input, nothing
 * changed; 1 failed).
 */
export function reportError(err: unknown, json = false): ExitCode {
  const code = exitCodeFor(err);
  const message = err instanceof Error ? err.message : String(err);
  if (code === EXIT.badInput && json) console.log(JSON.stringify({ status: 'rejected', error: message }));
  else console.error(`groupsnap: ${message}`);
  return code;
}

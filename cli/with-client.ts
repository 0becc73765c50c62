/** How every command that talks to Temporal runs: connect, act, print (or `--json`), set the exit code. */
import { Client, Connection } from '@temporalio/client';
import { temporalSettings, type TemporalOverrides } from '../common/config';
import { EXIT } from './commands';
import { reportError } from './exit';

export interface CommonOptions extends TemporalOverrides {
  json?: boolean;
}

/**
 * Connects, runs `fn`, prints its output (JSON with `--json`) and sets the exit code: 0 done, 1 failed,
 * 2 bad input (nothing changed).
 */
export async function withClient<T>(
  opts: CommonOptions,
  fn: (client: Client) => Promise<T>,
  render: (value: T) => string,
  failed: (value: T) => boolean = () => false,
): Promise<void> {
  const { connectionOptions, namespace } = temporalSettings(opts);
  const connection = await Connection.connect(connectionOptions as Parameters<typeof Connection.connect>[0]);
  try {
    const value = await fn(new Client({ connection, namespace }));
    const out = opts.json ? JSON.stringify(value ?? null, null, 2) : render(value);
    if (out) console.log(out);
    process.exitCode = failed(value) ? EXIT.failed : EXIT.ok;
  } catch (err) {
    process.exitCode = reportError(err, opts.json);
  } finally {
    await connection.close();
  }
}

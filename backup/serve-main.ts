#!/usr/bin/env node
/**
 * The serving process's own entry (`node serve-main.js repo serve-exports <spec file>`, started by
 * ./serve-process.ts): the same process as the CLI's hidden `groupsnap repo serve-exports`, without loading the
 * whole CLI (its commands, the Temporal client, the libvirt binding). Node loads this in about a third of the time,
 * and an instant restore waits for it before its VMs can start (docs/adr/0013-instant-restore.md).
 */
import { resolve } from 'node:path';
import { runServeProcess, SERVE_PROCESS_ARGS } from './serve-process';

/** One log line on stderr (the process's log file), as the CLI writes them (cli/commands.ts `logLine`). */
function logLine(message: string, fields: Record<string, unknown> = {}): void {
  console.error(JSON.stringify({ time: new Date().toISOString(), msg: message, ...fields }));
}

async function main(argv: string[]): Promise<number> {
  const [repo, sub, specFile, ...rest] = argv;
  if (repo !== SERVE_PROCESS_ARGS[0] || sub !== SERVE_PROCESS_ARGS[1] || !specFile || rest.length) {
    process.stderr.write(`usage: serve-main.js ${SERVE_PROCESS_ARGS.join(' ')} <spec file>\n`);
    return 2;
  }
  return runServeProcess(resolve(specFile), logLine);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    logLine('the NBD server failed', { error: (err as Error).message });
    process.exitCode = 1;
  },
);

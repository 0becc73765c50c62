import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { hostsWithoutWorker } from '../../client';
import { REPO_ROOT } from '../../dev/tools';

export const CLI = join(REPO_ROOT, 'dist/cli/main.js');

/** A `groupsnap worker` in a process of its own (so a test can SIGKILL it), started from the built CLI. */
export class WorkerProcess {
  private child: ChildProcess | undefined;
  output = '';

  constructor(
    readonly hostId: string,
    readonly stateDir: string,
    readonly address: string,
    /** Extra CLI flags; `workflows` also runs the workflow worker (without it: `--no-workflows`). */
    readonly options: { args?: string[]; workflows?: boolean; env?: Record<string, string> } = {},
  ) {}

  async start(client: Client, timeoutMs = 60_000): Promise<void> {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run 'npm run build' (npm test does)`);
    const child = spawn(
      process.execPath,
      [
        CLI,
        'worker',
        '--host',
        this.hostId,
        '--state-dir',
        this.stateDir,
        '--address',
        this.address,
        ...(this.options.workflows ? [] : ['--no-workflows']),
        ...(this.options.args ?? []),
      ],
      // Jest gives a test file its own process.env: pass it on (a child would otherwise get the runner's).
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.options.env } },
    );
    this.child = child;
    child.stdout!.on('data', (d) => (this.output += d));
    child.stderr!.on('data', (d) => (this.output += d));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`worker ${this.hostId} exited (${child.exitCode}):\n${this.output}`);
      if (this.output.includes('"worker started"') && (await hostsWithoutWorker(client, [this.hostId])).length === 0)
        return;
      if (Date.now() > deadline)
        throw new Error(`worker ${this.hostId} not polling after ${timeoutMs} ms:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.kill(signal);
    });
  }
}

// The addon and process/environment lifetime, in child processes.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

const fixture = (name: string) => path.join(__dirname, 'fixtures', name);

describe('process lifetime', () => {
  it('lets a process exit with an open connection, a live subscription and idle pool threads', () => {
    // execFileSync throws if the child is still running at the timeout, or exits non-zero (e.g. aborts).
    const out = execFileSync(process.execPath, [fixture('exit-child.js')], { encoding: 'utf8', timeout: 20000 });
    const { events, threads } = JSON.parse(out.trim());
    expect(events).toBe(2);
    expect(threads).toBeGreaterThan(0);
  });

  it('survives worker threads being terminated with calls and events in flight', () => {
    const out = execFileSync(process.execPath, [fixture('worker-churn.js')], { encoding: 'utf8', timeout: 60000 });
    expect(out.trim()).toBe('ok');
  });
});

// 10,000 lookup + state + free cycles in a child `node --expose-gc`; RSS after GC must not keep growing.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { SYSTEM_URI, VmFleet } from './helpers/vms';

const CHILD = path.join(__dirname, 'fixtures', 'leak-child.js');
const LIMIT = 20 * 1024 * 1024;

function run(uri: string, domain: string, iterations: number): { rss1000: number; rssEnd: number } {
  const out = execFileSync(process.execPath, ['--expose-gc', CHILD, uri, domain, String(iterations)], {
    encoding: 'utf8',
    timeout: 170000,
  });
  return JSON.parse(out.trim().split('\n').pop() as string);
}

describe('memory', () => {
  const fleet = new VmFleet();

  afterAll(() => fleet.cleanup());

  it('does not leak over 10,000 lookup+state+free calls on test:///default', () => {
    const { rss1000, rssEnd } = run('test:///default', 'test', 10000);
    expect(rssEnd - rss1000).toBeLessThan(LIMIT);
  });

  it('does not leak over 10,000 lookup+state+free calls on qemu:///system', async () => {
    await fleet.connect();
    const vm = await fleet.define(1);
    const { rss1000, rssEnd } = run(SYSTEM_URI, vm.name, 10000);
    expect(rssEnd - rss1000).toBeLessThan(LIMIT);
  });
});

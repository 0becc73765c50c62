import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { GroupSnapshotResult } from '../common/types';
import { FakeHost } from './helpers/fake-hosts';
import { testServerAddress, uniqueId } from './helpers/temporal';
import { CLI } from './helpers/worker-process';
import { startHosts, type RunningHosts } from './helpers/workers';

const exec = promisify(execFile);

async function groupsnap(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, ...args, '--address', testServerAddress()]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('groupsnap snapshot (CLI)', () => {
  let host: FakeHost;
  let hosts: RunningHosts;

  beforeAll(async () => {
    host = new FakeHost(uniqueId('cli'));
    hosts = await startHosts([host]);
  });

  afterAll(async () => {
    await hosts?.stop();
    host?.cleanup();
  });

  it('prints one JSON result and exits 0 on success', async () => {
    const [a, b] = [uniqueId('a'), uniqueId('b')];
    host.addVm(a);
    host.addVm(b);
    const run = await groupsnap(
      'snapshot',
      '--vm',
      `${a}@${host.hostId}`,
      '--vm',
      `${b}@${host.hostId}`,
      '--label',
      'nightly',
      '--json',
    );
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as GroupSnapshotResult;
    expect(result).toMatchObject({ status: 'completed', label: 'nightly', group: 'adhoc' });
    expect(result.snapshotId).toMatch(/^gs-\d{8}T\d{6}Z-[0-9a-f]{6}$/);
    expect(result.workflowId).toBe(`group-snapshot/adhoc/${result.snapshotId}`);
    expect(result.groupFreezeMs).toBeGreaterThan(0);
    for (const vm of result.vms) {
      expect(vm).toMatchObject({ host: host.hostId, state: 'running', outcome: 'snapshotted' });
      expect(vm.freezeMs).toBeGreaterThan(0);
      expect(vm.disks).toEqual([
        { target: 'vda', image: host.chain(vm.domain, 'vda')[0], overlay: host.chain(vm.domain, 'vda')[1] },
        { target: 'vdb', image: host.chain(vm.domain, 'vdb')[0], overlay: host.chain(vm.domain, 'vdb')[1] },
      ]);
    }
  });

  it('exits 1 with the per-VM outcome when the snapshot failed and was compensated', async () => {
    const [a, b] = [uniqueId('a'), uniqueId('b')];
    host.addVm(a);
    host.addVm(b);
    host.hypervisor.failOn('snapshot', b);
    const run = await groupsnap('snapshot', '--vm', `${a}@${host.hostId}`, '--vm', `${b}@${host.hostId}`, '--json');
    expect(run.code).toBe(1);
    const result = JSON.parse(run.stdout) as GroupSnapshotResult;
    expect(result.status).toBe('failed');
    expect(result.vms.find((v) => v.domain === b)!.error).toContain('injected snapshot failure');
    expect(host.state(a)).toBe('running');
    expect(host.chain(a)).toHaveLength(1);
  });

  it.each([
    [
      'an unknown VM',
      (vm: string, h: string) => ['--vm', `${vm}@${h}`, '--vm', `missing@${h}`],
      /VM "missing" not found/,
    ],
    ['a VM listed twice', (vm: string, h: string) => ['--vm', `${vm}@${h}`, '--vm', `${vm}@${h}`], /listed twice/],
    ['an unsafe label', (vm: string, h: string) => ['--vm', `${vm}@${h}`, '--label', 'a/../b'], /label .* is not safe/],
    ['a host without a worker', (vm: string) => ['--vm', `${vm}@nowhere`], /no worker polls host nowhere/],
    [
      'a bad --max-freeze',
      (vm: string, h: string) => ['--vm', `${vm}@${h}`, '--max-freeze', 'soon'],
      /expected an integer/,
    ],
    [
      'a bad --quiesce',
      (vm: string, h: string) => ['--vm', `${vm}@${h}`, '--quiesce', 'maybe'],
      /expected one of none, agent/,
    ],
  ])('exits 2 on %s, touching nothing', async (_what, args, message) => {
    const vm = uniqueId('x');
    host.addVm(vm);
    const before = host.hypervisor.calls.filter((c) => !c.startsWith('describe')).length;
    const run = await groupsnap('snapshot', ...args(vm, host.hostId));
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(host.hypervisor.calls.filter((c) => !c.startsWith('describe'))).toHaveLength(before);
    expect(host.state(vm)).toBe('running');
  });
});

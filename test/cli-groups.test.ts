import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { DeleteSnapshotResult, GroupRunResult, GroupSnapshotListing, RestoreResult } from '../common/groups';
import { FakeHost } from './helpers/fake-hosts';
import { freshNamespace, testServerAddress, uniqueId } from './helpers/temporal';
import { CLI } from './helpers/worker-process';
import { startHosts, type RunningHosts } from './helpers/workers';

const exec = promisify(execFile);

/** The group, tag, schedule, snapshot list/delete and restore commands of the CLI (built dist/), with fake hosts. */
describe('groupsnap group / tag / schedule / snapshot / restore (CLI)', () => {
  let namespace: string;
  let host: FakeHost;
  let hosts: RunningHosts;

  async function groupsnap(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await exec(process.execPath, [
        CLI,
        ...args,
        '--address',
        testServerAddress(),
        '--namespace',
        namespace,
      ]);
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }
  const json = async <T>(...args: string[]): Promise<T> => {
    const run = await groupsnap(...args, '--json');
    if (run.code !== 0) throw new Error(`groupsnap ${args.join(' ')} exited ${run.code}: ${run.stderr}${run.stdout}`);
    return JSON.parse(run.stdout) as T;
  };

  beforeAll(async () => {
    namespace = await freshNamespace('gscli');
    host = new FakeHost(uniqueId('cg'));
    hosts = await startHosts([host], { namespace });
  });

  afterAll(async () => {
    await hosts?.stop();
    host?.cleanup();
  });

  it('tags VMs, creates a tag group, snapshots it by name, lists, deletes and restores its snapshots', async () => {
    const [a, b] = [uniqueId('a'), uniqueId('b')];
    host.addVm(a);
    host.addVm(b);
    const tag = uniqueId('t');
    const group = uniqueId('g');
    expect(await json<{ tags: string[] }>('tag', `${a}@${host.hostId}`, tag)).toMatchObject({ tags: [tag] });
    await json('tag', `${b}@${host.hostId}`, tag);
    await json('group', 'create', group, '--tag', tag);
    const shown = await json<{ members: { domain: string }[] }>('group', 'show', group);
    expect(shown.members.map((m) => m.domain).sort()).toEqual([a, b].sort());
    expect((await json<{ name: string }[]>('group', 'list')).map((g) => g.name)).toContain(group);

    const s1 = await json<GroupRunResult>('snapshot', group, '--label', 'first');
    expect(s1.snapshot).toMatchObject({ status: 'completed', label: 'first' });
    const s2 = await json<GroupRunResult>('snapshot', group);
    const listed = await json<GroupSnapshotListing[]>('snapshot', 'list', group);
    expect(listed.map((s) => s.snapshotId)).toEqual([s2.snapshot.snapshotId, s1.snapshot.snapshotId]);

    const text = await groupsnap('snapshot', 'list', group);
    expect(text.stdout).toContain(s1.snapshot.snapshotId);

    const del = await json<DeleteSnapshotResult>('snapshot', 'delete', group, s1.snapshot.snapshotId);
    expect(del).toMatchObject({ status: 'deleted' });
    expect(del.vms.map((v) => v.outcome)).toEqual(['deleted', 'deleted']);

    const refused = await groupsnap('restore', group, s2.snapshot.snapshotId, '--in-place');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('--yes');
    const clone = await json<RestoreResult>('restore', group, s2.snapshot.snapshotId, '--as-clone', '--suffix', '-c');
    expect(clone.status).toBe('restored');
    expect(clone.vms.map((v) => v.clone).sort()).toEqual([`${a}-c`, `${b}-c`].sort());
    expect(host.state(`${a}-c`)).toBe('running');

    await json('untag', `${a}@${host.hostId}`, tag);
    expect((await json<{ members: unknown[] }>('group', 'show', group)).members).toHaveLength(1);
  });

  it('manages a schedule and refuses bad input with exit code 2, changing nothing', async () => {
    const vm = uniqueId('s');
    host.addVm(vm);
    const group = uniqueId('sg');
    await json('group', 'create', group, '--vm', `${vm}@${host.hostId}`);
    for (const bad of [
      ['schedule', 'create', group, '--cron', '* * *'],
      ['schedule', 'create', group, '--cron', '0 * * * *', '--timezone', 'Nowhere/City'],
      ['schedule', 'create', group, '--cron', '0 * * * *', '--keep-last', '0'],
      ['schedule', 'create', group, '--cron', '0 * * * *', '--overlap', 'sometimes'],
      ['schedule', 'create', group, '--cron', '0 * * * *', '--catchup', 'soon'],
    ]) {
      const run = await groupsnap(...bad);
      expect({ bad, code: run.code }).toEqual({ bad, code: 2 });
    }
    expect(await json<unknown[]>('schedule', 'list')).toEqual([]);

    await json('schedule', 'create', group, '--cron', '30 2 * * *', '--timezone', 'Europe/Paris', '--keep-daily', '7');
    const shown = await json<{ cron: string[]; timezone: string; retention: unknown; paused: boolean }>(
      'schedule',
      'show',
      group,
    );
    expect(shown).toMatchObject({
      cron: ['30 2 * * *'],
      timezone: 'Europe/Paris',
      retention: { daily: 7 },
      paused: false,
    });
    await json('schedule', 'pause', group, '--note', 'maintenance');
    expect(await json('schedule', 'show', group)).toMatchObject({ paused: true, note: 'maintenance' });
    await json('schedule', 'unpause', group);

    const del = await groupsnap('group', 'delete', group);
    expect(del.code).toBe(2);
    expect(del.stderr).toContain('has a schedule');
    await json('group', 'delete', group, '--with-schedule');
    expect((await groupsnap('group', 'show', group)).code).toBe(2);
    expect((await groupsnap('schedule', 'show', group)).code).toBe(2);
    expect((await groupsnap('snapshot', uniqueId('nope'))).code).toBe(2);
    expect((await groupsnap('snapshot', 'delete', group, '../../etc')).code).toBe(2);
    expect((await groupsnap('group', 'create', 'list', '--tag', 'x')).code).toBe(2);
  });
});

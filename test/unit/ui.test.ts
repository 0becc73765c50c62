import type { GroupSnapshotResult, SnapshotProgress } from '../../common/types';
import {
  DetailsBatcher,
  markdownTable,
  onHostSummary,
  payloadBytes,
  progressDetails,
  snapshotDetails,
  snapshotSummary,
  truncate,
} from '../../workflows/ui';

/** The Markdown groupsnap hands to the Temporal UI (the browser test checks how the UI shows it). */
describe('Temporal UI texts', () => {
  const input = {
    group: 'shop',
    label: 'nightly',
    snapshotId: 'gs-1',
    maxFreezeMs: 5000,
    quiesce: 'none' as const,
    vms: [
      { domain: 'db-1', host: 'hv-a' },
      { domain: 'db|2', host: 'hv-a' },
      { domain: 'app_1', host: 'hv-b' },
    ],
  };

  it('summarises a group snapshot in one line', () => {
    expect(snapshotSummary(input)).toBe('Group snapshot of shop (nightly): 3 VMs on 2 hosts');
    expect(snapshotSummary({ ...input, label: undefined, vms: [input.vms[0]] })).toBe(
      'Group snapshot of shop: 1 VM on 1 host',
    );
  });

  it('details options and members as Markdown tables, escaping what Markdown would eat', () => {
    const details = snapshotDetails(input);
    expect(details).toContain('| max freeze | 5000 ms |');
    expect(details).toContain('| quiesce | none |');
    expect(details).toContain('| label | nightly |');
    expect(details).toContain('**Members** (3 VMs)');
    expect(details).toContain(
      '| domain | host |\n| --- | --- |\n| db-1 | hv-a |\n| db\\|2 | hv-a |\n| app\\_1 | hv-b |',
    );
  });

  it('builds tables from rows in the given column order, leaving empty cells empty', () => {
    expect(
      markdownTable(
        [
          { b: 1, a: 'x' },
          { a: undefined, b: true },
        ],
        ['a', 'b'],
      ),
    ).toBe('| a | b |\n| --- | --- |\n| x | 1 |\n|  | true |');
    expect(markdownTable([{ k: 'v' }])).toBe('| k |\n| --- |\n| v |');
    expect(markdownTable([])).toBe('');
  });

  it('stays inside the server limits on summary and details for large groups and long non-ASCII names', () => {
    const vms = Array.from({ length: 500 }, (_, i) => ({
      domain: `datenbank-äöü-€-${'x'.repeat(40)}-${i}`,
      host: 'hv-a',
    }));
    const details = snapshotDetails({ ...input, vms });
    expect(payloadBytes(details)).toBeLessThanOrEqual(20_000 - 100);
    expect(details).toMatch(/\n\n… and \d+ more\n/);
    const summary = onHostSummary(
      'pause + snapshot',
      vms.map((v) => v.domain),
      'hv-a',
    );
    expect(payloadBytes(summary)).toBeLessThanOrEqual(400 - 100);
    expect(summary).toMatch(/^pause \+ snapshot datenbank-.* \(\+\d+ more\) on hv-a$/);
    expect(payloadBytes('é"')).toBe(6); // "é\"" in JSON, é is 2 bytes
    expect(truncate('🙂'.repeat(200), 41)).toBe(`${'🙂'.repeat(9)}…`); // 2 quotes + 9 x 4 + 3
  });

  it('shows the live phase and per-VM states, then the outcome and errors once the result is known', () => {
    const progress: SnapshotProgress = {
      phase: 'freezing',
      snapshotId: 'gs-1',
      vms: [
        { domain: 'db-1', host: 'hv-a', state: 'snapshotted' },
        { domain: 'db-2', host: 'hv-a', state: 'paused' },
      ],
    };
    const live = progressDetails(progress);
    expect(live).toContain('**Phase** freezing: pausing and snapshotting the VMs');
    expect(live).toContain('| domain | host | state |\n| --- | --- | --- |\n| db-1 | hv-a | snapshotted |');
    const result: GroupSnapshotResult = {
      snapshotId: 'gs-1',
      workflowId: 'w',
      group: 'shop',
      status: 'failed',
      groupFreezeMs: 12,
      maxVmFreezeMs: 11,
      error: 'db-2@hv-a: boom',
      vms: [
        { domain: 'db-1', host: 'hv-a', outcome: 'rolled-back', pausedByUs: true, freezeMs: 11, disks: [] },
        { domain: 'db-2', host: 'hv-a', outcome: 'not-snapshotted', pausedByUs: true, disks: [], error: 'boom' },
      ],
    };
    const final = progressDetails({ ...progress, phase: 'compensating' }, result);
    expect(final).toContain('**Phase** failed and compensated');
    expect(final).toContain('**Status** failed, group freeze 12 ms, longest VM freeze 11 ms');
    expect(final).toContain('**Error** db-2@hv-a: boom');
    expect(final).toContain('| domain | host | state | outcome | freeze (ms) | error |');
    expect(final).toContain('| db-2 | hv-a | paused | not-snapshotted |  | boom |');
    expect(progressDetails(progress, { ...result, status: 'completed', error: undefined, vms: [] })).not.toContain(
      'error',
    );
  });

  it("shows each VM's pause, snapshot and resume from the first pause, and the instant the group was all paused", () => {
    const progress: SnapshotProgress = {
      phase: 'done',
      snapshotId: 'gs-2',
      vms: [
        { domain: 'db-1', host: 'hv-a', state: 'resumed' },
        { domain: 'db-2', host: 'hv-a', state: 'resumed' },
      ],
    };
    const vm = (domain: string, p: number, s: number, r: number) => ({
      domain,
      host: 'hv-a',
      outcome: 'snapshotted' as const,
      pausedByUs: true,
      freezeMs: r - p,
      disks: [],
      pausedAtMs: 1_000_000 + p,
      snapshottedAtMs: 1_000_000 + s,
      resumedAtMs: 1_000_000 + r,
    });
    const text = progressDetails(progress, {
      snapshotId: 'gs-2',
      workflowId: 'w',
      group: 'shop',
      status: 'completed',
      resumeWhen: 'group-paused',
      allPausedAtMs: 1_000_004.25,
      groupFreezeMs: 60,
      maxVmFreezeMs: 56,
      vms: [vm('db-1', 0, 30, 33), vm('db-2', 4.25, 57, 60)],
    });
    expect(text).toContain('**Cut** every VM paused at 4.3 ms');
    expect(text).toContain('once its snapshot was taken and the group paused');
    expect(text).toContain(
      '| domain | host | state | outcome | freeze (ms) | paused at | snapshotted at | resumed at |',
    );
    expect(text).toContain('| db-1 | hv-a | resumed | snapshotted | 33 | 0 | 30 | 33 |');
    expect(text).toContain('| db-2 | hv-a | resumed | snapshotted | 55.75 | 4.3 | 57 | 60 |');
  });
});

describe('DetailsBatcher (current details of a run with thousands of VMs, issue 29)', () => {
  it('renders once for every state change made in one go, not once per change', async () => {
    let renders = 0;
    const batcher = new DetailsBatcher(() => renders++);
    for (let i = 0; i < 2048; i++) batcher.request();
    expect(renders).toBe(0);
    await Promise.resolve();
    expect(renders).toBe(1);
    batcher.request();
    await Promise.resolve();
    expect(renders).toBe(2);
  });

  it('drops a queued render when the details are shown at once (the result is never overwritten)', async () => {
    const shown: string[] = [];
    const batcher = new DetailsBatcher(() => shown.push('progress'));
    batcher.request();
    batcher.now(() => shown.push('result'));
    await Promise.resolve();
    await Promise.resolve();
    expect(shown).toEqual(['result']);
  });
});

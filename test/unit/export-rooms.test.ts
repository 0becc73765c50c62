import type { Context } from '@temporalio/activity';
import { EXPORT_PROGRESS_SIGNAL, KeepAlive, ProgressSignals } from '../../activities/export/disk';
import type { ExportHold } from '../../activities/export-hold';
import { usableBase, type ExportBase } from '../../backup/export-disk';
import type { DiskManifest } from '../../backup/manifest';

const MiB = 1024 * 1024;
const chain = ['/img/db-1.vda.gs-2.qcow2', '/img/db-1.vda.gs-1.qcow2', '/img/db-1.vda.qcow2'];
const baseOf = (image: string, m: Partial<DiskManifest> = {}): ExportBase => ({
  snapshotId: 'gs-1',
  image,
  manifest: { chunkSize: MiB, virtualSize: 4 * MiB, chunks: [null, 'a', null, 'b'], ...m } as DiskManifest,
});

describe('the base an export may be incremental against (usableBase)', () => {
  it('takes a base that is still a layer below the point and cut the same way, with its depth', () => {
    const base = baseOf(chain[1]);
    expect(usableBase(base, chain, MiB, 4 * MiB, 4)).toEqual({ base, baseDepth: 1 });
    expect(usableBase(baseOf(chain[2]), chain, MiB, 4 * MiB, 4).baseDepth).toBe(2);
  });

  it('refuses a base merged away, the point itself, or one cut another way (a full export then)', () => {
    expect(usableBase(undefined, chain, MiB, 4 * MiB, 4)).toEqual({ baseDepth: -1 });
    expect(usableBase(baseOf('/img/merged.qcow2'), chain, MiB, 4 * MiB, 4).base).toBeUndefined();
    expect(usableBase(baseOf(chain[0]), chain, MiB, 4 * MiB, 4).base).toBeUndefined();
    expect(usableBase(baseOf(chain[1], { chunkSize: 2 * MiB }), chain, MiB, 4 * MiB, 4).base).toBeUndefined();
    expect(usableBase(baseOf(chain[1], { virtualSize: 8 * MiB }), chain, MiB, 4 * MiB, 4).base).toBeUndefined();
    expect(usableBase(baseOf(chain[1], { chunks: ['a'] }), chain, MiB, 4 * MiB, 4).base).toBeUndefined();
  });
});

describe("an export's heartbeats (KeepAlive)", () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('beats at once and every second with the latest details, refreshing the hold, until stopped', () => {
    const heartbeat = jest.fn();
    const beats = new KeepAlive({ heartbeat } as unknown as Context);
    expect(heartbeat).toHaveBeenLastCalledWith({ phase: 'starting' });
    beats.beat({ phase: 'reading the chain' });
    const refresh = jest.fn();
    beats.hold = { refresh } as unknown as ExportHold;
    jest.advanceTimersByTime(1000);
    expect(heartbeat).toHaveBeenLastCalledWith({ phase: 'reading the chain' });
    expect(refresh).toHaveBeenCalledTimes(1);
    beats.stop();
    const calls = heartbeat.mock.calls.length;
    jest.advanceTimersByTime(5000);
    expect(heartbeat).toHaveBeenCalledTimes(calls);
  });

  it('works outside an activity (no context): nothing to beat, nothing thrown', () => {
    const beats = new KeepAlive(undefined);
    beats.beat({ phase: 'x' });
    beats.stop();
  });
});

describe("an export's progress signals (ProgressSignals)", () => {
  const report = (bytesDone: number) => ({
    domain: 'db-1',
    target: 'vda',
    bytesDone,
    bytesTotal: 10,
    bytesUploaded: 0,
  });
  const contextWith = (signal: jest.Mock) =>
    ({
      info: { workflowExecution: { workflowId: 'wf', runId: 'run' } },
      client: { workflow: { getHandle: () => ({ signal }) } },
    }) as unknown as Context;

  it('signals the latest report at the end, never the same report twice', async () => {
    const signal = jest.fn().mockResolvedValue(undefined);
    const signals = new ProgressSignals(contextWith(signal), 60_000);
    signals.start();
    signals.note(report(1));
    signals.note(report(2));
    await signals.finish();
    await signals.finish();
    expect(signal.mock.calls).toEqual([[EXPORT_PROGRESS_SIGNAL, report(2)]]);
  });

  it('is best effort: a failing signal, or no context, throws nothing', async () => {
    const signals = new ProgressSignals(contextWith(jest.fn().mockRejectedValue(new Error('no client'))), 60_000);
    signals.note(report(1));
    await expect(signals.finish()).resolves.toBeUndefined();
    const none = new ProgressSignals(undefined, 60_000);
    none.note(report(1));
    await expect(none.finish()).resolves.toBeUndefined();
  });
});

import { runKey, UNDO_MEMORY_MS, UndoMemory } from '../../activities/host/undo-memory';

/** The host's memory of undos and running freezes (activities/host/undo-memory.ts), on a fake clock. */
describe('undo memory', () => {
  let t: number;
  let memory: UndoMemory;

  beforeEach(() => {
    t = 1_000_000;
    memory = new UndoMemory(() => t);
  });

  it('keys a run by its lease owner and snapshot id: a new run may reuse the snapshot id of a failed one', () => {
    const failed = runKey({ leaseOwner: 'run-1', snapshotId: 's1' });
    memory.startUndo(failed);
    expect(memory.isUndoing(failed)).toBe(true);
    expect(memory.isUndoing(runKey({ leaseOwner: 'run-2', snapshotId: 's1' }))).toBe(false);
  });

  it('remembers an undo for UNDO_MEMORY_MS, and forgets it at the next undo after that', () => {
    memory.startUndo('a/s1');
    t += UNDO_MEMORY_MS;
    memory.startUndo('b/s2');
    expect(memory.isUndoing('a/s1')).toBe(true); // exactly the memory: still remembered
    t += 1;
    memory.startUndo('c/s3');
    expect(memory.isUndoing('a/s1')).toBe(false);
    expect(memory.isUndoing('b/s2')).toBe(true);
    expect(memory.isUndoing('c/s3')).toBe(true);
  });

  it('forgets only on a new undo, never by itself (a run undone long ago is still refused until then)', () => {
    memory.startUndo('a/s1');
    t += 10 * UNDO_MEMORY_MS;
    expect(memory.isUndoing('a/s1')).toBe(true);
  });

  it('a memory of its own length, on its own clock', () => {
    const short = new UndoMemory(() => t, 100);
    short.startUndo('a/s1');
    t += 101;
    short.startUndo('b/s2');
    expect(short.isUndoing('a/s1')).toBe(false);
  });

  it('tracks the running freeze of a run, and ends only the one it was given', async () => {
    const first = Promise.resolve(1);
    const second = Promise.resolve(2);
    memory.freezeStarted('a/s1', first);
    expect(memory.runningFreeze('a/s1')).toBe(first);
    memory.freezeStarted('a/s1', second); // a retry of the same run, in the same process
    expect(memory.freezeEnded('a/s1', first)).toBe(false);
    expect(memory.runningFreeze('a/s1')).toBe(second);
    expect(memory.freezeEnded('a/s1', second)).toBe(true);
    expect(memory.runningFreeze('a/s1')).toBeUndefined();
  });
});

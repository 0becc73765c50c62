import { CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { beating } from '../../activities/heartbeat';

/**
 * Heartbeats of long host activities (block commits, clone boots) in a real activity context, the SDK's
 * MockActivityEnvironment. Real timers: the heartbeat must run in the activity's async context, which Jest's fake
 * timers do not carry into their callbacks. Counts are lower bounds or "no more", never durations.
 */
describe('beating (heartbeats while a long host step runs)', () => {
  let env: MockActivityEnvironment;
  let beats: number;

  beforeEach(() => {
    env = new MockActivityEnvironment();
    beats = 0;
    env.on('heartbeat', () => beats++);
  });

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  async function untilBeats(n: number): Promise<void> {
    for (let waited = 0; beats < n; waited += 50) {
      if (waited > 30_000) throw new Error(`only ${beats} heartbeats, expected ${n}`);
      await sleep(50);
    }
  }

  /** A step that ends when `finish` or `fail` is called. */
  function step<T>(): { run: () => Promise<T>; finish: (v: T) => void; fail: (e: Error) => void } {
    let finish!: (v: T) => void;
    let fail!: (e: Error) => void;
    const done = new Promise<T>((resolve, reject) => {
      finish = resolve;
      fail = reject;
    });
    return { run: () => done, finish, fail };
  }

  it('heartbeats at once, then again and again while the step runs, and returns its result', async () => {
    const s = step<string>();
    const result = env.run(() => beating(s.run));
    expect(beats).toBe(1);
    await untilBeats(3);
    s.finish('merged');
    await expect(result).resolves.toBe('merged');
  });

  it('stops heartbeating once the step is over, also when it failed', async () => {
    const ok = step<number>();
    const first = env.run(() => beating(ok.run));
    ok.finish(1);
    await first;
    const failing = step<number>();
    const second = env.run(() => beating(failing.run));
    failing.fail(new Error('block commit failed'));
    await expect(second).rejects.toThrow('block commit failed');
    const after = beats;
    await sleep(2500); // more than two heartbeat intervals
    expect(beats).toBe(after);
  });

  it('a cancel request does not cut a step short: it runs to its end, heartbeating on', async () => {
    const s = step<string>();
    let cancelled: unknown;
    const result = env.run(async () => {
      void env.context.cancelled.catch((err: unknown) => (cancelled = err));
      return beating(s.run);
    });
    env.cancel();
    const before = beats;
    await untilBeats(before + 2);
    s.finish('committed');
    await expect(result).resolves.toBe('committed');
    expect(cancelled).toBeInstanceOf(CancelledFailure);
  });
});

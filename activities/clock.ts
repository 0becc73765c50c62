import { performance } from 'node:perf_hooks';

/** Wall-clock time in milliseconds with sub-millisecond resolution (comparable across processes on a host). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

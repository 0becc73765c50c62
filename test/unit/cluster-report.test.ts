import { fitLine, summarize } from '../../bench/cluster-report';

/** The simulated-host section's helpers (bench:cluster, issue 29): the freeze-vs-hosts fit and run errors. */
describe('cluster bench report', () => {
  it('fits freeze against hosts by least squares', () => {
    const { a, b } = fitLine([
      [8, 100],
      [64, 156],
      [256, 348],
    ]);
    expect(a).toBeCloseTo(92, 6);
    expect(b).toBeCloseTo(1, 6);
  });

  it("counts a run's per-VM repeats of the same error", () => {
    expect(summarize('vm0@sim64-2: the group was not released: x; vm1@sim64-2: the group was not released: x; y')).toBe(
      '2x the group was not released: x; y',
    );
    expect(summarize(undefined)).toBe('no error recorded');
  });
});

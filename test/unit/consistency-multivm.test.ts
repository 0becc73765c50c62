import { evaluateMultiVmCut, formatMultiVmCut, parseMultiVmResult } from '../../dev/consistency-multivm-check';

// The lines scripts/guest-pgrep-init.sh (and the initramfs of scripts/build-guest-pgrep.sh, for the client) print.
const line = (fields: Record<string, string | number>) =>
  `GSMV-RESULT ${Object.entries(fields)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ')}\r\n`;
const db = (role: string, maxid: number, over: Record<string, string | number> = {}) =>
  parseMultiVmResult(
    line({
      role,
      mount: 1,
      start: 1,
      recovered: 1,
      promoted: role === 'standby' ? 1 : '-',
      amcheck: 1,
      invariant: 1,
      abal: -1234,
      tbal: -1234,
      bbal: -1234,
      delta: -1234,
      hist: maxid,
      commits: maxid,
      maxid,
      contiguous: 1,
      ok: 1,
      ...over,
    }),
  )!;
const client = (acked: number) => parseMultiVmResult(line({ role: 'client', acked, ok: 1 }))!;

describe('the replicated PostgreSQL cut check (dev/consistency-multivm-check.ts)', () => {
  test('parses a result line among other console output, and not one cut short', () => {
    const text = `[  1.0] booting\nGSMV-LOG x\n${line({ role: 'client', acked: 41, ok: 1 })}GSMV-END\n`;
    expect(parseMultiVmResult(text)).toEqual({ role: 'client', acked: '41', ok: '1' });
    expect(parseMultiVmResult('GSMV-RESULT role=client acked=4')).toBeUndefined();
    expect(parseMultiVmResult('nothing here\n')).toBeUndefined();
  });

  test('a consistent cut: both databases hold every acknowledged commit (and may hold one more)', () => {
    const r = evaluateMultiVmCut({ client: client(120), primary: db('primary', 121), standby: db('standby', 120) });
    expect(r).toMatchObject({ ok: true, acked: 120, maxid: { primary: 121, standby: 120 }, violations: [] });
    expect(formatMultiVmCut(r)).toBe('acked 120, primary 121, standby 120: ok');
  });

  test('acknowledged commits missing on a database violate `acked`, with the number lost', () => {
    const r = evaluateMultiVmCut({ client: client(130), primary: db('primary', 121), standby: db('standby', 121) });
    expect(r.ok).toBe(false);
    expect(r.lost).toEqual({ primary: 9, standby: 9 });
    expect(r.violations.map((v) => `${v.role}:${v.invariant}`)).toEqual(['primary:acked', 'standby:acked']);
    expect(formatMultiVmCut(r)).toMatch(/VIOLATED acked \(primary has commits up to 121, the client had 130/);
  });

  test('balance, amcheck, gaps in the commit ids, a database that does not start, a standby not promoted', () => {
    const r = evaluateMultiVmCut({
      client: client(10),
      primary: db('primary', 12, { invariant: 0, abal: 5, amcheck: 0, commits: 11, contiguous: 0 }),
      standby: db('standby', 0, { promoted: 0, start: 1 }),
    });
    expect(r.violations.map((v) => `${v.role}:${v.invariant}`)).toEqual([
      'primary:amcheck',
      'primary:balance',
      'primary:contiguous',
      'standby:start',
    ]);
    const down = evaluateMultiVmCut({ client: client(10), primary: db('primary', 0, { start: 0 }) });
    expect(down.violations.map((v) => `${v.role}:${v.invariant}`)).toEqual(['primary:start', 'standby:result']);
  });

  test('a clone that printed nothing is a violation, never a pass', () => {
    const r = evaluateMultiVmCut({ primary: db('primary', 3), standby: db('standby', 3) });
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual([expect.objectContaining({ role: 'client', invariant: 'result' })]);
  });
});

import { evaluateCut, parseHeader, type DiskState } from '../../dev/consistency-check';
import { compareReports, parseRecoveryLine, recoveryToVmState } from '../../dev/consistency-restore';

/**
 * The offline crash-consistency checker and the reading of the guests' recovery lines (pure; the checker is used on
 * real snapshots by test/consistency.test.ts, see docs/consistency.md).
 */
describe('consistency checker', () => {
  const disk = (target: string, role: string, n: number, v = n): DiskState => ({
    target,
    image: `/x/${role}-${target}`,
    label: n ? { vda: 'A', vdb: 'B' }[target] : undefined,
    role: n ? role : undefined,
    n,
    v,
    recordOk: true,
    header: '',
  });
  const cut = (w: [number, number], k: [number, number]) =>
    evaluateCut([
      { domain: 'w', disks: [disk('vda', 'writer', w[0]), disk('vdb', 'writer', w[1])] },
      { domain: 'k', disks: [disk('vda', 'acker', k[0]), disk('vdb', 'acker', k[1])] },
    ]).violations.map((v) => v.invariant);

  it('parses the guest sectors', () => {
    expect(parseHeader(`${'GSHDR writer A 12 12'.padEnd(511)}\n`)).toEqual({
      role: 'writer',
      label: 'A',
      n: 12,
      v: 12,
    });
    expect(parseHeader(`${'GSREC acker B 3 3'.padEnd(511)}\n`, 'GSREC')).toMatchObject({ label: 'B', n: 3 });
    expect(parseHeader('\0'.repeat(512))).toBeUndefined();
  });

  it('accepts every state a simultaneous power loss can leave, and names what breaks otherwise', () => {
    // The loop, step n: writer A, writer B, (relay) acker A, acker B, (relay) writer A of n + 1, ...
    for (const ok of [
      [
        [0, 0],
        [0, 0],
      ],
      [
        [1, 0],
        [0, 0],
      ],
      [
        [1, 1],
        [0, 0],
      ],
      [
        [1, 1],
        [1, 0],
      ],
      [
        [1, 1],
        [1, 1],
      ],
      [
        [2, 1],
        [1, 1],
      ],
    ] as [number, number][][])
      expect(cut(ok[0] as [number, number], ok[1] as [number, number])).toEqual([]);
    expect(cut([1, 2], [1, 1])).toContain('cross-disk'); // writer's B ahead of its A
    expect(cut([3, 1], [1, 1])).toContain('cross-disk'); // A two steps ahead
    expect(cut([1, 1], [2, 2])).toEqual(['cross-vm']); // acknowledged before written
    expect(cut([3, 3], [1, 1])).toEqual(['cross-vm-lockstep']); // writer went on without the acknowledgement
    const [bad] = evaluateCut([
      { domain: 'w', disks: [{ ...disk('vda', 'writer', 2), recordOk: false }, disk('vdb', 'acker', 2)] },
    ]).violations;
    expect(bad.invariant).toBe('record');
  });

  it("reads the guests' recovery lines as the checker's disk states", () => {
    const line = (role: string, a: number | string, b: number, ok = 1, rec = 1) =>
      `gs: boot\r\nGROUPSNAP-RECOVERY role=${role} a=${a} b=${b} av=${a} bv=${b} arec=${rec} brec=1 alabel=1 ` +
      `blabel=1 ok=${ok}\r\ngs: workload ${role} started\r\n`;
    expect(parseRecoveryLine('GROUPSNAP-RECOVERY role=writer a=1 b=1')).toBeUndefined(); // cut short
    const w = parseRecoveryLine(line('writer', 5, 4))!.recovery;
    expect(w).toEqual({
      role: 'writer',
      a: 5,
      b: 4,
      av: 5,
      bv: 4,
      arec: true,
      brec: true,
      alabel: true,
      blabel: true,
      ok: true,
    });
    const state = (role: string, a: number | string, b: number, ok = 1, rec = 1) =>
      recoveryToVmState(role, parseRecoveryLine(line(role, a, b, ok, rec))!.recovery, `${role}-clone`);
    // The two clones' lines together give the cross-VM verdict.
    expect(evaluateCut([state('writer', 5, 4), state('acker', 4, 4)]).violations).toEqual([]);
    expect(evaluateCut([state('writer', 4, 4), state('acker', 5, 5)]).violations.map((v) => v.invariant)).toEqual([
      'cross-vm',
    ]);
    expect(evaluateCut([state('writer', 'x', 4, 0)]).violations.map((v) => v.invariant)).toContain('unreadable');
    expect(evaluateCut([state('writer', 3, 3, 0, 0)]).violations.map((v) => v.invariant)).toEqual(['record']);
    // Compared number for number with the offline check; a guest's own ok must match the checker's verdict.
    const offline = evaluateCut([
      { domain: 'writer', role: 'writer', disks: [disk('vda', 'writer', 5), disk('vdb', 'writer', 4)] },
      { domain: 'acker', role: 'acker', disks: [disk('vda', 'acker', 4), disk('vdb', 'acker', 4)] },
    ]);
    const guests = (wa: number, ok = 1) =>
      [line('writer', wa, 4, ok), line('acker', 4, 4)].map((l, i) => ({
        host: 'h',
        domain: ['writer', 'acker'][i],
        clone: 'c',
        consoleLog: '',
        ...parseRecoveryLine(l)!,
      }));
    const inside = (wa: number, ok = 1) =>
      evaluateCut(guests(wa, ok).map((g) => recoveryToVmState(g.domain, g.recovery, g.clone)));
    expect(compareReports(offline, inside(5), guests(5))).toEqual([]);
    expect(compareReports(offline, inside(4), guests(4))).toEqual([
      'writer/vda: n 4 inside, 5 offline',
      'writer/vda: v 4 inside, 5 offline',
    ]);
    expect(compareReports(offline, inside(5, 0), guests(5, 0))).toEqual(['writer: guest says ok=0']);
  });
});

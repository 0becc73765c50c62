import { ReleaseGates } from '../../activities/release-gates';

describe('ReleaseGates', () => {
  it("hands the workflow's decision to the freeze waiting for it", async () => {
    const gates = new ReleaseGates();
    const waiting = gates.wait('s1');
    gates.decide('s1', true);
    await expect(waiting).resolves.toBe(true);
  });

  it('keeps a decision that arrives before the freeze waits (an abort sent while a host still pauses)', async () => {
    const gates = new ReleaseGates();
    gates.decide('s1', false);
    await expect(gates.wait('s1')).resolves.toBe(false);
  });

  it('lets the first decision count and keeps snapshots apart', async () => {
    const gates = new ReleaseGates();
    const one = gates.wait('s1');
    const two = gates.wait('s2');
    gates.decide('s1', true);
    gates.decide('s1', false);
    gates.decide('s2', false);
    await expect(one).resolves.toBe(true);
    await expect(two).resolves.toBe(false);
  });

  it('drops decisions no freeze picked up once they are older than keepMs, and closed gates at once', () => {
    let now = 0;
    const gates = new ReleaseGates(() => now, 1000);
    gates.decide('stale', false);
    gates.decide('closed', true);
    gates.close('closed');
    expect(gates.size).toBe(1);
    now = 1001;
    gates.decide('fresh', true);
    expect(gates.size).toBe(1);
  });
});

import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHECK_PATH, createDrillActivities, TAIL_BYTES } from '../../activities/drill';
import { RestoreRecords } from '../../activities/restore-records';
import { HOST_ACTIVITY_SCHEMAS } from '../../common/host-requests';
import { BAD_INPUT } from '../../common/failures';
import { unguardedActivities } from '../../worker/activity-door';
import { hostActivities } from '../../worker/plugins';
import { FakeHost } from '../helpers/fake-hosts';
import { uniqueId } from '../helpers/temporal';

/** The host's door: every activity the host plugin registers has a request schema. */
describe('the door into host activities', () => {
  it('every activity the host plugin registers has a request schema, and every schema an activity', () => {
    const host = new FakeHost(uniqueId('door'));
    const stateDir = mkdtempSync(join(tmpdir(), 'gs-door-'));
    const { host: h, activities } = hostActivities({
      hostId: host.hostId,
      hypervisor: host.hypervisor,
      stateDir,
      imagesDir: host.dir,
    });
    try {
      const names = Object.keys(activities);
      expect(names.length).toBeGreaterThan(25);
      expect(unguardedActivities(activities, HOST_ACTIVITY_SCHEMAS)).toEqual([]);
      expect(Object.keys(HOST_ACTIVITY_SCHEMAS).filter((n) => !names.includes(n))).toEqual([]);
    } finally {
      h.shutdown();
      host.cleanup();
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});

/** A drill's readiness wait on the target host: a verdict, only the restore's VMs, a check without the worker's secrets. */
describe('drill readiness on the host (fake hypervisor)', () => {
  let host: FakeHost;
  let imagesDir: string;
  let stateDir: string;
  const env = { ...process.env };

  const drills = () =>
    createDrillActivities({ hypervisor: host.hypervisor, hostId: host.hostId, imagesDir, stateDir, allowChecks: true });

  /** A running VM `name` made by restore r1, its serial console writing to `consoleFile`. */
  const restored = async (name: string, consoleFile: string) => {
    await host.hypervisor.defineDomain(
      `<domain type='kvm'><name>${name}</name><devices>` +
        `<serial type='file'><source path='${consoleFile}'/><target port='0'/></serial></devices></domain>`,
    );
    await host.hypervisor.start(name);
    const records = new RestoreRecords(stateDir);
    const vms = records.get('r1')?.vms ?? [];
    records.plan('r1', [
      ...vms,
      { source: name, domain: name, uuid: '00000000-0000-4000-8000-000000000001', disks: [] },
    ]);
  };

  beforeEach(() => {
    host = new FakeHost(uniqueId('drl'));
    imagesDir = join(host.dir, 'images');
    stateDir = join(host.dir, 'state');
    mkdirSync(imagesDir);
    mkdirSync(stateDir);
  });

  afterEach(() => {
    process.env = { ...env };
    host.cleanup();
  });

  it("a check command sees a fixed PATH and the clones' names, none of the worker's secrets; only a tail is kept", async () => {
    await restored('c1', join(imagesDir, 'c1.console.log'));
    process.env.AWS_SECRET_ACCESS_KEY = 'aws-secret-value';
    process.env.GROUPSNAP_REPO_KEY_FILE = '/secret/repo.key';
    process.env.PATH = `/worker/bin:${process.env.PATH}`;
    const check = [
      'env',
      `test "$PATH" = "${CHECK_PATH}"`,
      'test "$GROUPSNAP_DRILL_VMS" = c1',
      'test -z "$AWS_SECRET_ACCESS_KEY"',
      'test -z "$GROUPSNAP_REPO_KEY_FILE"',
      'for i in $(seq 1 200); do echo "line $i $(head -c 30 /dev/zero | tr "\\0" x)"; done',
    ].join(' && ');
    const v = await drills().waitReady({ domains: ['c1'], readiness: 'command', check, timeoutMs: 5000 });
    expect(v.ready).toBe(true);
    expect(v.reason).not.toMatch(/aws-secret-value|secret\/repo\.key/);
    expect(v.reason).toMatch(/line 200 x+$/);
    expect(v.reason).not.toMatch(/line 195 /);
    expect(Buffer.byteLength(v.reason)).toBeLessThanOrEqual(TAIL_BYTES + 'check exited 0: '.length + 8);
  });

  it('a check that fails says so in a bounded verdict, without printing the secrets it saw', async () => {
    await restored('c1', join(imagesDir, 'c1.console.log'));
    process.env.AWS_SECRET_ACCESS_KEY = 'aws-secret-value';
    const v = await drills().waitReady({
      domains: ['c1'],
      readiness: 'command',
      check: 'echo "key=$AWS_SECRET_ACCESS_KEY"; exit 3',
      timeoutMs: 1000,
    });
    expect(v).toEqual({ ready: false, reason: 'not ready after 1000 ms: check exited 3: key=' });
  });

  it('a serial line seen on every clone is a verdict, not the console text', async () => {
    const log = join(imagesDir, 'c1.console.log');
    writeFileSync(log, 'boot\nGROUPSNAP-RECOVERY ok=1 secret=hunter2\n');
    await restored('c1', log);
    const v = await drills().waitReady({
      domains: ['c1'],
      readiness: 'serial-line',
      serialLine: 'GROUPSNAP-RECOVERY .*ok=1',
      timeoutMs: 5000,
    });
    expect(v).toEqual({ ready: true, reason: 'serial line /GROUPSNAP-RECOVERY .*ok=1/ seen on 1/1 VMs' });
  });

  it('reads no serial output outside the images dir', async () => {
    const outside = join(host.dir, 'elsewhere.log');
    writeFileSync(outside, 'READY\n');
    await restored('c1', outside);
    const v = await drills().waitReady({
      domains: ['c1'],
      readiness: 'serial-line',
      serialLine: 'READY',
      timeoutMs: 1000,
    });
    expect(v).toEqual({ ready: false, reason: 'not ready after 1000 ms: serial line /READY/ seen on 0/1 VMs' });
  });

  it('reads no link planted in the images dir to a file elsewhere', async () => {
    const outside = join(host.dir, 'elsewhere.log');
    writeFileSync(outside, 'READY\n');
    const link = join(imagesDir, 'c1.console.log');
    symlinkSync(outside, link);
    await restored('c1', link);
    const v = await drills().waitReady({
      domains: ['c1'],
      readiness: 'serial-line',
      serialLine: 'READY',
      timeoutMs: 1000,
    });
    expect(v.ready).toBe(false);
  });

  it('watches only VMs a restore made on this host', async () => {
    await restored('c1', join(imagesDir, 'c1.console.log'));
    await host.hypervisor.defineDomain(`<domain type='kvm'><name>prod-db</name><devices/></domain>`);
    await expect(
      drills().waitReady({ domains: ['c1', 'prod-db'], readiness: 'serial-line', serialLine: 'x', timeoutMs: 1000 }),
    ).rejects.toMatchObject({ type: BAD_INPUT, message: expect.stringContaining('"prod-db"') });
  });
});

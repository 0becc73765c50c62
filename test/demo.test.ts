import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import * as libvirt from '@groupsnap/libvirt';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);

/** The README's main job (`npm start` runs dev/demo.ts, built), end to end, cleaning up after itself. */
describe('npm start (the main job)', () => {
  it('snapshots the demo VMs, snapshots the tag group by name, restores it as clones, and leaves no VM behind', async () => {
    const { stdout } = await exec(process.execPath, [join(REPO_ROOT, 'dist/dev/demo.js'), '--no-keep', '--vms', '2'], {
      timeout: 240_000,
    });
    expect(stdout).toMatch(/Completed group snapshot gs-\S+ of demo/);
    expect(stdout).toMatch(
      /Snapshot of group demo-db by name: gs-\S+ completed, members groupsnap-demo-\S+-1, groupsnap-demo-\S+-2/,
    );
    expect(stdout).toMatch(
      /Restored as clones \(restored\): groupsnap-demo-\S+-1-restored running, groupsnap-demo-\S+-2-restored running/,
    );
    // The DR story goes off the host: exported to a real S3 server and verified there.
    expect(stdout).toMatch(/Exported gs-\S+ to s3:\/\/groupsnap-demo\/dr in /);
    expect(stdout).toMatch(/groupsnap repo verify --read-data: OK, \d+ chunks checked/);
    const names = stdout.match(/groupsnap-demo-[a-z0-9]+-1/)![0].replace(/-1$/, '');
    const conn = await libvirt.open('qemu:///system');
    try {
      const left = (await conn.listAllDomains()).map((d) => d.name).filter((n) => n.startsWith(names));
      expect(left).toEqual([]);
    } finally {
      await conn.close();
    }
  });
});

/** scripts/ensure-versitygw.sh: the S3 server of the backup tests and the demo, built once and reused. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { REPO_ROOT } from '../dev/tools';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function script(env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      [join(REPO_ROOT, 'scripts', 'ensure-versitygw.sh')],
      { env: { ...process.env, ...env } },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

test('reuses the versitygw it found or built, and that binary runs', async () => {
  const first = await script();
  const second = await script();
  expect(first.code).toBe(0);
  expect(second.stdout).toBe(first.stdout);
  expect(second.stderr).not.toContain('building');
  const help = await new Promise<string>((resolve) =>
    execFile(first.stdout.trim(), ['--help'], (_err, stdout) => resolve(stdout)),
  );
  expect(help).toMatch(/Versity S3 Gateway/);
});

test('explains what to do without Go and without versitygw, and checks a given path', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'gs-vgw-'));
  try {
    const run = await script({
      PATH: ['/usr/sbin', '/sbin', '/bin', dirname(process.execPath)].join(':'),
      GROUPSNAP_TOOLS_DIR: dir,
      VERSITYGW: '',
    });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/no 'versitygw' on PATH and no Go toolchain to build it/);
    const given = await script({ VERSITYGW: join(dir, 'nope') });
    expect(given.code).toBe(1);
    expect(given.stderr).toMatch(/is not an executable file/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

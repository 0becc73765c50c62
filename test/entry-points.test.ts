import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../dev/tools';

const exec = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  bin: Record<string, string>;
  exports: Record<string, string | { types: string; default: string }>;
};

/** Each public entry point, with names a user imports from it (the README's snippets). */
const ENTRY_POINTS: Record<string, string[]> = {
  groupsnap: ['snapshotGroup', 'startGroupSnapshot', 'createGroup', 'restoreGroup', 'BadInputError'],
  'groupsnap/worker': ['groupsnapHostPlugin', 'groupsnapWorkflowsPlugin', 'createGroupsnapWorker', 'runGuard'],
  'groupsnap/hypervisor': ['LibvirtHypervisor', 'FakeHypervisor', 'DomainNotFoundError'],
  'groupsnap/nexus': ['groupsnapNexusService', 'GROUPSNAP_NEXUS_SERVICE'],
};

/** Directories of dist/ that are repository tooling, never part of the package. */
const DEV_ONLY = ['dist/dev/', 'dist/bench/', 'dist/test/', 'dist/examples/'];

/** The relative modules `entry` loads, transitively (the compiled CommonJS `require("./...")` calls). */
function requireGraph(entry: string): string[] {
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const m of readFileSync(file, 'utf8').matchAll(/\brequire\("(\.{1,2}\/[^"]*)"\)/g)) {
      const base = resolve(dirname(file), m[1]);
      const found = [`${base}.js`, join(base, 'index.js'), base].find((f) => existsSync(f) && f.endsWith('.js'));
      if (!found) throw new Error(`${relative(REPO_ROOT, file)} requires ${m[1]}, which is not built`);
      visit(found);
    }
  };
  visit(join(REPO_ROOT, entry));
  return [...seen].map((f) => relative(REPO_ROOT, f)).sort();
}

/** The files `npm pack` would put in the package. */
async function packedFiles(): Promise<string[]> {
  const { stdout } = await exec('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: REPO_ROOT,
    maxBuffer: 16 << 20,
  });
  return (JSON.parse(stdout) as { files: { path: string }[] }[])[0].files.map((f) => f.path);
}

describe('declared entry points (package exports) of the built package', () => {
  let consumer: string;

  beforeAll(async () => {
    if (!existsSync(join(REPO_ROOT, 'dist/client/index.js')))
      throw new Error('dist/ is missing: run `npm run build` before this test');
    // A project that depends on groupsnap, as a user's would (node_modules/groupsnap is this repository).
    consumer = await mkdtemp(join(tmpdir(), 'gs-consumer-'));
    await mkdir(join(consumer, 'node_modules'));
    await symlink(REPO_ROOT, join(consumer, 'node_modules', 'groupsnap'));
  });
  afterAll(async () => {
    if (consumer) await rm(consumer, { recursive: true, force: true });
  });

  it('resolves groupsnap and each subpath to the built modules, with the names the README imports', async () => {
    const script = `
      const out = {};
      for (const [id, names] of Object.entries(${JSON.stringify(ENTRY_POINTS)})) {
        const m = require(id);
        out[id] = { file: require.resolve(id), missing: names.filter((n) => m[n] === undefined) };
      }
      console.log(JSON.stringify(out));`;
    const { stdout } = await exec(process.execPath, ['-e', script], { cwd: consumer });
    const got = JSON.parse(stdout) as Record<string, { file: string; missing: string[] }>;
    const real = (f: string) => relative(REPO_ROOT, f);
    expect(Object.fromEntries(Object.entries(got).map(([id, r]) => [id, [real(r.file), r.missing]]))).toEqual({
      groupsnap: ['dist/client/index.js', []],
      'groupsnap/worker': ['dist/worker/index.js', []],
      'groupsnap/hypervisor': ['dist/hypervisor/index.js', []],
      'groupsnap/nexus': ['dist/client/nexus.js', []],
    });
  });

  it('refuses imports from the build output (dist/) that the exports map does not declare', async () => {
    const script = `try { require.resolve('groupsnap/dist/worker/plugins'); } catch (e) { console.log(e.code); }`;
    const { stdout } = await exec(process.execPath, ['-e', script], { cwd: consumer });
    expect(stdout.trim()).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
  });

  it('type-checks a consumer importing every entry point, with node10 (typesVersions) and node16 resolution', async () => {
    const lines = Object.entries(ENTRY_POINTS).map(
      ([id, names], i) => `import { ${names.map((n) => `${n} as n${i}_${n}`).join(', ')} } from '${id}';`,
    );
    const uses = Object.entries(ENTRY_POINTS).flatMap(([, names], i) => names.map((n) => `n${i}_${n}`));
    await writeFile(join(consumer, 'use.ts'), `${lines.join('\n')}\nexport const all = [${uses.join(', ')}];\n`);
    const tsc = join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
    const common = [
      '--noEmit',
      '--strict',
      '--skipLibCheck',
      '--types',
      'node',
      '--typeRoots',
      join(REPO_ROOT, 'node_modules/@types'),
    ];
    for (const resolution of [
      ['--module', 'commonjs', '--moduleResolution', 'node10'],
      ['--module', 'node16'],
    ]) {
      // A missing declaration would make the import `any` (or an error): tsc exits non-zero with the reason.
      await expect(
        exec(process.execPath, [tsc, ...common, ...resolution, 'use.ts'], {
          cwd: consumer,
        }).catch((err: { stdout: string }) => Promise.reject(new Error(err.stdout))),
      ).resolves.toBeDefined();
    }
  });

  it('packs every module the CLI and the entry points load, and none of the repository tooling', async () => {
    const packed = new Set(await packedFiles());
    const needed = new Set([
      ...requireGraph(pkg.bin.groupsnap),
      ...Object.values(pkg.exports).flatMap((e) =>
        typeof e === 'string' ? [] : [...requireGraph(e.default), e.types.replace(/^\.\//, '')],
      ),
    ]);
    expect([...needed].filter((f) => !packed.has(f))).toEqual([]);
    expect([...packed].filter((f) => DEV_ONLY.some((d) => f.startsWith(d)))).toEqual([]);
  });

  it('the shipped CLI does not load dev tooling (the demo lives in dev/, run by npm start)', () => {
    const cli = requireGraph(pkg.bin.groupsnap);
    expect(cli).toContain('dist/cli/main.js');
    expect(cli).toContain('dist/worker/worker.js');
    expect(cli.filter((f) => DEV_ONLY.some((d) => f.startsWith(d)))).toEqual([]);
    // And npm start runs the demo from dev/, which uses the CLI only as the guard's entry.
    expect(requireGraph('dist/dev/demo.js')).toContain('dist/dev/vms.js');
  });
});

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from './tools';

const run = promisify(execFile);

/** Where another Unix user's host finds groupsnap: readable by every user, whatever the checkout's own mode. */
export const HOST_PACKAGE_ROOT = '/var/lib/groupsnap/host-package';

export interface HostPackage {
  /** A copy of this Node.js binary, executable by every user. */
  node: string;
  /** The installed package's `groupsnap` command (`node_modules/groupsnap/dist/cli/main.js`). */
  cli: string;
}

const sha = (...files: string[]) => {
  const h = createHash('sha256');
  for (const f of files) h.update(readFileSync(f));
  return h.digest('hex').slice(0, 16);
};

async function pack(dir: string, into: string): Promise<string> {
  const { stdout } = await run('npm', ['pack', '--silent', '--pack-destination', into], { cwd: dir });
  return join(into, stdout.trim().split('\n').at(-1)!);
}

/**
 * groupsnap as a real host gets it: the packed package (`npm pack`: exactly the files it ships) installed with its
 * production dependencies and the native binding built from its own packed sources, under {@link HOST_PACKAGE_ROOT},
 * with a copy of this Node.js. A second hypervisor's worker runs as its own Unix user, which cannot read a checkout
 * in a private (0700) directory. The dependencies are installed once per lockfile and binding; the package itself is
 * replaced whenever its content changed. Returns the node binary and the command to run.
 * @throws Error when packing or installing fails (with npm's output)
 */
export async function installedHostPackage(): Promise<HostPackage> {
  mkdirSync(HOST_PACKAGE_ROOT, { recursive: true, mode: 0o755 });
  const scratch = await mkdtemp(join(HOST_PACKAGE_ROOT, 'pack-'));
  try {
    chmodSync(scratch, 0o755);
    const app = await pack(REPO_ROOT, scratch);
    const binding = await pack(join(REPO_ROOT, 'libvirt'), scratch);
    // npm pack leaves out a symlinked dist/ (a git worktree sharing another checkout's build): refuse such a package
    // rather than install one whose binding cannot load.
    const listing = (await run('tar', ['-tzf', binding])).stdout;
    if (!listing.includes('package/dist/index.js'))
      throw new Error(
        `the packed binding has no dist/index.js: build it in ${join(REPO_ROOT, 'libvirt')} (not a link)`,
      );
    const deps = join(HOST_PACKAGE_ROOT, `deps-${sha(join(REPO_ROOT, 'package-lock.json'), binding)}`);
    if (!existsSync(join(deps, '.installed'))) await installDependencies(deps, app, binding);
    const target = join(deps, 'node_modules', 'groupsnap');
    const appSha = sha(app);
    if (!existsSync(join(target, `.packed-${appSha}`))) {
      const fresh = `${target}.new`;
      rmSync(fresh, { recursive: true, force: true });
      mkdirSync(fresh, { mode: 0o755 });
      await run('tar', ['-xzf', app, '-C', fresh, '--strip-components=1', '--no-same-owner']);
      writeFileSync(join(fresh, `.packed-${appSha}`), '');
      rmSync(target, { recursive: true, force: true });
      renameSync(fresh, target);
    }
    return { node: copyOfNode(), cli: join(target, 'dist', 'cli', 'main.js') };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

async function installDependencies(deps: string, app: string, binding: string): Promise<void> {
  rmSync(deps, { recursive: true, force: true });
  mkdirSync(deps, { mode: 0o755 });
  copyFileSync(app, join(deps, 'groupsnap.tgz'));
  copyFileSync(binding, join(deps, 'groupsnap-libvirt.tgz'));
  const manifest = {
    private: true,
    dependencies: { groupsnap: 'file:./groupsnap.tgz', '@groupsnap/libvirt': 'file:./groupsnap-libvirt.tgz' },
    // The package names its binding `file:libvirt` (a workspace): the packed binding stands in for it.
    overrides: { '@groupsnap/libvirt': '$@groupsnap/libvirt' },
    allowScripts: { '@groupsnap/libvirt': true },
  };
  writeFileSync(join(deps, 'package.json'), JSON.stringify(manifest, null, 2));
  try {
    await run('npm', ['install', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund'], {
      cwd: deps,
      maxBuffer: 64 * 1024 * 1024,
    });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`installing the packed groupsnap in ${deps} failed: ${e.stderr || e.stdout || e.message}`);
  }
  await run('chmod', ['-R', 'go+rX', deps]);
  writeFileSync(join(deps, '.installed'), new Date().toISOString());
}

function copyOfNode(): string {
  const dir = join(HOST_PACKAGE_ROOT, `node-${process.version}`, 'bin');
  const node = join(dir, 'node');
  if (!existsSync(node)) {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    copyFileSync(process.execPath, `${node}.tmp`);
    chmodSync(`${node}.tmp`, 0o755);
    renameSync(`${node}.tmp`, node);
  }
  return node;
}

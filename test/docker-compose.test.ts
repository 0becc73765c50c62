import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { REPO_ROOT } from '../dev/tools';
import { CLI } from './helpers/worker-process';

const exec = promisify(execFile);

interface Service {
  image?: string;
  build?: string;
  command?: string[] | string;
  depends_on?: Record<string, unknown>;
  ports?: string[];
  volumes?: string[];
  environment?: Record<string, string>;
}

/** No Docker engine runs here, so the deployment files are checked statically. */
describe('docker-compose.yml', () => {
  const text = readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
  const doc = parse(text, { merge: true }) as { services: Record<string, Service>; volumes: Record<string, unknown> };
  const services = Object.entries(doc.services);

  it('has the Temporal server with PostgreSQL, its schema set-up, the UI, and groupsnap workers and guards', () => {
    for (const name of [
      'postgresql',
      'temporal-schema',
      'temporal',
      'temporal-namespace',
      'temporal-ui',
      'groupsnap-worker',
      'groupsnap-guard',
      'groupsnap-worker-b',
    ]) {
      expect(doc.services[name]).toBeDefined();
    }
    for (const [, s] of services) expect(s.image ?? s.build).toBeDefined();
  });

  it('gives every ${VAR} a default, since the file ships without a .env', () => {
    const refs = [...text.matchAll(/\$\{([A-Z0-9_]+)([^}]*)\}/g)];
    expect(refs.length).toBeGreaterThan(0);
    for (const [ref, , rest] of refs) expect([ref, rest.startsWith(':-')]).toEqual([ref, true]);
  });

  it('declares every named volume, mounts only files that exist, and publishes each port once', () => {
    const published: string[] = [];
    for (const [, s] of services) {
      for (const v of s.volumes ?? []) {
        const source = v.split(':')[0];
        if (source.startsWith('./')) expect(existsSync(join(REPO_ROOT, source))).toBe(true);
        else if (!source.startsWith('/') && !source.startsWith('$')) expect(Object.keys(doc.volumes)).toContain(source);
      }
      for (const dep of Object.keys(s.depends_on ?? {})) expect(Object.keys(doc.services)).toContain(dep);
      published.push(...(s.ports ?? []).map((p) => p.split(':')[0]));
    }
    expect(new Set(published).size).toBe(published.length);
  });

  it('runs groupsnap commands and flags that the CLI has', async () => {
    for (const [, s] of services.filter(([, s]) => s.build)) {
      const args = Array.isArray(s.command) ? s.command : [];
      if (args.length === 0) continue;
      const { stdout } = await exec(process.execPath, [CLI, args[0], '--help']);
      for (const flag of args.filter((a) => a.startsWith('--'))) expect(stdout).toContain(flag);
    }
    const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toContain('"/app/dist/cli/main.js"');
    expect(existsSync(CLI)).toBe(true);
  });

  it("registers exactly groupsnap's search attributes", () => {
    const script = readFileSync(join(REPO_ROOT, 'deploy/create-namespace.sh'), 'utf8');
    const listed = Object.fromEntries([...script.matchAll(/(Groupsnap\w+):(\w+)/g)].map((m) => [m[1], m[2]]));
    expect(listed).toEqual(SEARCH_ATTRIBUTES);
  });
});

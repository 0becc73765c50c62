import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

/**
 * The import graph of the product (docs/adr/0008-layers-and-failures.md): no file-level cycle, and no folder
 * importing a folder above it. ESLint enforces the same rules file by file; this test sees the whole graph.
 */
const ROOT = resolve(__dirname, '..', '..');
const PRODUCT = ['common', 'hypervisor', 'backup', 'activities', 'workflows', 'worker', 'client', 'cli', 'bench'];
/** What each folder may import (value or type), besides itself. */
const ALLOWED: Record<string, string[]> = {
  common: [],
  hypervisor: ['common'],
  backup: ['common'],
  activities: ['common', 'hypervisor', 'backup'],
  workflows: ['common', 'activities', 'backup'], // activities and backup as types only (ESLint checks that)
  worker: ['common', 'hypervisor', 'backup', 'activities', 'workflows', 'client'], // client: the Nexus contract
  client: ['common', 'workflows', 'backup'],
  cli: ['common', 'hypervisor', 'backup', 'activities', 'workflows', 'worker', 'client'],
  bench: ['common', 'hypervisor', 'backup', 'activities', 'workflows', 'worker', 'client', 'cli', 'dev'],
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : n.endsWith('.ts') && !n.endsWith('.d.ts') ? [p] : [];
  });
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/^(?:import|export)\s[^;]*?from\s+'(\.[^']+)';/gms)].map((m) => m[1]);
  return specs.map((s) => {
    const base = resolve(dirname(file), s);
    for (const candidate of [`${base}.ts`, join(base, 'index.ts')]) if (statSafe(candidate)) return candidate;
    return `${base}.ts`;
  });
}

const statSafe = (p: string) => {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
};

const folderOf = (file: string) => relative(ROOT, file).split('/')[0];

describe('the import graph', () => {
  const graph = new Map<string, string[]>();
  for (const folder of PRODUCT) for (const f of files(join(ROOT, folder))) graph.set(f, importsOf(f));

  it('has no arrow from a folder to one it may not import', () => {
    const upward: string[] = [];
    for (const [file, deps] of graph)
      for (const d of deps) {
        const [from, to] = [folderOf(file), folderOf(d)];
        if (from !== to && !ALLOWED[from].includes(to)) upward.push(`${relative(ROOT, file)} -> ${relative(ROOT, d)}`);
      }
    expect(upward).toEqual([]);
  });

  it('has no cycle between files', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const path: string[] = [];
    const visit = (f: string) => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'open') {
        cycles.push([...path.slice(path.indexOf(f)), f].map((p) => relative(ROOT, p)).join(' -> '));
        return;
      }
      state.set(f, 'open');
      path.push(f);
      for (const d of graph.get(f) ?? []) if (graph.has(d)) visit(d);
      path.pop();
      state.set(f, 'done');
    };
    for (const f of graph.keys()) visit(f);
    expect(cycles).toEqual([]);
  });
});

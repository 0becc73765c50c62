import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import { CLUSTER_DEPLOY_FILES, CLUSTER_NAMESPACE } from '../../dev/temporal-cluster';
import { REPO_ROOT } from '../../dev/tools';
import { composeFile, composeTemporalAndCluster, withDefaults, type Service } from '../helpers/compose';

/**
 * No Docker engine runs here, so the deployment files are checked statically (the checks that need the built CLI
 * or the built Temporal server are in test/docker-compose.test.ts).
 */
describe('docker-compose.yml', () => {
  const { text, doc, services } = composeFile();

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
      published.push(...(s.ports ?? []).map((p) => `${p.slice(0, p.lastIndexOf(':'))}`));
    }
    expect(new Set(published).size).toBe(published.length);
  });

  it('publishes every port on 127.0.0.1 unless configured otherwise (Temporal frontend, UI, metrics)', () => {
    const ports = services.flatMap(([name, s]) => (s.ports ?? []).map((p) => [name, p] as const));
    expect(ports.map(([name]) => name)).toEqual(
      expect.arrayContaining(['temporal', 'temporal-ui', 'groupsnap-worker', 'groupsnap-worker-b']),
    );
    for (const [name, p] of ports) {
      // '${SOME_BIND:-127.0.0.1}:<host port>:<container port>': an explicit address, localhost by default.
      const m = /^\$\{([A-Z_]+_BIND):-([^}]+)\}:(\d+):(\d+)$/.exec(p);
      expect([name, p, m?.[2]]).toEqual([name, p, '127.0.0.1']);
      expect(text).toContain(m![1]); // documented in the header
    }
  });

  it('runs only the worker and guard as root, each with a comment saying libvirt is why', () => {
    const libvirtServices = services.filter(([, s]) => {
      const args = Array.isArray(s.command) ? s.command : [];
      return s.build && (args[0] === 'worker' || args[0] === 'guard');
    });
    expect(libvirtServices.map(([n]) => n).sort()).toEqual(
      ['groupsnap-guard', 'groupsnap-guard-b', 'groupsnap-worker', 'groupsnap-worker-b'].sort(),
    );
    const user = (s: Service) => s.user;
    for (const [name, s] of libvirtServices) {
      expect([name, user(s)]).toEqual([name, 'root']);
      // The service's block in the file says why (its own comment, or one pointing at the worker's).
      const block = text.slice(text.indexOf(`  ${name}:`)).split(/\n {2}\S/)[0];
      const before = text
        .slice(0, text.indexOf(`  ${name}:`))
        .split('\n')
        .slice(-4)
        .join('\n');
      expect(`${before}\n${block}`).toMatch(/root.*libvirt|libvirt.*root|# libvirt/s);
    }
    for (const [name, s] of services.filter(([, s]) => !libvirtServices.some(([, l]) => l === s)))
      expect([name, user(s)]).not.toEqual([name, 'root']);
    expect(user(doc.services['groupsnap-cli'])).toBe('node');
  });

  it('shows the TLS / API key settings (commented), with names the Temporal env config reads', () => {
    const envconfig = readFileSync(require.resolve('@temporalio/envconfig'), 'utf8');
    const dir = join(require.resolve('@temporalio/envconfig'), '..');
    const sources = [
      envconfig,
      ...readdirSync(dir)
        .filter((f) => f.endsWith('.js'))
        .map((f) => readFileSync(join(dir, f), 'utf8')),
    ].join('\n');
    for (const name of [
      'TEMPORAL_TLS_CLIENT_CERT_PATH',
      'TEMPORAL_TLS_CLIENT_KEY_PATH',
      'TEMPORAL_TLS_SERVER_CA_CERT_PATH',
      'TEMPORAL_TLS_SERVER_NAME',
      'TEMPORAL_API_KEY',
    ]) {
      expect(text).toMatch(new RegExp(`^\\s*# ${name}: `, 'm'));
      expect(sources).toContain(name);
    }
  });

  it("registers exactly groupsnap's search attributes", () => {
    const script = readFileSync(join(REPO_ROOT, 'deploy/create-namespace.sh'), 'utf8');
    const listed = Object.fromEntries([...script.matchAll(/(Groupsnap\w+):(\w+)/g)].map((m) => [m[1], m[2]]));
    expect(listed).toEqual(SEARCH_ATTRIBUTES);
  });
});

/** The two-process test cluster (dev/temporal-cluster.ts) must be the compose file's Temporal, run without Docker. */
describe('docker-compose.yml and the test cluster describe the same Temporal', () => {
  const { compose, temporal, env, dynamicConfig, clusterEnv } = composeTemporalAndCluster();
  /** The repository file a compose service mounts at `target` (directly or through a mounted folder). */
  const mountedFile = (s: Service, target: string): string | undefined => {
    for (const v of s.volumes ?? []) {
      const [source, to] = v.split(':');
      if (!source.startsWith('./')) continue;
      if (target === to) return source.slice(2);
      if (target.startsWith(`${to}/`)) return join(source.slice(2), target.slice(to.length + 1));
    }
    return undefined;
  };

  it('gives the server the same database, credentials and dynamic config file', () => {
    for (const key of ['DB', 'POSTGRES_USER', 'POSTGRES_PWD']) expect([key, clusterEnv[key]]).toEqual([key, env[key]]);
    expect(mountedFile(temporal, env.DYNAMIC_CONFIG_FILE_PATH)).toBe(CLUSTER_DEPLOY_FILES.dynamicConfig);
    expect(clusterEnv.DYNAMIC_CONFIG_FILE_PATH).toBe(dynamicConfig);
    // Everything the compose file sets, the cluster sets too (addresses and ports differ by design).
    expect(Object.keys(clusterEnv)).toEqual(expect.arrayContaining(Object.keys(env)));
  });

  it('sets up the schemas, the namespace and its search attributes with the same scripts', () => {
    const script = (name: string) => {
      const s = compose.services[name];
      return mountedFile(s, String(s.command).trim());
    };
    expect(script('temporal-schema')).toBe(CLUSTER_DEPLOY_FILES.schema);
    expect(script('temporal-namespace')).toBe(CLUSTER_DEPLOY_FILES.namespace);
    expect(withDefaults(compose.services['temporal-namespace'].environment!.DEFAULT_NAMESPACE)).toBe(CLUSTER_NAMESPACE);
  });

  it('runs the server release the cluster builds', () => {
    const built = /^VERSION=(\S+)$/m.exec(
      readFileSync(join(REPO_ROOT, 'scripts/ensure-temporal-server.sh'), 'utf8'),
    )![1];
    expect(withDefaults(temporal.image!)).toBe(`temporalio/server:${built}`);
    for (const name of ['temporal-schema', 'temporal-namespace'])
      expect(withDefaults(compose.services[name].image!)).toBe(`temporalio/admin-tools:${built}`);
  });
});

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { CLUSTER_DEPLOY_FILES, serverEnvironment, type ServerPorts } from '../../dev/temporal-cluster';
import { REPO_ROOT } from '../../dev/tools';

/** A service of docker-compose.yml, as far as the static checks read it. */
export interface Service {
  image?: string;
  build?: string;
  command?: string[] | string;
  depends_on?: Record<string, unknown>;
  ports?: string[];
  volumes?: string[];
  environment?: Record<string, string>;
  user?: string;
}

/** docker-compose.yml: its text, the parsed document and its services (no Docker engine runs here). */
export function composeFile() {
  const text = readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
  const doc = parse(text, { merge: true }) as { services: Record<string, Service>; volumes: Record<string, unknown> };
  return { text, doc, services: Object.entries(doc.services) };
}

/** A compose value with its `${VAR:-default}` references replaced by their defaults. */
export const withDefaults = (v: string): string => v.replace(/\$\{[A-Z0-9_]+:-([^}]*)\}/g, '$1');

/**
 * The compose file's Temporal service (its environment with `${VAR:-default}` references at their defaults) beside
 * the environment the two-process test cluster (dev/temporal-cluster.ts) gives the same server, on fixed ports.
 */
export function composeTemporalAndCluster() {
  const compose = composeFile().doc;
  const temporal = compose.services.temporal;
  const env = Object.fromEntries(
    Object.entries(temporal.environment ?? {}).map(([k, v]) => [k, withDefaults(String(v))]),
  );
  const ports = Object.fromEntries(
    ['frontendGrpc', 'frontendHttp', 'frontendMembership', 'historyGrpc', 'historyMembership', 'matchingGrpc']
      .concat(['matchingMembership', 'workerGrpc', 'workerMembership'])
      .map((k, i) => [k, 7000 + i]),
  ) as unknown as ServerPorts;
  const pg = { host: '127.0.0.1', port: 5432, user: 'temporal', password: 'temporal' };
  const dynamicConfig = join(REPO_ROOT, CLUSTER_DEPLOY_FILES.dynamicConfig);
  return { compose, temporal, env, ports, pg, dynamicConfig, clusterEnv: serverEnvironment(pg, ports, dynamicConfig) };
}

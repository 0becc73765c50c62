import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
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

/**
 * The export context: what every room of a host's side of exports (the disk export, the manifests) works over, built
 * once per worker by {@link createExportContext} (the shape of the host's rooms, docs/adr/0007-host-modules.md).
 */
import { join } from 'node:path';
import { readKeyFile } from '../../backup/crypto';
import { PERMANENT_REPOSITORY_ERRORS, RepositoryError } from '../../backup/errors';
import { Repository, type OpenOptions } from '../../backup/repository';
import { REPO_KEY_FILE_ENV } from '../../common/backup-types';
import { failure, failureOfType } from '../../common/failures';
import type { Hypervisor } from '../../hypervisor/hypervisor';
import { registerExportHoldDir } from '../export-hold';

export interface ExportActivityDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** The host's state dir: export checkpoints and holds live under it. */
  stateDir: string;
  /** The repository key file; default `GROUPSNAP_REPO_KEY_FILE` read when an export runs. */
  keyFile?: string;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** How often live progress is signalled to the export workflow. @default 5000 */
  progressSignalMs?: number;
  /** Options of every repository the activities open (tests: a wrapped store). */
  repositoryOptions?: OpenOptions;
}

/** Everything a host's export activities share. */
export interface ExportContext {
  readonly hypervisor: Hypervisor;
  readonly hostId: string;
  /** The host's state dir (holds live under it). */
  readonly stateDir: string;
  /** Where each disk export checkpoints its progress. */
  readonly checkpointDir: string;
  /** The key file given to the worker, if any (else $GROUPSNAP_REPO_KEY_FILE, read when an export runs). */
  readonly keyFile?: string;
  /** How often live progress is signalled to the export workflow, ms. */
  readonly progressSignalMs: number;
  readonly repositoryOptions?: OpenOptions;
  readonly log: (message: string, fields?: Record<string, unknown>) => void;
}

/** Builds the export context of one worker over `deps`, and registers its hold dir (deletions look there). */
export function createExportContext(deps: ExportActivityDeps): ExportContext {
  registerExportHoldDir(deps.hostId, deps.stateDir);
  return {
    hypervisor: deps.hypervisor,
    hostId: deps.hostId,
    stateDir: deps.stateDir,
    checkpointDir: join(deps.stateDir, 'export-checkpoints'),
    ...(deps.keyFile !== undefined ? { keyFile: deps.keyFile } : {}),
    progressSignalMs: deps.progressSignalMs ?? 5000,
    ...(deps.repositoryOptions ? { repositoryOptions: deps.repositoryOptions } : {}),
    log: deps.log ?? (() => {}),
  };
}

/** An error's message (or the thrown value as text). */
export const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Repository errors a retry cannot fix become non-retryable failures of the same type; the rest stay retryable. */
export function asFailure(err: unknown): unknown {
  if (err instanceof RepositoryError && (PERMANENT_REPOSITORY_ERRORS as readonly string[]).includes(err.name)) {
    return failureOfType(err.name, err.message, 'badInput');
  }
  return err;
}

/** The repository key, read from the host's key file now. @throws `repoKeyMissing` when the host has none */
function repoKey(ctx: ExportContext): Buffer {
  const file = ctx.keyFile ?? process.env[REPO_KEY_FILE_ENV];
  if (!file) {
    throw failure(
      'repoKeyMissing',
      `host ${ctx.hostId} has no repository key: start its worker with ${REPO_KEY_FILE_ENV}=<key file> (or --repo-key-file)`,
    );
  }
  return readKeyFile(file);
}

/** Opens the repository at `url` with the host's key; permanent repository errors become non-retryable failures. */
export async function openRepo(ctx: ExportContext, url: string): Promise<Repository> {
  try {
    return await Repository.open(url, repoKey(ctx), ctx.repositoryOptions);
  } catch (err) {
    throw asFailure(err);
  }
}

/**
 * The restore-from-repository context: what every room of a host's side of a restore from the repository (plan,
 * rebuild, define, remove) works over, built once per worker by {@link createRepoRestoreContext}. The rooms are plain
 * functions of it (the same shape as the host's rooms, docs/adr/0007-host-modules.md).
 */
import { failure } from '../../common/failures';
import type { Hypervisor } from '../../hypervisor/hypervisor';
import { DEFAULT_BOOT_FILE_DIRS } from '../../hypervisor/restore-xml';
import { RestoreRecords } from '../restore-records';
import type { InstantServer } from './serve';

/** Colon-separated directories restored VMs may boot read-only files from, added to the firmware directories. */
export const BOOT_FILE_DIRS_ENV = 'GROUPSNAP_BOOT_FILE_DIRS';

/** Environment variable naming the repository key file on a host (the worker's `--key-file` sets it). */
export const REPO_KEY_FILE_ENV = 'GROUPSNAP_REPO_KEY_FILE';

export interface RepoRestoreDeps {
  hypervisor: Hypervisor;
  hostId: string;
  /** Where restored disks go on this host. */
  imagesDir: string;
  /** This host's state dir: the records of what each restore planned and wrote (see RestoreRecords). */
  stateDir: string;
  /** The repository key file on this host. @default $GROUPSNAP_REPO_KEY_FILE */
  keyFile?: string;
  /** More directories restored VMs may boot read-only files from (added to the firmware dirs and $GROUPSNAP_BOOT_FILE_DIRS). */
  bootFileDirs?: string[];
  /** Serves an instant restore's disks (NBD) from the repository. @default the serving process of this package */
  instantServer?: InstantServer;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

/** Everything a host's restore-from-repository activities share. */
export interface RepoRestoreContext {
  readonly hypervisor: Hypervisor;
  readonly hostId: string;
  /** Where restored disks go on this host. */
  readonly imagesDir: string;
  /** The key file given to the worker, if any (else $GROUPSNAP_REPO_KEY_FILE, read when a repository opens). */
  readonly keyFile?: string;
  /** Every directory restored VMs may boot read-only files from: firmware dirs, the environment's, the worker's. */
  readonly bootFileDirs: string[];
  /** What each restore planned and wrote on this host. */
  readonly records: RestoreRecords;
  /** This host's state dir (instant restores keep their sockets and the serving process's files under it). */
  readonly stateDir: string;
  readonly instantServer?: InstantServer;
  readonly log: (message: string, fields?: Record<string, unknown>) => void;
}

/** A BAD_INPUT failure (nothing changed). */
export const bad = (msg: string) => failure('badInput', msg);

/** Builds the context of one worker over `deps` (reads $GROUPSNAP_BOOT_FILE_DIRS now, the key file's variable later). */
export function createRepoRestoreContext(deps: RepoRestoreDeps): RepoRestoreContext {
  return {
    hypervisor: deps.hypervisor,
    hostId: deps.hostId,
    imagesDir: deps.imagesDir,
    ...(deps.keyFile !== undefined ? { keyFile: deps.keyFile } : {}),
    bootFileDirs: [
      ...DEFAULT_BOOT_FILE_DIRS,
      ...(process.env[BOOT_FILE_DIRS_ENV] ?? '').split(':').filter((d) => d.startsWith('/')),
      ...(deps.bootFileDirs ?? []),
    ],
    records: new RestoreRecords(deps.stateDir),
    stateDir: deps.stateDir,
    ...(deps.instantServer ? { instantServer: deps.instantServer } : {}),
    log: deps.log ?? (() => {}),
  };
}

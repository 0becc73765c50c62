import { restoreFromRepo } from '../client/repo-restore';
import { parseNetworkMapping, type RepoRestoreResult } from '../common/repo-restore';
import { BadInputError } from '../common/failures';
import { withClient, type CommonOptions } from './with-client';

export interface RepoRestoreFlags extends CommonOptions {
  fromRepo: string;
  keyFile?: string;
  toHost?: string;
  asClone?: boolean;
  asOriginal?: boolean;
  inPlace?: boolean;
  suffix?: string;
  mapNetwork?: string[];
  /** false with --no-network */
  network?: boolean;
  format?: string;
  restoreId?: string;
  stripHostDevices?: boolean;
  instant?: boolean;
  vm?: string[];
  hydrateParallel?: string;
  hydrateBandwidth?: string;
}

/** `groupsnap restore <group> <snapshotId> --from-repo <url> --to-host <id> ...`: a point rebuilt on another host. */
export function repoRestoreCommand(group: string, snapshotId: string, opts: RepoRestoreFlags) {
  const problems: string[] = [];
  if (!opts.toHost) problems.push('--from-repo needs --to-host <id>: the host that rebuilds and runs the VMs');
  if (opts.inPlace)
    problems.push("--in-place restores on the VMs' own host: use --as-clone or --as-original with --from-repo");
  if (opts.asClone && opts.asOriginal) problems.push('give one of --as-clone and --as-original');
  if (opts.asOriginal && opts.suffix !== undefined) problems.push('--suffix applies to --as-clone only');
  const keyFile = opts.keyFile ?? process.env.GROUPSNAP_REPO_KEY_FILE;
  if (!keyFile) problems.push('give --key-file <file> (or GROUPSNAP_REPO_KEY_FILE): the repository key');
  const networkMap: Record<string, string> = {};
  for (const m of opts.mapNetwork ?? []) {
    try {
      const [from, to] = parseNetworkMapping(m);
      networkMap[from] = to;
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  const parallel = opts.hydrateParallel !== undefined ? Number(opts.hydrateParallel) : undefined;
  if (parallel !== undefined && !opts.instant) problems.push('--hydrate-parallel applies to --instant only');
  if (parallel !== undefined && (!Number.isInteger(parallel) || parallel < 1 || parallel > 64))
    problems.push(`--hydrate-parallel takes 1-64, not ${JSON.stringify(opts.hydrateParallel)}`);
  const bandwidth = opts.hydrateBandwidth !== undefined ? Number(opts.hydrateBandwidth) : undefined;
  if (bandwidth !== undefined && !opts.instant) problems.push('--hydrate-bandwidth applies to --instant only');
  if (bandwidth !== undefined && (!Number.isInteger(bandwidth) || bandwidth < 1))
    problems.push(`--hydrate-bandwidth takes whole MiB/s, not ${JSON.stringify(opts.hydrateBandwidth)}`);
  if (opts.instant && opts.format === 'raw') problems.push('--instant writes qcow2 overlays: not with --format raw');
  if (problems.length) throw new BadInputError(problems.join('; '));
  return withClient(
    opts,
    (c) =>
      restoreFromRepo(
        c,
        {
          group,
          snapshotId,
          repo: opts.fromRepo,
          toHost: opts.toHost!,
          mode: opts.asOriginal ? 'original' : 'clone',
          ...(opts.suffix !== undefined ? { suffix: opts.suffix } : {}),
          ...(Object.keys(networkMap).length ? { networkMap } : {}),
          ...(opts.network === false ? { noNetwork: true } : {}),
          ...(opts.stripHostDevices ? { stripHostDevices: true } : {}),
          ...(opts.format ? { format: opts.format as 'raw' | 'qcow2' } : {}),
          ...(opts.restoreId ? { restoreId: opts.restoreId } : {}),
          ...(opts.instant ? { instant: true } : {}),
          ...(opts.vm?.length ? { vms: opts.vm } : {}),
          ...(parallel !== undefined ? { hydrateParallel: parallel } : {}),
          ...(bandwidth !== undefined ? { hydrateBandwidthMiB: bandwidth } : {}),
        },
        { keyFile },
      ),
    renderRepoRestore,
    (r) => r.status !== 'restored',
  );
}

export function renderRepoRestore(r: RepoRestoreResult): string {
  return [
    `restore ${r.restoreId} of ${r.group} ${r.snapshotId} from ${r.repo} on ${r.toHost} ` +
      `(${r.mode === 'clone' ? 'as clones' : 'as the original VMs'}): ${r.status}${r.error ? `: ${r.error}` : ''}`,
    ...(r.virtType ? [`  (domain type ${r.virtType} on ${r.toHost})`] : []),
    ...r.vms.map(
      (v) =>
        `  ${v.source} -> ${v.domain}${v.state ? ` ${v.state}` : ''}${v.error ? ` (${v.error})` : ''}` +
        v.disks
          .map((d) => `\n    ${d.target}: ${d.file} (${d.format}, ${d.bytesWritten ?? 0} bytes written)`)
          .join('') +
        (v.removed ?? []).map((r) => `\n    removed: ${r}`).join(''),
    ),
    ...(r.instant ? instantLines(r) : []),
    ...(r.durationMs !== undefined && !r.instant
      ? [`  ${r.bytesWritten} bytes in ${(r.durationMs / 1000).toFixed(1)} s`]
      : []),
  ].join('\n');
}

/** An instant restore's times and each disk's hydration. */
function instantLines(r: RepoRestoreResult): string[] {
  const s = (ms: number | undefined) => (ms === undefined ? '-' : `${(ms / 1000).toFixed(1)} s`);
  return [
    `  instant: all VMs running after ${s(r.runningAfterMs)}, fully hydrated after ${s(r.hydratedAfterMs)}`,
    ...(r.hydration ?? []).map(
      (d) => `    ${d.domain} ${d.target}: ${d.done}/${d.total} bytes${d.hydrated ? ' hydrated' : ''}`,
    ),
  ];
}

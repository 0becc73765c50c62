/** CLI commands for off-host backups: `repo init|list|verify|prune` (run here, with the key) and `export`. */
import { resolve } from 'node:path';
import type { Client } from '@temporalio/client';
import { PERMANENT_REPOSITORY_ERRORS, RepositoryError, RepositoryInputError } from '../backup/errors';
import { readKeyFile } from '../backup/crypto';
import { Repository, type PointSummary } from '../backup/repository';
import {
  ExportFailedError,
  exportProgress,
  exportResult,
  initRepository,
  listRepositoryReport,
  pruneRepositoryAt,
  startExport,
  verifyRepositoryAt,
} from '../client/backup';
import { REPO_ENV, REPO_KEY_FILE_ENV, type DiskProgressReport, type ExportResult } from '../common/backup-types';
import type { RetentionPolicy } from '../common/retention';
import { BadInputError } from '../common/failures';
import type { TemporalOverrides } from '../common/config';
import { EXIT } from './commands';
import { reportError } from './exit';
import { withClient, type CommonOptions } from './with-client';

export interface RepoOptions {
  keyFile?: string;
  json?: boolean;
}

/** The repository URL: the argument, else `GROUPSNAP_REPO`. */
function repoUrl(url: string | undefined): string {
  const u = url ?? process.env[REPO_ENV];
  if (!u) throw new BadInputError(`give a repository URL (s3://bucket/prefix or file:///path) or set ${REPO_ENV}`);
  return u;
}

/** The key file: `--key-file`, else `GROUPSNAP_REPO_KEY_FILE`; checked now (exists, holds 32 bytes). */
export function keyFile(opts: RepoOptions): string {
  const f = opts.keyFile ?? process.env[REPO_KEY_FILE_ENV];
  if (!f)
    throw new BadInputError(`give --key-file <file> (32 random bytes, raw or base64) or set ${REPO_KEY_FILE_ENV}`);
  toBadInput(() => readKeyFile(f));
  return resolve(f);
}

/** Repository errors that mean "nothing was done, fix the input" become BadInputError (exit 2). */
export function toBadInput<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw badInputOf(err);
  }
}

export function badInputOf(err: unknown): unknown {
  if (err instanceof RepositoryError && (PERMANENT_REPOSITORY_ERRORS as readonly string[]).includes(err.name))
    return new BadInputError(err.message);
  return err;
}

export async function repoAction<T>(
  opts: RepoOptions,
  fn: () => Promise<T>,
  render: (v: T) => string,
  failed: (v: T) => boolean = () => false,
): Promise<void> {
  let value: T;
  try {
    value = await fn();
  } catch (err) {
    process.exitCode = reportError(badInputOf(err), opts.json);
    return;
  }
  const out = opts.json ? JSON.stringify(value, null, 2) : render(value);
  if (out) console.log(out);
  process.exitCode = failed(value) ? EXIT.failed : EXIT.ok;
}

export const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(1)} MiB`;
const gib = (n: number): string => `${(n / 1024 ** 3).toFixed(2)} GiB`;

/** A one-line progress bar on stderr, only on a terminal. */
export function progressBar(enabled: boolean) {
  const tty = enabled && process.stderr.isTTY;
  let shown = false;
  return {
    update(label: string, done: number, total: number, extra = '') {
      if (!tty) return;
      const width = 30;
      const frac = total > 0 ? Math.min(1, done / total) : 0;
      const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
      process.stderr.write(`\r${label} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${extra}\x1b[K`);
      shown = true;
    },
    end() {
      if (tty && shown) process.stderr.write('\n');
    },
  };
}

export async function repoInit(
  url: string | undefined,
  opts: RepoOptions & { chunkSize?: number; objectLock?: number; lockMode?: string },
): Promise<void> {
  await repoAction(
    opts,
    async () => {
      const u = repoUrl(url);
      const f = keyFile(opts);
      if (opts.chunkSize !== undefined && !(opts.chunkSize >= 1 && opts.chunkSize <= 64))
        throw new BadInputError('--chunk-size is in MiB, from 1 to 64');
      if (opts.lockMode !== undefined && opts.objectLock === undefined)
        throw new BadInputError('--lock-mode needs --object-lock <days>');
      if (opts.lockMode !== undefined && opts.lockMode !== 'compliance' && opts.lockMode !== 'governance')
        throw new BadInputError(`--lock-mode is compliance or governance, not ${JSON.stringify(opts.lockMode)}`);
      if (opts.objectLock !== undefined && !(opts.objectLock >= 1 && opts.objectLock <= 36500))
        throw new BadInputError('--object-lock is a number of days from 1 to 36500');
      const mode = (opts.lockMode ?? 'compliance') as 'compliance' | 'governance';
      const config = await initRepository(u, f, {
        ...(opts.chunkSize ? { chunkSize: opts.chunkSize * 1024 * 1024 } : {}),
        ...(opts.objectLock !== undefined ? { objectLock: { days: opts.objectLock, mode } } : {}),
      });
      return {
        status: 'created',
        url: u,
        id: config.id,
        chunkSize: config.chunkSize,
        objectLock: config.objectLock ?? null,
      };
    },
    (r) =>
      `Created repository ${r.url} (id ${r.id}, chunks of ${mib(r.chunkSize)}` +
      (r.objectLock ? `, every point locked ${r.objectLock.days} day(s) in ${r.objectLock.mode} mode` : '') +
      ')',
  );
}

/** One point as `repo list` shows it. */
function listedPoint(p: PointSummary) {
  return {
    group: p.group,
    snapshotId: p.snapshotId,
    ...(p.label !== undefined ? { label: p.label } : {}),
    snapshotCreatedAt: p.snapshotCreatedAt,
    exportedAt: p.exportedAt,
    vms: p.vms.map((v) => ({
      domain: v.domain,
      host: v.host,
      disks: v.disks,
      bytes: v.disks.reduce((n, d) => n + d.virtualSize, 0),
    })),
    logicalBytes: p.stats.logicalBytes,
    lockedUntil: p.retainUntil ?? null,
    locked: p.retainUntil !== undefined && Date.parse(p.retainUntil) > Date.now(),
    bytesNew: p.stats.bytesNew,
    bytesUploaded: p.stats.bytesUploaded,
    verified: p.verification
      ? {
          at: p.verification.verifiedAt,
          readData: p.verification.readData,
          ok: p.verification.ok,
          problems: p.verification.problems,
        }
      : null,
    lastDrill: p.lastDrill
      ? {
          result: p.lastDrill.status,
          at: p.lastDrill.startedAt,
          toHost: p.lastDrill.toHost,
          timeToReadyMs: p.lastDrill.rtoMs ?? null,
          restoreMs: p.lastDrill.restoreMs ?? null,
          drillId: p.lastDrill.drillId,
          ...(p.lastDrill.error !== undefined ? { error: p.lastDrill.error } : {}),
        }
      : null,
  };
}

export async function repoList(
  url: string | undefined,
  opts: RepoOptions & { group?: string; copy?: string; copyKeyFile?: string; groupCopy?: boolean } & TemporalOverrides,
): Promise<void> {
  await repoAction(
    opts,
    async () => {
      if (opts.groupCopy) {
        const { groupCopyTarget } = await import('./copy-command');
        opts = { ...opts, copy: await groupCopyTarget(opts) };
      }
      const listing = await listRepositoryReport(repoUrl(url), keyFile(opts), opts.group ? { group: opts.group } : {});
      const damaged = listing.damaged.map((d) => ({
        group: d.group ?? null,
        groupTag: d.groupTag,
        snapshotId: d.snapshotId,
        damaged: { object: d.manifest, problem: d.problem, detail: d.detail },
      }));
      const points = listing.points.map(listedPoint);
      if (opts.copy) {
        const { withLocations } = await import('./copy-command');
        return [...(await withLocations(points, opts, listedPoint)), ...damaged];
      }
      return [...points, ...damaged];
    },
    (all) => {
      const points = all.filter((p): p is Exclude<typeof p, { damaged: unknown }> => !('damaged' in p));
      const damaged = all.flatMap((p) => ('damaged' in p ? [p] : []));
      const lines = damaged.map(
        (d) =>
          `${d.group ?? `(group ${d.groupTag})`} ${d.snapshotId}  DAMAGED: ${d.damaged.detail} ` +
          `(run 'groupsnap repo verify'; restore and export skip it)`,
      );
      if (points.length === 0)
        return [damaged.length ? '' : 'No points in the repository.', ...lines].filter(Boolean).join('\n');
      return [
        points
          .map(
            (p) =>
              `${p.group} ${p.snapshotId}${p.label ? ` (${p.label})` : ''}  ${p.vms.length} VM(s), ${gib(p.logicalBytes)}, ` +
              `${mib(p.bytesNew)} new, exported ${p.exportedAt}, ` +
              ('locations' in p && Array.isArray(p.locations) ? `in ${p.locations.join('+')}, ` : '') +
              (p.lockedUntil ? `${p.locked ? 'locked until' : 'lock lapsed'} ${p.lockedUntil}, ` : '') +
              (p.verified
                ? `verified ${p.verified.ok ? 'ok' : `DAMAGED (${p.verified.problems})`}${p.verified.readData ? ' with data' : ''}`
                : 'not verified') +
              ', ' +
              (p.lastDrill
                ? `last drill ${p.lastDrill.result === 'pass' ? 'passed' : 'FAILED'} ${p.lastDrill.at} on ${p.lastDrill.toHost}` +
                  (p.lastDrill.timeToReadyMs !== null
                    ? ` (ready in ${(p.lastDrill.timeToReadyMs / 1000).toFixed(1)} s)`
                    : '')
                : 'never drilled') +
              '\n' +
              p.vms
                .map(
                  (v) =>
                    `    ${v.domain}@${v.host}: ${v.disks.map((d) => `${d.target} ${gib(d.virtualSize)}`).join(', ')}`,
                )
                .join('\n'),
          )
          .join('\n'),
        ...lines,
      ].join('\n');
    },
  );
}

export async function repoVerify(
  url: string | undefined,
  opts: RepoOptions & { readData?: boolean; group?: string; repair?: boolean },
): Promise<void> {
  const bar = progressBar(!opts.json);
  await repoAction(
    opts,
    async () => {
      try {
        return await verifyRepositoryAt(repoUrl(url), keyFile(opts), {
          readData: Boolean(opts.readData),
          ...(opts.group ? { group: opts.group } : {}),
          ...(opts.repair ? { repair: true } : {}),
          onProgress: (p) =>
            bar.update('verify', p.pointsDone, p.pointsTotal, `${p.chunksChecked} chunks, ${mib(p.bytesRead)} read`),
        });
      } finally {
        bar.end();
      }
    },
    (r) =>
      [
        `${r.ok ? 'OK' : 'DAMAGED'}: ${r.points.length} point(s), ${r.chunksChecked} chunk references checked` +
          (r.readData ? `, ${mib(r.bytesRead)} read and checked` : ' (existence only; --read-data reads them)'),
        ...r.problems.map(
          (p) =>
            `  ${p.group} ${p.snapshotId} ${p.domain ?? '?'}/${p.target ?? '?'}` +
            (p.offset !== undefined ? ` offset ${p.offset}` : '') +
            `: ${p.problem} ${p.object}` +
            (p.problem === 'overwritten' && p.detail ? ` (${p.detail})` : ''),
        ),
        ...(r.repaired ?? []).map((x) => `  repaired ${x.key}: version ${x.versionId} is current again`),
      ].join('\n'),
    (r) => !r.ok,
  );
}

export interface PruneCommandOptions extends RepoOptions {
  group?: string;
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  timezone?: string;
  dryRun?: boolean;
  wait?: number;
}

export async function repoPrune(url: string | undefined, opts: PruneCommandOptions): Promise<void> {
  const policy: RetentionPolicy = {
    ...(opts.keepLast !== undefined ? { keepLast: opts.keepLast } : {}),
    ...(opts.keepHourly !== undefined ? { hourly: opts.keepHourly } : {}),
    ...(opts.keepDaily !== undefined ? { daily: opts.keepDaily } : {}),
    ...(opts.keepWeekly !== undefined ? { weekly: opts.keepWeekly } : {}),
    ...(opts.keepMonthly !== undefined ? { monthly: opts.keepMonthly } : {}),
  };
  await repoAction(
    opts,
    async () => {
      const u = repoUrl(url);
      const f = keyFile(opts);
      if (Object.keys(policy).length > 0) {
        const { normalizeRetention } = await import('../common/retention');
        normalizeRetention(policy); // BadInputError before anything is touched
      }
      return pruneRepositoryAt(u, f, {
        ...(Object.keys(policy).length > 0 ? { policy } : {}),
        ...(opts.group ? { group: opts.group } : {}),
        ...(opts.timezone ? { timezone: opts.timezone } : {}),
        ...(opts.dryRun ? { dryRun: true } : {}),
        ...(opts.wait !== undefined ? { waitMs: opts.wait * 1000 } : {}),
      });
    },
    (r) =>
      [
        ...r.groups.map(
          (g) =>
            `${g.group}: keep ${g.kept.length}${r.dryRun ? ', would delete' : ', deleted'} ${g.deleted.length}` +
            (g.deleted.length ? ` (${g.deleted.join(', ')})` : ''),
        ),
        ...r.held.map(
          (h) => `${h.group}: ${h.snapshotId} kept: its object lock holds until ${h.until} (prune can remove it then)`,
        ),
        ...r.damaged.map((d) => `DAMAGED point ${d.snapshotId} (${d.manifest}): left alone: ${d.detail}`),
        r.sweep.done
          ? `sweep: ${r.sweep.chunksDeleted} of ${r.sweep.chunksBefore} chunks unreferenced, ${mib(r.sweep.bytesFreed)} freed` +
            (r.sweep.chunksHeld
              ? `; ${r.sweep.chunksHeld} unreferenced chunk(s) kept: locked until ${r.sweep.heldUntil} at the latest`
              : '')
          : `sweep not done: ${r.sweep.reason}`,
      ].join('\n'),
    (r) => r.damaged.length > 0 || (!r.sweep.done && r.sweep.damage === true),
  );
}

export interface ExportCommandOptions extends CommonOptions {
  repo?: string;
  keyFile?: string;
  maxRate?: number;
  wait?: boolean;
}

export async function exportCommand(group: string, snapshotId: string, opts: ExportCommandOptions): Promise<void> {
  const repository = repoUrl(opts.repo);
  // With a key here, the repository is checked before anything starts (wrong key, missing repository: exit 2).
  const f = opts.keyFile ?? process.env[REPO_KEY_FILE_ENV];
  if (f) {
    const repo = await Repository.open(
      repository,
      toBadInput(() => readKeyFile(f)),
    ).catch((err: unknown) => {
      throw badInputOf(err);
    });
    repo.close();
  } else {
    try {
      const { parseRepositoryUrl } = await import('../backup/store');
      parseRepositoryUrl(repository);
    } catch (err) {
      if (err instanceof RepositoryInputError) throw new BadInputError(err.message);
      throw err;
    }
  }
  const bar = progressBar(!opts.json);
  await withClient(
    opts,
    async (client: Client) => {
      const handle = await startExport(client, {
        group,
        snapshotId,
        repository,
        ...(opts.maxRate ? { maxBytesPerSecond: Math.round(opts.maxRate * 1024 * 1024) } : {}),
      });
      if (opts.wait === false) return { workflowId: handle.workflowId, status: 'started' as const };
      const poll = setInterval(() => {
        exportProgress(handle)
          .then((ps: DiskProgressReport[]) => {
            const done = ps.reduce((n, p) => n + p.bytesDone, 0);
            const total = ps.reduce((n, p) => n + p.bytesTotal, 0);
            bar.update(`export ${snapshotId}`, done, total, `${mib(done)} / ${mib(total)} read`);
          })
          .catch(() => undefined);
      }, 1000);
      try {
        return await exportResult(handle);
      } catch (err) {
        if (err instanceof ExportFailedError && err.result) return err.result;
        if (err instanceof ExportFailedError)
          return { workflowId: handle.workflowId, status: 'failed' as const, error: err.message };
        throw err;
      } finally {
        clearInterval(poll);
        bar.end();
      }
    },
    (r) => formatExport(r),
    (r) => r.status === 'failed',
  );
}

function formatExport(r: ExportResult | { workflowId: string; status: 'started' | 'failed'; error?: string }): string {
  if (!('vms' in r))
    return `${r.status === 'started' ? 'Started' : 'FAILED'} export ${r.workflowId}${r.error ? `: ${r.error}` : ''}`;
  const lines = [
    `${r.status === 'completed' ? 'Exported' : 'FAILED export of'} ${r.snapshotId} of ${r.group} to ${r.repository}` +
      ` in ${(r.durationMs / 1000).toFixed(1)} s`,
    `  workflow: ${r.workflowId}`,
  ];
  if (r.stats)
    lines.push(
      `  ${mib(r.stats.bytesRead)} read, ${mib(r.stats.bytesNew)} new (${mib(r.stats.bytesUploaded)} uploaded), ` +
        `dedup ${r.stats.dedupRatio.toFixed(1)}x`,
    );
  if (r.error) lines.push(`  error: ${r.error}`);
  for (const v of r.vms)
    for (const d of v.disks)
      lines.push(
        'error' in d
          ? `  ${v.domain}@${v.host} ${d.target}: ${d.error}`
          : `  ${v.domain}@${v.host} ${d.target}: ${d.stats.mode}${d.stats.base ? ` from ${d.stats.base}` : ''}, ` +
              `${mib(d.stats.bytesRead)} read, ${mib(d.stats.bytesNew)} new`,
      );
  return lines.join('\n');
}

/**
 * The copy worker's activity (`groupsnap copy-worker`, task queue `groupsnap-copy`): copies one point of a group into
 * a second repository (backup/copy.ts), heartbeating, and signalling its progress to its workflow. It runs on the
 * admin side, never on a hypervisor host: it needs the source's key and read access and the copy's credentials
 * (GROUPSNAP_S3_CREDENTIALS_FILE) and key, which a host that may be taken over must not hold. The keys are read from
 * files of the worker when the copy runs, never passed in or logged.
 */
import { Context } from '@temporalio/activity';
import { copyRepository, openCopyTarget, type CopyProgress } from '../backup/copy';
import { readKeyFile } from '../backup/crypto';
import { PERMANENT_REPOSITORY_ERRORS, RepositoryError } from '../backup/errors';
import { Repository, type OpenOptions } from '../backup/repository';
import { parseRepositoryUrl } from '../backup/store';
import { REPO_KEY_FILE_ENV } from '../common/backup-types';
import { COPY_PROGRESS_SIGNAL, type CopyPointInput, type CopyProgressReport } from '../common/copy-types';
import { failure, failureOfType } from '../common/failures';
import { assertSafeName } from '../common/validation';

/** Environment variable naming the copy's own key file (its `--to-key-file`). */
export const COPY_KEY_FILE_ENV = 'GROUPSNAP_COPY_KEY_FILE';

export interface CopyActivityDeps {
  /** The source repositories' key file. @default $GROUPSNAP_REPO_KEY_FILE */
  keyFile?: string;
  /** The copies' key file; none: the source's key (the copy is a replica). @default $GROUPSNAP_COPY_KEY_FILE */
  toKeyFile?: string;
  /** How often progress is signalled to the workflow. @default 2000 */
  progressSignalMs?: number;
  /** Options of the source repository (tests: a wrapped store). */
  repositoryOptions?: OpenOptions;
}

/** What the activity returns: the point's line of the copy's result. */
export interface CopyPointReport {
  point: 'copied' | 'present';
  resealed: boolean;
  chunks: number;
  chunksUploaded: number;
  bytesUploaded: number;
  chunksVerified: number;
  verify: 'sample' | 'all';
}

/** Permanent repository errors and damage become non-retryable failures (a retry cannot fix them). */
function asFailure(err: unknown): unknown {
  if (err instanceof RepositoryError && (PERMANENT_REPOSITORY_ERRORS as readonly string[]).includes(err.name))
    return failureOfType(err.name, err.message, 'badInput');
  if (err instanceof RepositoryError && err.name === 'DamagedObjectError') return failure('copyFailed', err.message);
  return err;
}

function checkInput(req: CopyPointInput): void {
  try {
    assertSafeName('group name', req.group);
    assertSafeName('snapshot id', req.snapshotId);
    parseRepositoryUrl(req.from);
    parseRepositoryUrl(req.to);
    if (req.verify !== undefined && req.verify !== 'sample' && req.verify !== 'all')
      throw new RepositoryError('verify is sample or all');
  } catch (err) {
    throw failure('badInput', (err as Error).message);
  }
}

/** Signals progress to the workflow at most every `everyMs` (the last report always). */
function progressSignals(everyMs: number) {
  const ctx = Context.current();
  const wf = ctx.info.workflowExecution;
  let last = 0;
  let latest: CopyProgressReport | undefined;
  const send = () =>
    latest &&
    wf &&
    ctx.client.workflow
      .getHandle(wf.workflowId, wf.runId)
      .signal(COPY_PROGRESS_SIGNAL, latest)
      .catch(() => undefined);
  return {
    update(p: CopyProgress) {
      latest = {
        chunksDone: p.chunksDone,
        chunksTotal: p.chunksTotal,
        chunksUploaded: p.chunksUploaded,
        bytesUploaded: p.bytesUploaded,
      };
      ctx.heartbeat(latest);
      if (Date.now() - last >= everyMs) {
        last = Date.now();
        void send();
      }
    },
    finish: async () => send(),
  };
}

export function createCopyActivities(deps: CopyActivityDeps = {}) {
  return {
    /** Copies one point into the copy repository; safe to retry (resumes: what the copy has is not sent again). */
    async copyPoint(req: CopyPointInput): Promise<CopyPointReport> {
      checkInput(req);
      const keyFile = deps.keyFile ?? process.env[REPO_KEY_FILE_ENV];
      if (!keyFile)
        throw failure('repoKeyMissing', `the copy worker has no repository key: start it with --key-file <file>`);
      const toKeyFile = deps.toKeyFile ?? process.env[COPY_KEY_FILE_ENV];
      const ctx = Context.current();
      const progress = progressSignals(deps.progressSignalMs ?? 2000);
      const beat = setInterval(() => ctx.heartbeat(), 5000);
      let source: Repository | undefined;
      let target: Repository | undefined;
      try {
        const key = readKeyFile(keyFile);
        source = await Repository.open(req.from, key, deps.repositoryOptions);
        ({ repo: target } = await openCopyTarget(source, key, req.to, toKeyFile ? readKeyFile(toKeyFile) : undefined));
        const r = await copyRepository(source, target, {
          group: req.group,
          points: [req.snapshotId],
          verify: req.verify ?? 'sample',
          onProgress: (p) => progress.update(p),
          signal: ctx.cancellationSignal,
        });
        await progress.finish();
        const p = r.points[0];
        return {
          point: p.status,
          resealed: r.resealed,
          chunks: p.chunks,
          chunksUploaded: p.chunksUploaded,
          bytesUploaded: p.bytesUploaded,
          chunksVerified: p.chunksVerified,
          verify: r.verify,
        };
      } catch (err) {
        throw asFailure(err);
      } finally {
        clearInterval(beat);
        target?.close();
        source?.close();
      }
    },
  };
}

export type CopyActivities = ReturnType<typeof createCopyActivities>;

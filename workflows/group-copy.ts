import {
  defineQuery,
  defineSignal,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { CopyActivities } from '../activities/copy-activities';
import {
  COPY_PROGRESS_SIGNAL,
  COPY_TASK_QUEUE,
  type CopyPointInput,
  type CopyPointResult,
  type CopyProgressReport,
} from '../common/copy-types';
import { BadInputError, checked, errorMessage, failure } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { DR_PRESETS } from './activity-options';

/** Live progress of the copy (also shown as the workflow's current details). */
export const copyProgressQuery = defineQuery<CopyProgressReport | undefined>('copyProgress');
export const copyProgressSignal = defineSignal<[CopyProgressReport]>(COPY_PROGRESS_SIGNAL);

const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(1)} MiB`;

function details(input: CopyPointInput, p: CopyProgressReport | undefined, phase: string): string {
  const row = p
    ? `| ${p.chunksDone} / ${p.chunksTotal} | ${p.chunksTotal ? Math.floor((100 * p.chunksDone) / p.chunksTotal) : 100}% | ` +
      `${p.chunksUploaded} | ${mib(p.bytesUploaded)} |`
    : '| - | - | - | - |';
  return [
    `**Copy** of ${input.snapshotId} (group ${input.group}) from ${input.from} to ${input.to}: ${phase}`,
    '',
    '| chunks | done | uploaded | bytes uploaded |',
    '| --- | --- | --- | --- |',
    row,
  ].join('\n');
}

/**
 * Copies one exported point of a group into a second repository (backup/copy.ts): one activity on the copy worker's
 * queue (`groupsnap-copy`, the admin side: it holds both repositories' keys and credentials; the hosts never do),
 * which resumes where an earlier attempt stopped and writes the point's group manifest last, after reading back
 * what it wrote. Progress is in the current details (Temporal UI) and the `copyProgress` query. Nothing is
 * compensated: a point without its group manifest does not exist in the copy, and its chunks are reused.
 */
export async function copyGroupPoint(input: CopyPointInput): Promise<CopyPointResult> {
  checked(() => {
    assertSafeName('group name', input.group);
    assertSafeName('snapshot id', input.snapshotId);
    for (const u of [input.from, input.to])
      if (typeof u !== 'string' || !/^(s3|file):\/\//.test(u))
        throw new BadInputError(`repository must be an s3:// or file:// URL, not ${JSON.stringify(u)}`);
  });
  const started = Date.now();
  let progress: CopyProgressReport | undefined;
  let phase = 'copying';
  const show = () => setCurrentDetails(details(input, progress, phase));
  setHandler(copyProgressQuery, () => progress);
  setHandler(copyProgressSignal, (p) => {
    progress = p;
    show();
  });
  show();
  const result: CopyPointResult = {
    workflowId: workflowInfo().workflowId,
    group: input.group,
    snapshotId: input.snapshotId,
    from: input.from,
    to: input.to,
    status: 'failed',
    durationMs: 0,
  };
  const copy = proxyActivities<CopyActivities>({ taskQueue: COPY_TASK_QUEUE, ...DR_PRESETS.copyPoint });
  try {
    const r = await copy.copyPoint({
      group: input.group,
      snapshotId: input.snapshotId,
      from: input.from,
      to: input.to,
      ...(input.verify ? { verify: input.verify } : {}),
    });
    Object.assign(result, { status: 'completed', ...r, durationMs: Date.now() - started });
    phase =
      r.point === 'present'
        ? 'completed: the copy had the point already'
        : `completed in ${(result.durationMs / 1000).toFixed(1)} s: ${r.chunksUploaded} chunk(s), ` +
          `${mib(r.bytesUploaded)} uploaded, ${r.chunksVerified} read back (${r.verify})`;
    show();
    return result;
  } catch (err) {
    result.error = errorMessage(err);
    result.durationMs = Date.now() - started;
    phase = `failed: ${result.error}`;
    show();
    log.warn('copy failed', { group: input.group, snapshotId: input.snapshotId, error: result.error });
    throw failure('copyFailed', result.error, result);
  }
}

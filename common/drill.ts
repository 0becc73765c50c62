/** DR drills: restore a group point from the repository as isolated clones, boot, check, record, tear down. Pure. */
import type { z } from 'zod';
import type * as schemas from './host-requests';
import type { RepoRestoreResult } from './repo-restore';
import { BadInputError } from './failures';
import { assertSafeName } from './validation';

export interface DrillInput {
  group: string;
  /** A point id in the repository, or `latest`. @default 'latest' */
  point?: string;
  repo: string;
  toHost: string;
  /** Ready when a line matching this (JavaScript regex) appears on every VM's serial console. */
  serialLine?: string;
  /**
   * Ready when this command exits 0 on the target host (run by its worker with `sh -c`, env `GROUPSNAP_DRILL_VMS`
   * listing the clones; the worker must be started with `--allow-drill-checks`). Retried until the timeout.
   */
  check?: string;
  /** Remove what names a host resource from the stored definitions instead of failing (see RepoRestoreInput). */
  stripHostDevices?: boolean;
  /**
   * Instant restore (RepoRestoreInput.instant): the clones run over the point served from the repository; readiness
   * is checked while they hydrate, and hydration stops at the teardown. The RTO of an instant failover. @default false
   */
  instant?: boolean;
  /** Readiness deadline after the VMs run. @default 300000 */
  timeoutMs?: number;
  /** @default generated */
  drillId?: string;
}

/** `plan`: a recovery plan's test run, each VM with its own check (common/plans.ts). */
export type DrillReadiness = 'running' | 'serial-line' | 'command' | 'plan';

export interface DrillRecord {
  drillId: string;
  group: string;
  snapshotId: string;
  toHost: string;
  status: 'pass' | 'fail';
  readiness: DrillReadiness;
  startedAt: string;
  /** Restore requested -> every VM running (ms). */
  restoreMs?: number;
  /** Every VM running -> ready signal (ms). */
  readyMs?: number;
  /** Restore requested -> ready: the recovery time a real failover of this point would take (ms). */
  rtoMs?: number;
  error?: string;
  /** What the readiness check saw (the matching lines, the command's last output). */
  evidence?: string[];
  vms: { source: string; clone: string }[];
}

export interface DrillResult extends DrillRecord {
  restore?: RepoRestoreResult;
  /** Why the record could not be stored beside the point (the drill itself is still valid). */
  recordError?: string;
}

export type WaitReadyRequest = z.infer<typeof schemas.waitReadyRequest>;

/** One VM of a recovery plan checked on its recovery host (common/plans.ts). */
export type CheckVmReadyRequest = z.infer<typeof schemas.checkVmReadyRequest>;

/** What a readiness wait reports: a verdict and a short, sanitised reason (never a console's or command's output). */
export interface ReadyVerdict {
  ready: boolean;
  reason: string;
}

/** Checks a drill request. @throws BadInputError */
export function normalizeDrillInput(input: DrillInput): Required<Pick<DrillInput, 'point' | 'timeoutMs'>> & DrillInput {
  const problems: string[] = [];
  const check = (fn: () => void) => {
    try {
      fn();
    } catch (err) {
      problems.push((err as Error).message);
    }
  };
  check(() => assertSafeName('group', input.group));
  check(() => assertSafeName('host id', input.toHost));
  const point = input.point ?? 'latest';
  if (point !== 'latest') check(() => assertSafeName('point', point));
  if (!input.repo || !/^(s3|file):\/\//.test(input.repo))
    problems.push(`repository URL ${JSON.stringify(input.repo ?? '')} must be s3://bucket[/prefix] or file:///path`);
  if (input.serialLine !== undefined && input.check !== undefined)
    problems.push('give one readiness check: a serial line or a command');
  if (input.serialLine !== undefined) {
    try {
      new RegExp(input.serialLine);
    } catch (err) {
      problems.push(`serial line pattern: ${(err as Error).message}`);
    }
  }
  if (input.stripHostDevices !== undefined && typeof input.stripHostDevices !== 'boolean')
    problems.push(`stripHostDevices must be true or false, not ${JSON.stringify(input.stripHostDevices)}`);
  if (input.instant !== undefined && typeof input.instant !== 'boolean')
    problems.push(`instant must be true or false, not ${JSON.stringify(input.instant)}`);
  const timeoutMs = input.timeoutMs ?? 300_000;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1000 || timeoutMs > 6 * 3600_000)
    problems.push('the readiness timeout must be 1 s to 6 h');
  if (input.drillId !== undefined) check(() => assertSafeName('drill id', input.drillId!));
  if (problems.length) throw new BadInputError(problems.join('; '));
  return { ...input, point, timeoutMs };
}

export function drillWorkflowId(group: string, drillId: string): string {
  return `groupsnap/drill/${group}/${drillId}`;
}

export function drillScheduleId(group: string): string {
  return `groupsnap-drill/${group}`;
}

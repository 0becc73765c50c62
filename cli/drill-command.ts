import { createDrillSchedule, runDrill } from '../client/drill';
import type { DrillInput, DrillResult } from '../common/drill';
import { BadInputError } from '../common/failures';
import { withClient, type CommonOptions } from './with-client';

export interface DrillFlags extends CommonOptions {
  point?: string;
  repo?: string;
  toHost?: string;
  check?: string;
  serialLine?: string;
  timeout?: number;
  cron?: string;
  timezone?: string;
  stripHostDevices?: boolean;
  instant?: boolean;
}

/** `groupsnap drill <group> --to-host <id> [--point latest] [--check cmd | --serial-line re] [--cron expr]`. */
export function drillCommand(group: string, opts: DrillFlags) {
  const repo = opts.repo ?? process.env.GROUPSNAP_REPO;
  const problems: string[] = [];
  if (!repo) problems.push('give --repo <url> (or GROUPSNAP_REPO): the repository holding the points');
  if (!opts.toHost) problems.push('give --to-host <id>: the host that runs the drill');
  if (opts.cron && opts.point && opts.point !== 'latest')
    problems.push('a scheduled drill always drills the latest point');
  if (problems.length) throw new BadInputError(problems.join('; '));
  const input: DrillInput = {
    group,
    repo: repo!,
    toHost: opts.toHost!,
    ...(opts.point ? { point: opts.point } : {}),
    ...(opts.check !== undefined ? { check: opts.check } : {}),
    ...(opts.serialLine !== undefined ? { serialLine: opts.serialLine } : {}),
    ...(opts.timeout !== undefined ? { timeoutMs: opts.timeout * 1000 } : {}),
    ...(opts.stripHostDevices ? { stripHostDevices: true } : {}),
    ...(opts.instant ? { instant: true } : {}),
  };
  if (opts.cron) {
    const cron = opts.cron;
    return withClient(
      opts,
      (c) => createDrillSchedule(c, input, { cron, ...(opts.timezone ? { timezone: opts.timezone } : {}) }),
      (id) => `drill schedule ${id} created: ${cron}`,
    );
  }
  return withClient(
    opts,
    (c) => runDrill(c, input),
    renderDrill,
    (r) => r.status !== 'pass',
  );
}

export function renderDrill(r: DrillResult): string {
  const s = (ms?: number) => (ms === undefined ? '-' : `${(ms / 1000).toFixed(1)} s`);
  return [
    `drill ${r.drillId} of ${r.group} ${r.snapshotId} on ${r.toHost}: ${r.status.toUpperCase()}` +
      (r.error ? ` (${r.error})` : ''),
    `  ${r.restore?.instant ? 'instant restore (VMs running)' : 'restore'} ${s(r.restoreMs)}, ready (${r.readiness}) ${s(r.readyMs)} later, RTO ${s(r.rtoMs)}`,
    ...r.vms.map((v) => `  ${v.source} -> ${v.clone} (torn down)`),
    ...(r.restore?.vms ?? []).flatMap((v) => (v.removed ?? []).map((x) => `  ${v.source}: removed ${x}`)),
    ...(r.evidence ?? []).map((e) => `  ${e}`),
  ].join('\n');
}

/** `groupsnap plan apply|show|list|delete` and `groupsnap recover`: recovery plans and their runs. */
import type { Client } from '@temporalio/client';
import { stringify } from 'yaml';
import {
  applyPlan,
  createRecoveryTestSchedule,
  decideRecovery,
  deletePlan,
  getPlan,
  listPlans,
  parsePlan,
  planDocument,
  readPlanFile,
  recoveryProgress,
  recoveryResult,
  startRecovery,
  type RecoverProgress,
  type RecoverResult,
  type RecoveryPlan,
} from '../client/plans';
import { hostOf } from '../common/plans';
import { BadInputError } from '../common/failures';
import { assertSafeName } from '../common/validation';
import { withClient, type CommonOptions } from './with-client';

export async function planApply(file: string, opts: CommonOptions) {
  // Checked before connecting: a bad plan is exit 2 with every problem named, and nothing is stored.
  const plan = readPlanFile(file);
  await withClient(
    opts,
    (c) => applyPlan(c, planDocument(plan)),
    (r) => `plan ${r.plan.name} of group ${r.plan.group} ${r.created ? 'created' : 'replaced'}`,
  );
}

export async function planShow(name: string, opts: CommonOptions) {
  assertSafeName('plan name', name);
  await withClient(
    opts,
    (c) => getPlan(c, name),
    (p) => stringify(planDocument(p)).trimEnd(),
  );
}

export async function planList(opts: CommonOptions) {
  await withClient(opts, listPlans, (plans) => (plans.length ? plans.map(planLine).join('\n') : 'no recovery plans'));
}

export async function planDelete(name: string, opts: CommonOptions) {
  assertSafeName('plan name', name);
  await withClient(
    opts,
    (c) => deletePlan(c, name),
    () => `plan ${name} deleted`,
  );
}

function planLine(p: RecoveryPlan): string {
  const hosts = [...new Set(p.tiers.flatMap((t) => t.vms.map((v) => hostOf(p, v.vm))))];
  return `${p.name}  group ${p.group}  ${p.tiers.map((t) => `${t.name}(${t.vms.length})`).join(' -> ')}  on ${hosts.join(', ')}  ${p.restore}`;
}

export interface RecoverFlags extends CommonOptions {
  point?: string;
  mode?: string;
  watch?: boolean;
  cron?: string;
  timezone?: string;
}

const DECISIONS = new Set(['commit', 'rollback', 'status']);
const ENDED = new Set(['committed', 'rolled-back', 'passed', 'failed']);

/**
 * `groupsnap recover <plan> --mode failover|test [--point id|latest] [--watch] [--cron expr]`, and
 * `groupsnap recover commit|rollback|status <run>`.
 */
export async function recoverCommand(first: string, run: string | undefined, opts: RecoverFlags) {
  if (DECISIONS.has(first)) {
    if (!run) throw new BadInputError(`give the run: groupsnap recover ${first} <run>`);
    assertSafeName('run id', run);
    if (first === 'status') return withClient(opts, (c) => recoveryProgress(c, run), renderProgress);
    const decision = first as 'commit' | 'rollback';
    return withClient(
      opts,
      (c) => decideRecovery(c, run, decision),
      renderProgress,
      (r) => r.state !== (decision === 'commit' ? 'committed' : 'rolled-back'),
    );
  }
  if (run !== undefined) throw new BadInputError(`unexpected argument ${JSON.stringify(run)}`);
  assertSafeName('plan name', first);
  if (opts.mode !== 'failover' && opts.mode !== 'test') throw new BadInputError('give --mode failover or --mode test');
  const mode = opts.mode;
  if (opts.cron) {
    if (mode !== 'test') throw new BadInputError('only test runs can be scheduled');
    const cron = opts.cron;
    return withClient(
      opts,
      (c) => createRecoveryTestSchedule(c, first, { cron, ...(opts.timezone ? { timezone: opts.timezone } : {}) }),
      (id) => `test recovery schedule ${id} created: ${cron}`,
    );
  }
  return withClient(
    opts,
    (c) => runRecovery(c, first, mode, opts),
    renderProgress,
    (r) => !['passed', 'awaiting-decision', 'committed'].includes(r.state),
  );
}

/**
 * Starts the run and follows it: a test run to its end, a failover until it waits for the decision (or stopped);
 * with `--watch` each change of the progress is printed as it happens.
 */
async function runRecovery(
  client: Client,
  plan: string,
  mode: 'failover' | 'test',
  opts: RecoverFlags,
): Promise<RecoverProgress | RecoverResult> {
  const handle = await startRecovery(client, plan, { mode, ...(opts.point ? { point: opts.point } : {}) });
  const runId = handle.workflowId.split('/').at(-1)!;
  if (!opts.json) console.log(`recovery ${runId} started (${handle.workflowId})`);
  let last = '';
  for (;;) {
    const desc = await handle.describe();
    if (desc.status.name !== 'RUNNING') return recoveryResult(handle);
    const p = await recoveryProgress(client, runId).catch(() => undefined);
    if (p && opts.watch && !opts.json) {
      const text = renderProgress(p);
      if (text !== last) console.log(`--- ${new Date().toISOString()}\n${text}`);
      last = text;
    }
    if (p && (p.state === 'awaiting-decision' || p.state === 'stopped')) return p;
    if (p && ENDED.has(p.state)) return recoveryResult(handle);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

export function renderProgress(p: RecoverProgress): string {
  const s = (ms?: number) => (ms === undefined ? '-' : `${(ms / 1000).toFixed(1)} s`);
  const lines = [
    `${p.mode} recovery ${p.runId} of ${p.group} by plan ${p.plan}${p.snapshotId ? ` (point ${p.snapshotId})` : ''}: ` +
      `${p.state.toUpperCase()}${p.rtoMs !== undefined ? `, last tier ready after ${s(p.rtoMs)}` : ''}`,
  ];
  for (const t of p.tiers) {
    lines.push(`  tier ${t.name}: ${t.state}${t.readyMs !== undefined ? ` (ready at ${s(t.readyMs)})` : ''}`);
    for (const v of t.vms)
      lines.push(
        `    ${v.vm} -> ${v.domain}@${v.host}: ${v.state}${v.readyMs !== undefined ? ` after ${s(v.readyMs)}` : ''}` +
          (v.reason ? `  (${v.reason})` : ''),
      );
  }
  if (p.error) lines.push(`  error: ${p.error}`);
  if (p.state === 'awaiting-decision')
    lines.push(
      `  waiting for: groupsnap recover commit ${p.runId}  |  groupsnap recover rollback ${p.runId}` +
        (p.decisionDeadline ? `  (policy applies at ${p.decisionDeadline})` : ''),
    );
  if (p.state === 'stopped')
    lines.push(`  VMs left for inspection; remove them with: groupsnap recover rollback ${p.runId}`);
  return lines.join('\n');
}

export interface PlanDefineFlags extends CommonOptions {
  group?: string;
  repo?: string;
  host?: string;
  place?: string[];
  tier?: string[];
  check?: string[];
  checkTimeout?: string;
  restore?: string;
  mapNetwork?: string[];
  testNetwork?: string[];
  decisionTimeout?: string;
  onTimeout?: string;
  print?: boolean;
}

/** `key=value` of a repeated flag. @throws BadInputError */
function pair(flag: string, value: string): [string, string] {
  const i = value.indexOf('=');
  if (i <= 0 || i === value.length - 1)
    throw new BadInputError(`${flag} takes <name>=<value>, not ${JSON.stringify(value)}`);
  return [value.slice(0, i), value.slice(i + 1)];
}

/** A check flag `vm=serial:<re>`, `vm=tcp:<address>:<port>`, `vm=command:<cmd>` or `vm=running`, as a document. */
function checkDoc(spec: string, timeout: string | undefined): [string, Record<string, unknown>] {
  const [vm, what] = pair('--check', spec);
  const t = timeout !== undefined ? { timeout } : {};
  if (what === 'running') return [vm, { running: true, ...t }];
  const colon = what.indexOf(':');
  const kind = colon > 0 ? what.slice(0, colon) : what;
  const rest = what.slice(colon + 1);
  if (kind === 'serial' || kind === 'command') return [vm, { [kind]: rest, ...t }];
  if (kind === 'tcp') {
    const last = rest.lastIndexOf(':');
    const address = rest.slice(0, last).replace(/^\[(.*)\]$/, '$1');
    return [vm, { tcp: Number(rest.slice(last + 1)), address, ...t }];
  }
  throw new BadInputError(`--check ${spec}: give serial:<re>, tcp:<address>:<port>, command:<cmd> or running`);
}

/** The plan document a `plan define` command line describes (checked by the plan schema afterwards). */
export function planFromFlags(name: string, opts: PlanDefineFlags): Record<string, unknown> {
  const checks = new Map((opts.check ?? []).map((c) => checkDoc(c, opts.checkTimeout)));
  const tiers = (opts.tier ?? []).map((spec) => {
    const i = spec.indexOf(':');
    if (i <= 0) throw new BadInputError(`--tier takes <name>:<vm>[,<vm>...], not ${JSON.stringify(spec)}`);
    const vms = spec
      .slice(i + 1)
      .split(',')
      .filter(Boolean)
      .map((vm) => ({
        vm,
        check: checks.get(vm) ?? { running: true, ...(opts.checkTimeout ? { timeout: opts.checkTimeout } : {}) },
      }));
    return { name: spec.slice(0, i), vms };
  });
  const inTiers = new Set(tiers.flatMap((t) => t.vms.map((v) => v.vm)));
  const stray = [...checks.keys()].filter((vm) => !inTiers.has(vm));
  if (stray.length) throw new BadInputError(`--check names VMs in no --tier: ${stray.join(', ')}`);
  const testNetwork = opts.testNetwork ?? [];
  return {
    name,
    group: opts.group,
    repository: opts.repo ?? process.env.GROUPSNAP_REPO,
    ...(opts.restore !== undefined ? { restore: opts.restore } : {}),
    placement: {
      ...(opts.host !== undefined ? { default: opts.host } : {}),
      vms: Object.fromEntries((opts.place ?? []).map((p) => pair('--place', p))),
    },
    tiers,
    network: {
      map: Object.fromEntries((opts.mapNetwork ?? []).map((m) => pair('--map-network', m))),
      test:
        testNetwork.length === 0 || (testNetwork.length === 1 && testNetwork[0] === 'none')
          ? 'none'
          : Object.fromEntries(testNetwork.map((m) => pair('--test-network', m))),
    },
    decision: {
      ...(opts.decisionTimeout !== undefined ? { timeout: opts.decisionTimeout } : {}),
      ...(opts.onTimeout !== undefined ? { onTimeout: opts.onTimeout } : {}),
    },
  };
}

/**
 * `groupsnap plan define <name> --group g --repo url --host h --tier db:db-1 --tier app:app-1,app-2 --check ...`:
 * a plan from the command line, checked like a file; `--print` prints its YAML instead of storing it.
 */
export async function planDefine(name: string, opts: PlanDefineFlags) {
  const plan = parsePlan(planFromFlags(name, opts));
  if (opts.print) {
    console.log(opts.json ? JSON.stringify(planDocument(plan), null, 2) : stringify(planDocument(plan)).trimEnd());
    return;
  }
  await withClient(
    opts,
    (c) => applyPlan(c, planDocument(plan)),
    (r) => `plan ${r.plan.name} of group ${r.plan.group} ${r.created ? 'created' : 'replaced'}`,
  );
}

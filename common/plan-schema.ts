/**
 * The schema of a recovery plan document (YAML or the CLI's flags, see `plans.ts`): checked with zod where a plan
 * enters (the client before it is stored, the control activity that reads it for a run). Every problem is named in
 * one answer. Not for the workflow bundle (zod stays out of it).
 */
import { z } from 'zod';
import { BadInputError } from './failures';
import { describeIssues, domainName, jsRegex, networkName, repoUrl, safeName } from './host-requests';
import type { ReadinessCheck, RecoveryPlan } from './plans';
import { parseDuration, validateCron, validateTimezone } from './schedule-spec';

const MAX_TIMEOUT_MS = 6 * 3600_000;

/** A duration: `30s`, `5m`, `1h30m`, or a number of milliseconds. */
function duration(what: string, min: number, max: number) {
  return z.union([z.string(), z.number()]).transform((value, ctx) => {
    let ms: number;
    try {
      ms = typeof value === 'number' ? value : parseDuration(value, what);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
    if (!Number.isInteger(ms) || ms < min || ms > max) {
      ctx.addIssue({ code: 'custom', message: `${what} must be from ${min / 1000} s to ${max / 3600_000} h` });
      return z.NEVER;
    }
    return ms;
  });
}

const regex = jsRegex.refine((s) => s.length > 0, { message: 'a non-empty regular expression' });

/** An IPv4 or IPv6 address literal (never a name: nothing is resolved on the host). */
const address = z.union([z.ipv4(), z.ipv6()], { message: 'an IPv4 or IPv6 address' });

/** `{ serial: <re> }`, `{ tcp: <port>, address: <ip> }`, `{ command: <sh> }` or `{ running: true }`, with `timeout`. */
const check = z
  .strictObject({
    serial: regex.optional(),
    tcp: z.number().int().min(1).max(65535).optional(),
    address: address.optional(),
    command: z.string().min(1).max(10_000).optional(),
    running: z.literal(true).optional(),
    timeout: duration('check timeout', 1000, MAX_TIMEOUT_MS).default(300_000),
  })
  .superRefine((c, ctx) => {
    const kinds = (['serial', 'tcp', 'command', 'running'] as const).filter((k) => c[k] !== undefined);
    if (kinds.length !== 1)
      ctx.addIssue({ code: 'custom', message: 'give exactly one check: serial, tcp, command or running' });
    if (c.tcp !== undefined && c.address === undefined)
      ctx.addIssue({ code: 'custom', path: ['address'], message: "a tcp check needs the VM's address" });
    if (c.tcp === undefined && c.address !== undefined)
      ctx.addIssue({ code: 'custom', path: ['address'], message: 'an address belongs to a tcp check' });
  })
  .transform((c): ReadinessCheck => {
    const timeoutMs = c.timeout;
    if (c.serial !== undefined) return { kind: 'serial', pattern: c.serial, timeoutMs };
    if (c.tcp !== undefined) return { kind: 'tcp', port: c.tcp, address: c.address!, timeoutMs };
    if (c.command !== undefined) return { kind: 'command', command: c.command, timeoutMs };
    return { kind: 'running', timeoutMs };
  });

const planVm = z.strictObject({
  vm: domainName,
  check: check.default({ kind: 'running', timeoutMs: 300_000 }),
});

const tier = z.strictObject({ name: safeName('tier name'), vms: z.array(planVm).min(1).max(1000) });

export const recoveryPlanSchema = z.strictObject({
  name: safeName('plan name'),
  group: safeName('group'),
  repository: repoUrl,
  description: z.string().max(1000).optional(),
  restore: z.enum(['full', 'instant']).default('full'),
  placement: z.strictObject({
    default: safeName('host id').optional(),
    vms: z.record(domainName, safeName('host id')).default({}),
  }),
  tiers: z.array(tier).min(1).max(100),
  network: z
    .strictObject({
      map: z.record(networkName, networkName).default({}),
      test: z.union([z.literal('none'), z.record(networkName, networkName)]).default('none'),
    })
    .default({ map: {}, test: 'none' }),
  decision: z
    .strictObject({
      timeout: duration('decision timeout', 1000, 7 * 24 * 3600_000).default(3600_000),
      onTimeout: z.enum(['commit', 'rollback']).default('commit'),
    })
    .default({ timeout: 3600_000, onTimeout: 'commit' } as never),
  commit: z
    .strictObject({
      repository: repoUrl.optional(),
      schedule: z
        .strictObject({ cron: z.string().min(1).max(200), timezone: z.string().max(100).default('UTC') })
        .superRefine((sch, ctx) => {
          for (const [field, fn] of [
            ['cron', () => validateCron(sch.cron)],
            ['timezone', () => validateTimezone(sch.timezone)],
          ] as const) {
            try {
              fn();
            } catch (err) {
              ctx.addIssue({ code: 'custom', path: [field], message: (err as Error).message });
            }
          }
        })
        .optional(),
    })
    .default({}),
});

/** Whether `v` is a plain object (a YAML mapping). */
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The problems between fields (a VM in two tiers, a VM without a recovery host, a placement of a VM in no tier, tier
 * names twice, a reserved name), read leniently from the raw document so they are named beside the schema's own
 * problems in the same answer.
 */
export function crossProblems(doc: unknown): string[] {
  if (!isObject(doc)) return [];
  const problems: string[] = [];
  if (typeof doc.name === 'string' && ['commit', 'rollback', 'status'].includes(doc.name))
    problems.push(`name: plan name ${doc.name} is reserved (recover ${doc.name})`);
  const placement = isObject(doc.placement) ? doc.placement : {};
  const placed = isObject(placement.vms) ? placement.vms : {};
  const tiers = Array.isArray(doc.tiers) ? doc.tiers.filter(isObject) : [];
  const seen = new Set<string>();
  tiers.forEach((t, i) =>
    (Array.isArray(t.vms) ? t.vms : []).forEach((v: unknown, j) => {
      if (!isObject(v) || typeof v.vm !== 'string') return;
      if (seen.has(v.vm)) problems.push(`tiers.${i}.vms.${j}.vm: VM ${v.vm} is listed twice`);
      seen.add(v.vm);
      if (placement.default === undefined && placed[v.vm] === undefined)
        problems.push(`placement: VM ${v.vm} has no recovery host (placement.vms or placement.default)`);
    }),
  );
  for (const vm of Object.keys(placed)) if (!seen.has(vm)) problems.push(`placement.vms.${vm}: VM ${vm} is in no tier`);
  const names = tiers.map((t) => t.name).filter((n) => typeof n === 'string');
  if (new Set(names).size !== names.length) problems.push('tiers: tier names must differ');
  return problems;
}

/**
 * Checks a plan document (parsed YAML or JSON, or the CLI's definition) and returns the plan in its normal form.
 * @throws BadInputError naming every problem, each with where it is (`tiers.1.vms.0.check: ...`)
 */
export function parsePlan(doc: unknown): RecoveryPlan {
  const r = recoveryPlanSchema.safeParse(doc);
  const problems = [...(r.success ? [] : describeIssues(r.error)), ...crossProblems(doc)];
  if (problems.length || !r.success) throw new BadInputError(`invalid recovery plan: ${problems.join('; ')}`);
  const p = r.data;
  return {
    name: p.name,
    group: p.group,
    repository: p.repository,
    ...(p.description !== undefined ? { description: p.description } : {}),
    restore: p.restore,
    placement: { ...(p.placement.default ? { default: p.placement.default } : {}), vms: p.placement.vms },
    tiers: p.tiers.map((t) => ({ name: t.name, vms: t.vms.map((v) => ({ vm: v.vm, check: v.check })) })),
    network: p.network,
    decision: { timeoutMs: p.decision.timeout, onTimeout: p.decision.onTimeout },
    commit: {
      ...(p.commit.repository ? { repository: p.commit.repository } : {}),
      ...(p.commit.schedule ? { schedule: p.commit.schedule } : {}),
    },
  };
}

/**
 * The document form of a stored plan (what `plan show` prints and `plan apply` takes back): durations in ms.
 */
export function planDocument(plan: RecoveryPlan): Record<string, unknown> {
  const checkDoc = (c: ReadinessCheck) => {
    switch (c.kind) {
      case 'serial':
        return { serial: c.pattern, timeout: c.timeoutMs };
      case 'tcp':
        return { tcp: c.port, address: c.address, timeout: c.timeoutMs };
      case 'command':
        return { command: c.command, timeout: c.timeoutMs };
      default:
        return { running: true, timeout: c.timeoutMs };
    }
  };
  return {
    name: plan.name,
    group: plan.group,
    repository: plan.repository,
    ...(plan.description !== undefined ? { description: plan.description } : {}),
    restore: plan.restore,
    placement: plan.placement,
    tiers: plan.tiers.map((t) => ({ name: t.name, vms: t.vms.map((v) => ({ vm: v.vm, check: checkDoc(v.check) })) })),
    network: plan.network,
    decision: { timeout: plan.decision.timeoutMs, onTimeout: plan.decision.onTimeout },
    commit: plan.commit,
  };
}

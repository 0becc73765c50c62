import { parse } from 'yaml';
import { crossProblems, parsePlan, planDocument } from '../../common/plan-schema';
import { BadInputError } from '../../common/failures';
import { hostOf, normalizeRecoverInput } from '../../common/plans';
import { planFromFlags } from '../../cli/plan-commands';

const YAML_PLAN = `
name: shop-dr
group: shop
repository: s3://dr-bucket/shop
restore: instant
placement:
  default: hv-b
  vms:
    app-2: hv-c
tiers:
  - name: database
    vms:
      - vm: db-1
        check: { serial: "database system is ready", timeout: 2m }
  - name: app
    vms:
      - vm: app-1
        check: { tcp: 8080, address: 10.0.0.5, timeout: 30s }
      - vm: app-2
        check: { command: "curl -fsS http://10.0.0.6/health", timeout: 45000 }
      - vm: app-3
network:
  map: { prod: dr-prod }
  test: { prod: dr-isolated }
decision: { timeout: 2h, onTimeout: rollback }
commit:
  schedule: { cron: "0 * * * *" }
`;

describe('recovery plan schema', () => {
  it('reads a YAML plan into its normal form: checks, durations, placement, defaults', () => {
    const plan = parsePlan(parse(YAML_PLAN));
    expect(plan.tiers.map((t) => t.vms.map((v) => v.check))).toEqual([
      [{ kind: 'serial', pattern: 'database system is ready', timeoutMs: 120_000 }],
      [
        { kind: 'tcp', port: 8080, address: '10.0.0.5', timeoutMs: 30_000 },
        { kind: 'command', command: 'curl -fsS http://10.0.0.6/health', timeoutMs: 45_000 },
        { kind: 'running', timeoutMs: 300_000 },
      ],
    ]);
    expect(plan).toMatchObject({
      restore: 'instant',
      network: { map: { prod: 'dr-prod' }, test: { prod: 'dr-isolated' } },
      decision: { timeoutMs: 7_200_000, onTimeout: 'rollback' },
      commit: { schedule: { cron: '0 * * * *', timezone: 'UTC' } },
    });
    expect(hostOf(plan, 'db-1')).toBe('hv-b');
    expect(hostOf(plan, 'app-2')).toBe('hv-c');
    // Its document form reads back to the same plan (what `plan show` prints, `plan apply` takes).
    expect(parsePlan(planDocument(plan))).toEqual(plan);
  });

  it('defaults: full restore, no network in tests, commit after 1 h', () => {
    const plan = parsePlan({
      name: 'p',
      group: 'g',
      repository: 'file:///r',
      placement: { default: 'h' },
      tiers: [{ name: 't', vms: [{ vm: 'a' }] }],
    });
    expect(plan).toMatchObject({
      restore: 'full',
      network: { map: {}, test: 'none' },
      decision: { timeoutMs: 3_600_000, onTimeout: 'commit' },
      commit: {},
    });
  });

  it('names every problem in one answer', () => {
    const doc = {
      name: 'commit',
      group: '../g',
      repository: 'http://x',
      restore: 'sometimes',
      placement: { vms: { ghost: 'h', a: 'bad/host' } },
      tiers: [
        { name: 't', vms: [{ vm: 'a', check: { tcp: 0 } }] },
        { name: 't', vms: [{ vm: 'a', check: { serial: '(', timeout: '2x' } }, { vm: 'b' }] },
      ],
      network: { test: 'isolated' },
      decision: { onTimeout: 'maybe' },
      commit: { schedule: { cron: '61 * * * *' } },
      surprise: true,
    };
    let message = '';
    try {
      parsePlan(doc);
    } catch (err) {
      expect(err).toBeInstanceOf(BadInputError);
      message = (err as Error).message;
    }
    for (const want of [
      'name: plan name commit is reserved',
      'group:',
      'repository:',
      'restore:',
      'placement.vms.a:',
      'tiers.0.vms.0.check.tcp:',
      "a tcp check needs the VM's address",
      'tiers.1.vms.0.check.serial: a JavaScript regular expression',
      'not a duration',
      'tiers.1.vms.0.vm: VM a is listed twice',
      'VM b has no recovery host',
      'placement.vms.ghost: VM ghost is in no tier',
      'tier names must differ',
      'network.test',
      'decision.onTimeout',
      "minute field '61'",
      'surprise',
    ])
      expect(message).toContain(want);
  });

  it('cross-field checks read any document without throwing', () => {
    for (const doc of [null, 1, 'x', [], { tiers: 3 }, { tiers: [null, { vms: [1, { vm: 2 }] }] }])
      expect(() => crossProblems(doc)).not.toThrow();
  });

  it('recover requests: mode, point and names checked', () => {
    expect(() => normalizeRecoverInput({ group: 'g', plan: 'p', mode: 'sometimes' as never, point: '../x' })).toThrow(
      /mode must be failover or test.*point/,
    );
    expect(normalizeRecoverInput({ group: 'g', plan: 'p', mode: 'test' }).point).toBe('latest');
  });

  it('a plan from the command line (plan define) is the same plan as from its file', () => {
    const fromFlags = parsePlan(
      planFromFlags('shop-dr', {
        group: 'shop',
        repo: 's3://dr-bucket/shop',
        host: 'hv-b',
        place: ['app-2=hv-c'],
        tier: ['database:db-1', 'app:app-1,app-2,app-3'],
        check: [
          'db-1=serial:database system is ready',
          'app-1=tcp:10.0.0.5:8080',
          'app-2=command:curl -fsS http://10.0.0.6/health',
        ],
        checkTimeout: '2m',
        restore: 'instant',
        mapNetwork: ['prod=dr-prod'],
        testNetwork: ['prod=dr-isolated'],
        decisionTimeout: '2h',
        onTimeout: 'rollback',
      }),
    );
    const fromFile = parsePlan(parse(YAML_PLAN));
    expect(fromFlags.tiers.map((t) => t.vms.map((v) => v.check.kind))).toEqual([
      ['serial'],
      ['tcp', 'command', 'running'],
    ]);
    expect(fromFlags.tiers[1].vms[0].check).toEqual({
      kind: 'tcp',
      port: 8080,
      address: '10.0.0.5',
      timeoutMs: 120_000,
    });
    expect({ ...fromFlags, tiers: [], commit: {} }).toEqual({ ...fromFile, tiers: [], commit: {} });
  });

  it('plan define: a malformed flag or a check of a VM in no tier is refused', () => {
    expect(() => planFromFlags('p', { tier: ['db'] })).toThrow(/--tier takes <name>:<vm>/);
    expect(() => planFromFlags('p', { tier: ['db:a'], check: ['a=ping:x'] })).toThrow(/give serial:<re>, tcp/);
    expect(() => planFromFlags('p', { tier: ['db:a'], check: ['b=running'] })).toThrow(/VMs in no --tier: b/);
    expect(() => planFromFlags('p', { tier: ['db:a'], place: ['a'] })).toThrow(/--place takes <name>=<value>/);
  });
});

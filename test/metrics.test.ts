import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Client } from '@temporalio/client';
import type { MetricMeter, MetricTags } from '@temporalio/common';
import { createHost } from '../activities/host-activities';
import { groupSnapshotResult, startGroupSnapshot } from '../client';
import { FreezeJournal } from '../activities/freeze-journal';
import { METRICS } from '../common/metrics';
import type { GroupSnapshotResult } from '../common/types';
import { freePort } from '../dev/free-port';
import { VmFleet } from '../dev/vms';
import { FakeHypervisor } from '../hypervisor/fake-hypervisor';
import { FakeHost } from './helpers/fake-hosts';
import { connectTestClient, testServerAddress, uniqueId } from './helpers/temporal';
import { CLI, WorkerProcess } from './helpers/worker-process';
import { startHosts, type RunningHosts } from './helpers/workers';

const NAMESPACE = 'groupsnap-test';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text exposition. */
function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** Sum of the samples named `name` whose labels include `labels`. */
function total(samples: Sample[], name: string, labels: Record<string, string>): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/**
 * The real `groupsnap worker` (built CLI) with `--metrics`, against the test Temporal server, snapshotting real
 * VMs: its Prometheus endpoint serves the SDK's metrics and groupsnap's, and its stderr the per-VM phase lines.
 */
describe('worker metrics and structured logs', () => {
  let client: Client;
  let close: () => Promise<void>;
  let fleet: VmFleet;
  let stateDir: string;
  let worker: WorkerProcess;
  let fake: FakeHost;
  let fakeHosts: RunningHosts;
  let metricsUrl: string;
  const hostId = uniqueId('hm');

  const scrape = async (): Promise<Sample[]> => {
    const res = await fetch(metricsUrl);
    expect(res.status).toBe(200);
    return parseMetrics(await res.text());
  };
  /** Scrapes until `ready` holds (workflow metrics reach the exporter when the workflow task completes). */
  const scrapeUntil = async (ready: (s: Sample[]) => boolean, timeoutMs = 15_000): Promise<Sample[]> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const samples = await scrape();
      if (ready(samples) || Date.now() > deadline) return samples;
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const phaseLines = (snapshotId: string) =>
    worker.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'vm phase' && l.snapshotId === snapshotId);

  beforeAll(async () => {
    ({ client, close } = await connectTestClient(NAMESPACE));
    fleet = await VmFleet.create({ prefix: 'gs-metrics', count: 3 });
    stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-metrics-'));
    // What a crashed predecessor left: a VM still paused past its deadline (the restarted worker resumes it),
    // and a VM the guard process resumed meanwhile (counted by the worker, which has the metrics).
    const stuck = fleet.names[2];
    await (await fleet.conn.lookupByName(stuck)).suspend();
    const journal = new FreezeJournal(stateDir);
    const now = Date.now();
    journal.write({
      snapshotId: 'gs-old',
      domain: stuck,
      state: 'paused',
      pausedAtMs: now - 9000,
      deadlineMs: now - 4000,
    });
    journal.write({
      snapshotId: 'gs-old',
      domain: 'gone',
      state: 'resumed-by-guard',
      pausedAtMs: now - 9000,
      deadlineMs: now - 4000,
      resumedAtMs: now - 3750,
    });
    const port = await freePort();
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
    // No guard process: the stuck VM is resumed by the worker's recovery, deterministically.
    worker = new WorkerProcess(hostId, stateDir, testServerAddress(), {
      workflows: true,
      args: ['--namespace', NAMESPACE, '--metrics', `127.0.0.1:${port}`, '--no-guard'],
    });
    await worker.start(client, 120_000);
    fake = new FakeHost(uniqueId('hf'));
    fakeHosts = await startHosts([fake], { namespace: NAMESPACE, workflows: false });
  });

  afterAll(async () => {
    await worker?.kill('SIGTERM');
    await fakeHosts?.stop();
    fake?.cleanup();
    await fleet?.destroy();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    await close?.();
  });

  it('counts the VMs a restarted worker and the guard resumed', async () => {
    expect((await (await fleet.conn.lookupByName(fleet.names[2])).state()).state).toBe('running');
    const samples = await scrape();
    expect(total(samples, METRICS.vmsResumedByGuard, { host: hostId, by: 'recovery' })).toBe(1);
    expect(total(samples, METRICS.vmsResumedByGuard, { host: hostId, by: 'guard' })).toBe(1);
    expect(new FreezeJournal(stateDir).list().every((r) => r.reported)).toBe(true);
  });

  it('exports SDK metrics, the freeze histogram and the completed run; logs every phase of every VM', async () => {
    const group = uniqueId('mok');
    const [v1, v2] = fleet.names;
    const result = await groupSnapshotResult(
      await startGroupSnapshot(client, {
        group,
        vms: [
          { domain: v1, host: hostId },
          { domain: v2, host: hostId },
        ],
      }),
    );
    expect(result.status).toBe('completed');

    const samples = await scrapeUntil((s) => total(s, METRICS.groupSnapshots, { group, status: 'completed' }) > 0);
    // The Temporal SDK's own metrics.
    expect(samples.some((s) => s.name === 'temporal_workflow_completed')).toBe(true);
    expect(samples.some((s) => s.name.startsWith('temporal_activity_execution_latency'))).toBe(true);
    // The run, once.
    expect(total(samples, METRICS.groupSnapshots, { group, status: 'completed' })).toBe(1);
    // One freeze per VM, with buckets.
    const freeze = { host: hostId, group };
    expect(total(samples, `${METRICS.vmFreezeMs}_count`, freeze)).toBe(2);
    expect(total(samples, `${METRICS.vmFreezeMs}_bucket`, { ...freeze, le: '+Inf' })).toBe(2);
    const sum = total(samples, `${METRICS.vmFreezeMs}_sum`, freeze);
    expect(sum).toBeCloseTo(
      result.vms.reduce((t, v) => t + v.freezeMs!, 0),
      1,
    );
    const buckets = samples.filter((s) => s.name === `${METRICS.vmFreezeMs}_bucket` && s.labels.group === group);
    expect(buckets.length).toBeGreaterThan(5);
    expect(buckets.find((b) => b.labels.le === '5000')?.value).toBe(2); // both within the default max freeze
    expect(total(samples, METRICS.compensations, { group })).toBe(0);

    for (const vm of [v1, v2]) {
      const lines = phaseLines(result.snapshotId).filter((l) => l.domain === vm);
      expect(lines.map((l) => l.phase)).toEqual(['pause', 'snapshot', 'resume']);
      for (const l of lines) expect(l).toMatchObject({ host: hostId, snapshotId: result.snapshotId, domain: vm });
      expect(lines[2]).toMatchObject({ by: 'resumed', freezeMs: result.vms.find((v) => v.domain === vm)!.freezeMs });
    }
  });

  it('counts a failed run and its compensation, and logs the undo', async () => {
    const group = uniqueId('mfail');
    const [v1] = fleet.names;
    const fakeVm = uniqueId('f');
    fake.addVm(fakeVm);
    fake.hypervisor.failOn('snapshot', fakeVm);
    const result: GroupSnapshotResult = await groupSnapshotResult(
      await startGroupSnapshot(client, {
        group,
        vms: [
          { domain: v1, host: hostId },
          { domain: fakeVm, host: fake.hostId },
        ],
      }),
    );
    expect(result.status).toBe('failed');
    expect(result.vms.find((v) => v.domain === v1)).toMatchObject({ outcome: 'rolled-back', state: 'running' });

    const samples = await scrapeUntil((s) => total(s, METRICS.groupSnapshots, { group, status: 'failed' }) > 0);
    expect(total(samples, METRICS.groupSnapshots, { group, status: 'failed' })).toBe(1);
    expect(total(samples, METRICS.groupSnapshots, { group, status: 'completed' })).toBe(0);
    expect(total(samples, METRICS.compensations, { group })).toBe(1);
    // Both VMs were paused: their freezes count, on their own hosts.
    expect(total(samples, `${METRICS.vmFreezeMs}_count`, { host: hostId, group })).toBe(1);
    expect(total(samples, `${METRICS.vmFreezeMs}_count`, { host: fake.hostId, group })).toBe(1);

    const lines = phaseLines(result.snapshotId).filter((l) => l.domain === v1);
    expect(lines.map((l) => l.phase)).toEqual(['pause', 'snapshot', 'resume', 'undo']);
    expect(lines[3]).toMatchObject({ host: hostId, hadSnapshot: true });
    expect(lines[3].error).toBeUndefined();
  });

  it.each([
    ['--metrics', ['--metrics', 'localhost:9464'], {}],
    ['GROUPSNAP_METRICS_ADDRESS', [], { GROUPSNAP_METRICS_ADDRESS: '9464' }],
  ])('rejects a metrics address that is not <ip>:<port> (%s) before starting', async (_how, args, env) => {
    const run = promisify(execFile)(process.execPath, [CLI, 'worker', '--no-guard', ...args], {
      env: { ...process.env, ...env },
    });
    await expect(run).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/metrics address must be <ip>:<port>/),
    });
  });
});

describe('VMs resumed by a deadline, counted by the host worker', () => {
  /** A meter that keeps every counter increment. */
  function recordingMeter(): { meter: MetricMeter; adds: { name: string; value: number; tags: MetricTags }[] } {
    const adds: { name: string; value: number; tags: MetricTags }[] = [];
    const meter = {
      createCounter: (name: string) => ({
        add: (value: number, tags: MetricTags = {}) => adds.push({ name, value, tags }),
      }),
    } as unknown as MetricMeter;
    return { meter, adds };
  }

  it('counts a guard resume once however often it is met, and a deadline timer when it fires', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'groupsnap-metrics-unit-'));
    const hv = new FakeHypervisor();
    hv.addDomain({ name: 'by-guard', state: 'running', disks: [] });
    hv.addDomain({ name: 'by-timer', state: 'paused', disks: [] });
    const { meter, adds } = recordingMeter();
    const host = createHost({ hypervisor: hv, hostId: 'h1', stateDir, metrics: meter });
    try {
      const now = Date.now();
      // The guard process already resumed this one (it writes the record, but has no metrics).
      host.journal.write({
        snapshotId: 's',
        domain: 'by-guard',
        state: 'resumed-by-guard',
        pausedAtMs: now - 2000,
        deadlineMs: now - 1000,
        resumedAtMs: now - 700,
      });
      // Still paused, deadline in 100 ms: the worker's timer (re-armed at start) resumes it.
      host.journal.write({
        snapshotId: 's',
        domain: 'by-timer',
        state: 'paused',
        pausedAtMs: now,
        deadlineMs: now + 100,
      });
      // Compensation thaws twice, and the worker restarts later: the guard's resume counts once.
      await host.activities.thawVms({ snapshotId: 's', domains: ['by-guard'], quiesced: [] });
      await host.activities.thawVms({ snapshotId: 's', domains: ['by-guard'], quiesced: [] });
      await host.recover();
      const deadline = Date.now() + 5000;
      while (hv.domains.get('by-timer')!.state !== 'running' && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50));
      expect(adds).toEqual([
        { name: METRICS.vmsResumedByGuard, value: 1, tags: { host: 'h1', by: 'guard' } },
        { name: METRICS.vmsResumedByGuard, value: 1, tags: { host: 'h1', by: 'timer' } },
      ]);
    } finally {
      host.shutdown();
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});

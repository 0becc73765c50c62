/**
 * The end of a freeze on this host: resumes the VMs a run paused (once, whoever asks: the freeze, the workflow's
 * `thawVms`, a deadline timer), closes the quiesce records of those it did not pause, and thaws guest filesystems.
 */
import type { FreezeVmReport, PlannedVm, ThawRequest, ThawVmReport } from '../../common/host-types';
import { OPEN_STATES, type FreezeRecord } from '../freeze-journal';
import { checkDomains, checkName, failIf } from '../input-checks';
import { resumeFromJournal, thawRecord } from '../resume';
import { message, round, type HostContext } from './context';

/** Log fields of a VM's resume: how long it was paused and who resumed it (`resumed`: the workflow's release). */
function resumeFields(rec: FreezeRecord): Record<string, unknown> {
  return {
    by: rec.state,
    ...(rec.resumedAtMs !== undefined
      ? { resumedAtMs: rec.resumedAtMs, freezeMs: round(rec.resumedAtMs - rec.pausedAtMs) }
      : {}),
  };
}

/** Resumes the VMs of `reports` this run paused (no-op for those already resumed) and notes who resumed them. */
export async function resumeOurs(ctx: HostContext, snapshotId: string, reports: FreezeVmReport[]): Promise<void> {
  await Promise.all(
    reports
      .filter((r) => r.pausedByUs)
      .map(async (r) => {
        ctx.timers.disarm(snapshotId, r.domain);
        r.resumeIssuedAtMs ??= ctx.now();
        const rec = await resumeFromJournal(ctx.hypervisor, ctx.journal, snapshotId, r.domain, 'resumed');
        r.resumedAtMs = rec?.resumedAtMs;
        r.resumedByGuard = rec !== undefined && rec.state !== 'resumed';
        ctx.reportGuardResume(rec);
        if (rec) ctx.logPhase('resume', snapshotId, r.domain, resumeFields(rec));
      }),
  );
}

/**
 * Closes the quiesce records of VMs this run froze but did not (or could not) pause, and thaws their guests:
 * called once the freeze on this host is over. Records of VMs it paused were closed, and thawed, by their resume.
 */
export async function closeQuiesceRecords(ctx: HostContext, snapshotId: string, vms: PlannedVm[]): Promise<void> {
  const { journal } = ctx;
  for (const vm of vms) {
    let rec = journal.read(snapshotId, vm.domain);
    if (!rec?.fsFrozen || rec.fsThawed) continue;
    ctx.timers.disarm(snapshotId, vm.domain);
    if (rec.state === 'pausing')
      journal.write((rec = { ...rec, state: 'resumed', resumedAtMs: ctx.now(), notPausedByUs: true }));
    if (!OPEN_STATES.includes(rec.state)) await thawRecord(ctx.hypervisor, journal, rec);
  }
}

/** Thaws the guest filesystems of `domains`; a failure is logged (the records' thaw tries again). */
export async function thawFilesystems(ctx: HostContext, domains: string[]): Promise<void> {
  await Promise.all(
    domains.map((d) =>
      ctx.hypervisor.fsThaw(d).catch((err) => ctx.log('fsThaw failed', { domain: d, error: message(err) })),
    ),
  );
}

/** The thaw activity, `thawVms`: the workflow's resume of a host's VMs (the `thaw` release, and compensation). */
export function createThawActivities(ctx: HostContext) {
  const { hypervisor, journal } = ctx;
  return {
    /** Resumes the VMs this snapshot paused on this host (no-op for those already resumed), then thaws. */
    async thawVms(req: ThawRequest): Promise<ThawVmReport[]> {
      const problems: string[] = [];
      checkName('snapshot id', req.snapshotId, problems);
      checkDomains(req.domains, problems);
      if (!Array.isArray(req.quiesced) || !req.quiesced.every((d) => req.domains.includes(d)))
        problems.push('quiesced VMs must be a list of the VMs thawed');
      failIf(problems);
      const out = await Promise.all(
        req.domains.map(async (domain): Promise<ThawVmReport> => {
          ctx.timers.disarm(req.snapshotId, domain);
          const before = journal.read(req.snapshotId, domain);
          const rec = await resumeFromJournal(hypervisor, journal, req.snapshotId, domain, 'resumed');
          ctx.reportGuardResume(rec);
          // Compensation thaws twice: log the resume once, when this call found the VM still paused.
          if (rec && before && OPEN_STATES.includes(before.state))
            ctx.logPhase('resume', req.snapshotId, domain, resumeFields(rec));
          const state = await hypervisor.state(domain).catch(() => undefined);
          if (!rec || rec.notPausedByUs) return { domain, pausedByUs: false, state };
          return {
            domain,
            pausedByUs: true,
            pausedAtMs: rec.pausedAtMs,
            resumedAtMs: rec.resumedAtMs,
            resumedByGuard: rec.state !== 'resumed',
            state,
          };
        }),
      );
      await thawFilesystems(ctx, req.quiesced);
      return out;
    },
  };
}

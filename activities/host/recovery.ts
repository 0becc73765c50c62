import { recoverFreezes } from '../resume';
import type { FreezeRecord } from '../freeze-journal';
import { message, type HostContext } from './context';

/**
 * Finishes freezes a crashed worker left: resumes VMs past their deadline, re-arms timers for the rest. Also counts
 * the VMs the host guard resumed meanwhile (see {@link HostContext.reportGuardResume}). Returns the records it closed.
 */
export async function recoverHost(ctx: HostContext): Promise<FreezeRecord[]> {
  const { closed, failed } = await recoverFreezes(ctx.hypervisor, ctx.journal, ctx.timers, 'resumed-by-guard');
  for (const r of closed) ctx.reportGuardResume(r, 'recovery');
  for (const r of ctx.journal.list()) ctx.reportGuardResume(r, 'guard');
  // One record that cannot be closed now must not keep the worker from starting: its timer keeps trying (and
  // the guard too).
  for (const f of failed) {
    ctx.log('cannot finish an interrupted freeze yet, retrying', {
      domain: f.record.domain,
      snapshotId: f.record.snapshotId,
      error: message(f.error),
    });
    ctx.timers.arm(f.record);
  }
  return closed;
}

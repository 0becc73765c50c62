import { WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import { MockActivityEnvironment } from '@temporalio/testing';
import { waitForRelease } from '../../activities/host/barrier';
import type { HostContext } from '../../activities/host/context';
import type { FreezeRequest, FreezeVmReport } from '../../common/host-types';

/**
 * The host's side of the Update barrier asks again when the server dropped its Update with a failed or timed-out
 * workflow task (issue 29: an overloaded workflow worker at 64 simulated hosts turned that into an aborted group),
 * and only then: the workflow's answer, or a refusal, ends the wait.
 */
describe('waitForRelease (the Update barrier, host side)', () => {
  const req = { snapshotId: 's1', maxFreezeMs: 5000, host: 'h1' } as FreezeRequest;
  const reports: FreezeVmReport[] = [
    { domain: 'd1', pausedByUs: true, snapshotted: false, quiesced: false, pausedAtMs: Date.now() },
  ];
  const ctx = { now: () => Date.now(), log: () => {} } as unknown as HostContext;

  function fakeClient(outcomes: (boolean | Error)[]) {
    const calls: unknown[] = [];
    const client = {
      workflow: {
        getHandle: () => ({
          executeUpdate: async (name: string, opts: unknown) => {
            calls.push([name, opts]);
            const next = outcomes.shift();
            if (next instanceof Error) throw next;
            return next;
          },
        }),
      },
      withDeadline: (_deadline: number, fn: () => Promise<unknown>) => fn(),
      withAbortSignal: (_signal: AbortSignal, fn: () => Promise<unknown>) => fn(),
    } as unknown as Client;
    return { client, calls };
  }
  const run = (client: Client) =>
    new MockActivityEnvironment({ workflowExecution: { workflowId: 'wf', runId: 'r' } }, { client }).run(() =>
      waitForRelease(ctx, req, reports),
    );
  const unprocessed = () =>
    new WorkflowUpdateFailedError(
      'Workflow Update failed',
      Object.assign(new Error('not processed'), { type: 'UnprocessedUpdate' }),
    );

  it('asks again after an Update lost with its workflow task, and returns the answer', async () => {
    const { client, calls } = fakeClient([
      unprocessed(),
      new Error('Unable to perform workflow execution update due to unexpected workflow task failure.'),
      true,
    ]);
    await expect(run(client)).resolves.toBe(true);
    expect(calls).toHaveLength(3);
    expect(calls[2]).toEqual(['hostFrozen', { args: ['h1'] }]);
  });

  it('takes an abort as the answer, and a refusal as final', async () => {
    await expect(run(fakeClient([false]).client)).resolves.toBe(false);
    const refused = new WorkflowUpdateFailedError(
      'Workflow Update failed',
      Object.assign(new Error('host h1 is not part of this shard'), { type: 'Error' }),
    );
    const { client, calls } = fakeClient([refused, true]);
    await expect(run(client)).rejects.toBe(refused);
    expect(calls).toHaveLength(1);
  });
});

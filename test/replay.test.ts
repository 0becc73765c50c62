import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { Worker } from '@temporalio/worker';
import { HISTORIES_DIR } from './helpers/histories';
import { workflowBundle } from './helpers/workers';

/**
 * Replays recorded histories (group snapshots completed, failed-and-compensated, cancelled; group runs; local
 * restores, restores from the repository, exports and drills, done and rolled back) against the current workflow
 * code: a change that would break running workflows fails here. Re-record with
 * `GROUPSNAP_RECORD_HISTORIES=1 npx jest <the test that calls maybeRecordHistory>` when a change is meant to be
 * breaking (and version it with `patched()`).
 */
describe('workflow determinism', () => {
  const files = readdirSync(HISTORIES_DIR).filter((f) => f.endsWith('.json'));

  it('has recorded histories to replay', () => {
    expect(files.length).toBeGreaterThanOrEqual(3);
  });

  it.each(files)('replays %s without non-determinism', async (file) => {
    const history = historyFromJSON(JSON.parse(readFileSync(join(HISTORIES_DIR, file), 'utf8')));
    await expect(
      Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, `replay-${file}`),
    ).resolves.toBeUndefined();
  });
});

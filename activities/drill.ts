import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { promisify } from 'node:util';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { readKeyFile } from '../backup/crypto';
import { DRILL_RECORD, Repository } from '../backup/repository';
import type { DrillRecord, WaitReadyRequest } from '../common/drill';
import { BAD_INPUT } from '../common/validation';
import type { Hypervisor } from '../hypervisor/hypervisor';
import { serialOutputs } from '../hypervisor/domain-xml';
import { REPO_KEY_FILE_ENV } from './repo-restore';
import { heartbeat } from './heartbeat';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface DrillDeps {
  hypervisor: Hypervisor;
  hostId: string;
  keyFile?: string;
  /** Whether this host runs drill check commands (`--allow-drill-checks`). @default false */
  allowChecks?: boolean;
}

function cancelled(): boolean {
  try {
    return Context.current().cancellationSignal.aborted;
  } catch {
    return false;
  }
}

/** Reads what a listening serial socket says, appending to `into.text`, until `stop` resolves. */
function readSocket(path: string, into: { text: string }, stop: Promise<void>): void {
  const s = createConnection(path);
  s.on('data', (d: Buffer) => (into.text = (into.text + d.toString('latin1')).slice(-65536)));
  s.on('error', () => undefined);
  void stop.then(() => s.destroy());
}

/** The drill's steps on the target host: find the latest point, wait for readiness, record the outcome. */
export function createDrillActivities(deps: DrillDeps) {
  const openRepo = async (url: string) => {
    const keyFile = deps.keyFile ?? process.env[REPO_KEY_FILE_ENV];
    if (!keyFile)
      throw ApplicationFailure.nonRetryable(`host ${deps.hostId} has no repository key (--key-file)`, BAD_INPUT);
    return Repository.open(url, readKeyFile(keyFile));
  };
  return {
    /** The newest point of `group` in the repository. */
    async repoLatestPoint(req: { repo: string; group: string }): Promise<string> {
      const repo = await openRepo(req.repo);
      try {
        const points = await repo.listPoints({ group: req.group });
        const latest = points.at(-1);
        if (!latest) throw ApplicationFailure.nonRetryable(`group ${req.group} has no point in ${req.repo}`, BAD_INPUT);
        return latest.snapshotId;
      } finally {
        repo.close();
      }
    },

    /**
     * Waits until the clones are ready: all running (and still running after 2 s), a line matching on every VM's
     * serial console, or a check command exiting 0. Returns what it saw; throws on timeout, with the evidence.
     */
    async waitReady(req: WaitReadyRequest): Promise<{ evidence: string[] }> {
      const deadline = Date.now() + req.timeoutMs;
      if (req.readiness === 'command' && !deps.allowChecks)
        throw ApplicationFailure.nonRetryable(
          `host ${deps.hostId} does not run drill check commands: start its worker with --allow-drill-checks`,
          BAD_INPUT,
        );
      let stopReading!: () => void;
      const stop = new Promise<void>((r) => (stopReading = r));
      const consoles = new Map<string, { text: string; files: string[] }>();
      if (req.readiness === 'serial-line') {
        for (const d of req.domains) {
          const outs = serialOutputs(await deps.hypervisor.domainXml(d));
          const c = { text: '', files: outs.flatMap((o) => (o.file ? [o.file] : [])) };
          for (const o of outs) if (o.socket) readSocket(o.socket, c, stop);
          consoles.set(d, c);
        }
      }
      const pattern = req.serialLine !== undefined ? new RegExp(req.serialLine) : undefined;
      let last = '';
      try {
        for (let i = 0; ; i++) {
          heartbeat({ waiting: req.readiness, i });
          if (cancelled()) throw new Error('cancelled');
          const states = await Promise.all(req.domains.map((d) => deps.hypervisor.state(d)));
          const down = req.domains.filter((_, k) => states[k] !== 'running');
          if (down.length) last = `not running: ${down.join(', ')}`;
          else if (req.readiness === 'running') {
            if (i > 0) return { evidence: req.domains.map((d) => `${d}: running`) };
          } else if (req.readiness === 'serial-line') {
            const seen: string[] = [];
            for (const d of req.domains) {
              const c = consoles.get(d)!;
              const text = c.text + c.files.map((f) => safeRead(f)).join('\n');
              const line = text.split(/\r?\n/).find((l) => pattern!.test(l));
              if (line !== undefined) seen.push(`${d}: ${line.trim()}`);
            }
            if (seen.length === req.domains.length) return { evidence: seen };
            last = `serial line /${req.serialLine}/ seen on ${seen.length}/${req.domains.length} VMs`;
          } else {
            try {
              const r = await run('sh', ['-c', req.check!], {
                timeout: Math.max(1000, Math.min(60_000, deadline - Date.now())),
                env: { ...process.env, GROUPSNAP_DRILL_VMS: req.domains.join(' ') },
              });
              return { evidence: [`check exited 0`, ...lastLines(r.stdout)] };
            } catch (err) {
              const e = err as { code?: number; stdout?: string; stderr?: string };
              last = `check exited ${e.code ?? '?'}: ${lastLines(`${e.stdout ?? ''}${e.stderr ?? ''}`).join(' | ')}`;
            }
          }
          if (Date.now() > deadline)
            throw ApplicationFailure.nonRetryable(`not ready after ${req.timeoutMs} ms: ${last}`, 'DrillNotReady');
          await sleep(req.readiness === 'command' ? 2000 : 500);
        }
      } finally {
        stopReading();
      }
    },

    /** Stores the drill's outcome beside the point in the repository (`points/<G>/<id>/drill`). */
    async recordDrill(req: { repo: string; record: DrillRecord }): Promise<void> {
      const repo = await openRepo(req.repo);
      try {
        await repo.writeSealedJson(
          `${repo.pointPrefix(req.record.group, req.record.snapshotId)}${DRILL_RECORD}`,
          req.record,
        );
      } finally {
        repo.close();
      }
    },
  };
}

function safeRead(file: string): string {
  try {
    return readFileSync(file, 'latin1').slice(-65536);
  } catch {
    return '';
  }
}

function lastLines(text: string): string[] {
  return text.trim().split('\n').filter(Boolean).slice(-5);
}

export type DrillActivities = ReturnType<typeof createDrillActivities>;

/** The last drill recorded beside a point, if any. */
export async function readDrillRecord(repo: Repository, group: string, snapshotId: string) {
  return repo.readSealedJson<DrillRecord>(`${repo.pointPrefix(group, snapshotId)}${DRILL_RECORD}`);
}

/** Registration of the off-host backup commands (`repo ...`, `export`) on the `groupsnap` program. */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { readKeyFile } from '../backup/crypto';
import { REPO_KEY_FILE_ENV } from '../common/backup-types';
import { BadInputError } from '../common/failures';
import { exportCommand, repoInit, repoList, repoPrune, repoVerify } from './backup-commands';
import { parseInteger } from './parse';
import { repoServe, repoServeExports } from './serve-command';

type Act = <A extends unknown[]>(fn: (...args: A) => Promise<void>) => (...args: A) => Promise<void>;

function parseNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0)
    throw new BadInputError(`expected a positive number, got ${JSON.stringify(value)}`);
  return n;
}

/**
 * The worker's `--repo-key-file`: checked at start (a bad key file stops the worker with exit 2), then handed to the
 * export activities through `GROUPSNAP_REPO_KEY_FILE`.
 */
export function withRepoKeyFile<O>(
  fn: (opts: O) => Promise<void>,
): (opts: O & { repoKeyFile?: string }) => Promise<void> {
  return async (opts) => {
    const file = opts.repoKeyFile ?? process.env[REPO_KEY_FILE_ENV];
    if (file) {
      try {
        readKeyFile(file);
      } catch (err) {
        console.error(`groupsnap: ${(err as Error).message}`);
        process.exit(2);
      }
      process.env[REPO_KEY_FILE_ENV] = resolve(file);
    }
    await fn(opts);
  };
}

export function registerBackupCommands(program: Command, temporalOptions: (c: Command) => Command, act: Act): void {
  const repo = program
    .command('repo')
    .description('off-host repositories of group snapshots (S3 or a directory), read here with the key');
  const keyOption = (c: Command) =>
    c.option('--key-file <file>', 'repository key: 32 random bytes, raw or base64 (default: GROUPSNAP_REPO_KEY_FILE)');
  keyOption(
    repo
      .command('init')
      .description('create a repository (the bucket, or the parent directory, must exist)')
      .argument('[url]', 's3://bucket/prefix or file:///path (default: GROUPSNAP_REPO)')
      .option('--chunk-size <MiB>', 'chunk size in MiB (default 4)', parseInteger)
      .option('--json', 'print JSON'),
  ).action(act(repoInit));
  keyOption(
    repo
      .command('list')
      .description('every exported point with its VMs, sizes, bytes new and last verification')
      .argument('[url]', 'repository URL (default: GROUPSNAP_REPO)')
      .option('--group <group>', 'only this group')
      .option('--json', 'print JSON'),
  ).action(act(repoList));
  keyOption(
    repo
      .command('verify')
      .description("check every point's manifests and chunks; exit 1 and name group/VM/disk/offset of any damage")
      .argument('[url]', 'repository URL (default: GROUPSNAP_REPO)')
      .option('--read-data', 'also read, decrypt and check every chunk')
      .option('--group <group>', 'only this group')
      .option('--json', 'print JSON'),
  ).action(act(repoVerify));
  keyOption(
    repo
      .command('prune')
      .description('off-host retention: delete points the policy does not keep, then sweep unreferenced chunks')
      .argument('[url]', 'repository URL (default: GROUPSNAP_REPO)')
      .option('--group <group>', 'only this group')
      .option('--keep-last <n>', 'keep the last n points', parseInteger)
      .option('--keep-hourly <n>', 'keep one per hour for n hours', parseInteger)
      .option('--keep-daily <n>', 'keep one per day for n days', parseInteger)
      .option('--keep-weekly <n>', 'keep one per week for n weeks', parseInteger)
      .option('--keep-monthly <n>', 'keep one per month for n months', parseInteger)
      .option('--timezone <tz>', 'IANA time zone of the periods', 'UTC')
      .option('--dry-run', 'say what would be deleted, delete nothing')
      .option('--wait <seconds>', 'wait this long for running exports before giving up the sweep', parseInteger)
      .option('--json', 'print JSON'),
  ).action(act(repoPrune));
  keyOption(
    repo
      .command('serve')
      .description(
        'serve one disk of a point read-only over NBD on a Unix socket until Ctrl-C (file-level recovery: qemu-img, qemu-nbd, guestfish)',
      )
      .argument('<url>', 'repository URL (s3://bucket/prefix or file:///path)')
      .argument('<group>')
      .argument('<snapshotId>')
      .option('--vm <name>', 'the VM of the point whose disk to serve')
      .option('--disk <target>', 'the disk to serve (vda, sdb, ...)')
      .option('--socket <path>', 'the Unix socket to listen on (default: a new private directory under the temp dir)')
      .option('--cache-mib <MiB>', 'chunk cache size (default 256)', parseInteger)
      .option('--json', 'print JSON'),
  ).action(act(repoServe));
  repo
    .command('serve-exports', { hidden: true })
    .description('the detached NBD server of a spec file (started by the host side: backup/serve-process.ts)')
    .argument('<specFile>')
    .action(act(repoServeExports));

  temporalOptions(
    keyOption(
      program
        .command('export')
        .description(
          "copy a group snapshot off its hosts into a repository (a workflow; each host's worker has the key)",
        )
        .argument('<group>')
        .argument('<snapshotId>')
        .option('--repo <url>', 'repository URL (default: GROUPSNAP_REPO)')
        .option('--max-rate <MiB/s>', 'read bandwidth limit per disk', parseNumber)
        .option('--no-wait', 'start the export and return its workflow id')
        .option('--json', 'print JSON'),
    ),
  ).action(act(exportCommand));
}

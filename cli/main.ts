#!/usr/bin/env node
import { Command, Option } from 'commander';
import { defaults } from '../common/config';
import { DEFAULT_MAX_FREEZE_MS } from '../common/names';
import type { QuiesceMode, ResumeWhen, VmRef } from '../common/types';
import { catalogCommand, guardCommand, snapshotCommand, workerCommand, EXIT } from './commands';
import { reportError } from './exit';
import { drillCommand } from './drill-command';
import { planApply, planDefine, planDelete, planList, planShow, recoverCommand } from './plan-commands';
import { repoRestoreCommand, type RepoRestoreFlags } from './repo-restore-command';
import { registerBackupCommands, withRepoKeyFile } from './backup-cli';
import { groupCreate, groupDelete, groupList, groupShow } from './group-commands';
import { hostForget, hostList, tagCommand } from './host-commands';
import { restoreCommand } from './restore-command';
import { scheduleAction, scheduleBackfill, scheduleCreate, scheduleList, scheduleShow } from './schedule-commands';
import { snapshotDelete, snapshotGroupCommand, snapshotList } from './snapshot-commands';
import type { CommonOptions } from './with-client';
import { checkSnapshotTake } from './check-input';
import { restoreList, restoreRelease, snapshotPin } from './pin-commands';
import { collect, parseInteger, parseQuiesce, parseResumeWhen, parseSnapshotsInFlight, parseVmRef } from './parse';
import { BadInputError } from '../common/failures';

const program = new Command('groupsnap')
  .description('Crash-consistent snapshots of groups of VMs, orchestrated by Temporal over libvirt')
  .showHelpAfterError()
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT.badInput));

/** Wraps an action: bad input found before anything runs exits 2 with a clear message. */
function act<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (err) {
      process.exitCode = reportError(err);
    }
  };
}

const temporalOptions = (cmd: Command): Command =>
  cmd
    .option('--address <host:port>', 'Temporal frontend (default: TEMPORAL_ADDRESS or localhost:7233)')
    .option('--namespace <ns>', 'Temporal namespace (default: TEMPORAL_NAMESPACE or default)');

temporalOptions(
  program
    .command('worker')
    .description("run this hypervisor host's worker (and its freeze guard)")
    .option('--host <id>', 'host id (default: GROUPSNAP_HOST_ID or the hostname)')
    .option('--libvirt-uri <uri>', 'libvirt URI (default: GROUPSNAP_LIBVIRT_URI or qemu:///system)')
    .option('--state-dir <dir>', 'freeze journal and leases (default: /var/lib/groupsnap/hosts/<id>)')
    .option(
      '--images-dir <dir>',
      "where restored and cloned disks go on this host (default: GROUPSNAP_IMAGES_DIR, else libvirt's default pool dir for the URI)",
    )
    .option('--key-file <file>', "the off-host repository's key file on this host (default: GROUPSNAP_REPO_KEY_FILE)")
    .option('--allow-drill-checks', "run DR drills' --check commands on this host (sh -c, as the worker's user)")
    .option(
      '--boot-files-dir <dir>',
      'a directory restored VMs may boot read-only files from (kernel, initrd, firmware; repeat; added to the firmware dirs and GROUPSNAP_BOOT_FILE_DIRS)',
      collect(String),
    )
    .option('--no-workflows', 'do not also run the workflow worker on the shared queue')
    .option('--no-guard', 'do not start the freeze guard process (VMs stay protected only while the worker lives)')
    .option(
      '--snapshots-in-flight <n>',
      'most snapshots this host takes at once while its VMs are paused (1-64; default 2, the best measured on 2 cores)',
      parseSnapshotsInFlight,
    )
    .option(
      '--metrics <ip:port>',
      'serve Prometheus metrics (Temporal SDK and groupsnap) at http://<ip:port>/metrics, e.g. 0.0.0.0:9464 (default: GROUPSNAP_METRICS_ADDRESS; off)',
    )
    .option(
      '--repo-key-file <file>',
      'the same as --key-file (the repository key, for exports, restores and drills on this host)',
    ),
).action(withRepoKeyFile(workerCommand));

program
  .command('guard', { hidden: true })
  .requiredOption('--state-dir <dir>')
  .requiredOption('--libvirt-uri <uri>')
  .action(guardCommand);

const snapshot = program
  .command('snapshot')
  .description('take a group snapshot (of a named group, or of the VMs given with --vm), list or delete snapshots');

temporalOptions(
  snapshot
    .command('take [group]', { isDefault: true })
    .description('(default) take a crash-consistent snapshot: `snapshot <group>` or `snapshot --vm d@h ...`')
    .option(
      '--vm <domain[@host]>',
      'a VM of an ad hoc group (repeat); host defaults to this host',
      collect((v) => parseVmRef(v, defaults.hostId())),
    )
    .option('--group <name>', 'ad hoc group name used in ids and search attributes (with --vm)', 'adhoc')
    .option('--label <text>', 'label kept in the catalog (file-name safe)')
    .option('--snapshot-id <id>', 'snapshot id (default: generated)')
    .option('--max-freeze <ms>', 'longest time a VM may stay paused', parseInteger, DEFAULT_MAX_FREEZE_MS)
    .addOption(
      new Option('--quiesce <mode>', 'freeze guest filesystems via the QEMU guest agent')
        .argParser(parseQuiesce)
        .default('none'),
    )
    .option(
      '--resume-when <when>',
      'group-paused (default): each VM resumes once its snapshot is taken and the whole group is paused; ' +
        'group-snapshotted: all resume together after every snapshot',
      parseResumeWhen,
    )
    .option(
      '--update-barrier-max-hosts <n>',
      "largest group (hosts) released through the workflow's update barrier; keep under the server's history.maxInFlightUpdates",
      parseInteger,
    )
    .option(
      '--shard-above-hosts <n>',
      'groups over this many hosts freeze through shard child workflows (default 64; docs/adr/0014)',
      parseInteger,
    )
    .option(
      '--shard-hosts <n>',
      "hosts per shard, each shard's update barrier (default 8; keep under the server's history.maxInFlightUpdates)",
      parseInteger,
    )
    .option('--json', 'print one JSON result object'),
).action(
  act(
    async (
      group: string | undefined,
      opts: {
        vm?: VmRef[];
        group: string;
        label?: string;
        snapshotId?: string;
        maxFreeze: number;
        quiesce: QuiesceMode;
        resumeWhen?: ResumeWhen;
        updateBarrierMaxHosts?: number;
        shardAboveHosts?: number;
        shardHosts?: number;
        json?: boolean;
        address?: string;
        namespace?: string;
      },
    ) => {
      checkSnapshotTake(group, {
        vms: opts.vm,
        group: opts.group,
        label: opts.label,
        snapshotId: opts.snapshotId,
        maxFreezeMs: opts.maxFreeze,
        quiesce: opts.quiesce,
        resumeWhen: opts.resumeWhen,
        updateBarrierMaxHosts: opts.updateBarrierMaxHosts,
        shardAboveHosts: opts.shardAboveHosts,
        shardHosts: opts.shardHosts,
      });
      if (!opts.vm) {
        if (!group) throw new BadInputError('give a group name, or the VMs of an ad hoc group with --vm');
        await snapshotGroupCommand(
          group,
          {
            label: opts.label,
            snapshotId: opts.snapshotId,
            maxFreezeMs: opts.maxFreeze,
            quiesce: opts.quiesce,
            ...(opts.resumeWhen ? { resumeWhen: opts.resumeWhen } : {}),
          },
          opts,
        );
        return;
      }
      process.exitCode = await snapshotCommand(
        {
          vms: opts.vm,
          group: group ?? opts.group,
          label: opts.label,
          snapshotId: opts.snapshotId,
          maxFreezeMs: opts.maxFreeze,
          quiesce: opts.quiesce,
          ...(opts.resumeWhen ? { resumeWhen: opts.resumeWhen } : {}),
          updateBarrierMaxHosts: opts.updateBarrierMaxHosts,
          shardAboveHosts: opts.shardAboveHosts,
          shardHosts: opts.shardHosts,
        },
        opts,
      );
    },
  ),
);

temporalOptions(
  snapshot
    .command('list')
    .description("a group's snapshots, newest first, as recorded on its VMs")
    .argument('<group>')
    .option('--json', 'print JSON'),
).action(act(snapshotList));

temporalOptions(
  snapshot
    .command('delete')
    .description('delete a group snapshot: merge its layers out of every VM chain online (block commit)')
    .argument('<group>')
    .argument('<snapshotId>')
    .option('--json', 'print JSON'),
).action(act(snapshotDelete));

for (const pinned of [true, false]) {
  temporalOptions(
    snapshot
      .command(pinned ? 'pin' : 'unpin')
      .description(
        pinned
          ? 'pin a group snapshot: retention keeps it and deleting it is refused until unpinned'
          : 'unpin a group snapshot',
      )
      .argument('<group>')
      .argument('<snapshotId>')
      .option('--json', 'print JSON'),
  ).action(act(snapshotPin(pinned)));
}

const group = program.command('group').description('software-defined groups of VMs');
temporalOptions(
  group
    .command('create')
    .description('define a group: an explicit list of VMs, or every VM carrying a tag')
    .argument('<name>')
    .option(
      '--vm <domain@host>',
      'a member VM (repeat)',
      collect((v) => parseVmRef(v, defaults.hostId())),
    )
    .option('--tag <tag>', 'members: every VM with this tag, on any registered host, at snapshot time')
    .option('--description <text>')
    .option('--repo <url>', 'export every snapshot of the group to this repository (s3://bucket/prefix, file:///path)')
    .option(
      '--copy-to <url>',
      'then copy every exported point to this second repository (needs --repo; run by `groupsnap copy-worker`)',
    )
    .option(
      '--resume-when <when>',
      'group-paused (default) or group-snapshotted: see `snapshot --help`',
      parseResumeWhen,
    )
    .option('--json', 'print JSON'),
).action(act(groupCreate));
temporalOptions(group.command('list').description('list groups').option('--json', 'print JSON')).action(act(groupList));
temporalOptions(
  group.command('show').description('a group and its members now').argument('<name>').option('--json', 'print JSON'),
).action(act(groupShow));
temporalOptions(
  group
    .command('delete')
    .description('delete a group definition (its snapshots stay)')
    .argument('<name>')
    .option('--with-schedule', "also delete the group's schedule")
    .option('--json', 'print JSON'),
).action(act(groupDelete));

const plan = program.command('plan').description('recovery plans: how a group comes back, tier by tier, checked');
temporalOptions(
  plan
    .command('apply')
    .description('check a plan file (YAML) and store it with its group (replacing one of the same name)')
    .argument('<file>')
    .option('--json', 'print JSON'),
).action(act(planApply));
temporalOptions(
  plan
    .command('define')
    .description('a plan from the command line, checked like a file and stored with its group (or --print its YAML)')
    .argument('<name>')
    .option('--group <group>', 'the group it recovers')
    .option('--repo <url>', 'the repository the points come from (or GROUPSNAP_REPO)')
    .option('--host <id>', 'recovery host of every VM not --place-d')
    .option('--place <vm=host>', 'recovery host of one VM (repeat)', collect(String))
    .option('--tier <name:vm,...>', 'a tier, in order (repeat)', collect(String))
    .option(
      '--check <vm=kind>',
      'readiness: vm=serial:<regex> | vm=tcp:<address>:<port> | vm=command:<cmd> | vm=running (repeat)',
      collect(String),
    )
    .option('--check-timeout <duration>', 'timeout of every check (default 5m)')
    .option('--restore <kind>', 'full (default) or instant')
    .option('--map-network <old=new>', 'failover: network renamed on the recovery side (repeat)', collect(String))
    .option('--test-network <old=isolated>', 'test runs: none (default) or networks mapped (repeat)', collect(String))
    .option('--decision-timeout <duration>', 'failover: wait this long for commit/rollback (default 1h)')
    .option('--on-timeout <policy>', 'failover: commit (default) or rollback when no answer came')
    .option('--print', 'print the plan (YAML) instead of storing it')
    .option('--json', 'print JSON'),
).action(act(planDefine));
temporalOptions(
  plan.command('show').description('a stored plan, as YAML').argument('<name>').option('--json', 'print JSON'),
).action(act(planShow));
temporalOptions(plan.command('list').description('every stored plan').option('--json', 'print JSON')).action(
  act(planList),
);
temporalOptions(
  plan.command('delete').description('delete a stored plan').argument('<name>').option('--json', 'print JSON'),
).action(act(planDelete));
temporalOptions(
  program
    .command('recover')
    .description(
      'run a recovery plan (`recover <plan> --mode failover|test`), or decide a failover (`recover commit|rollback <run>`), or show a run (`recover status <run>`)',
    )
    .argument('<plan>', 'the plan, or commit / rollback / status')
    .argument('[run]', 'the run id (with commit, rollback, status)')
    .option(
      '--mode <mode>',
      'failover (as the original VMs, then commit or rollback) or test (isolated clones, torn down)',
    )
    .option('--point <id>', 'the point to recover (default: the latest in the repository)')
    .option('--watch', 'print the progress (tier, VM, state, time to ready) as it changes')
    .option('--cron <expr>', 'test mode: instead of running now, run on this schedule (latest point)')
    .option('--timezone <tz>', 'time zone of --cron (default UTC)')
    .option('--json', 'print JSON'),
).action(act(recoverCommand));

temporalOptions(
  program
    .command('tag')
    .description("add tags to a VM (kept in the VM's libvirt metadata)")
    .argument('<vm>', 'domain@host')
    .argument('<tags...>')
    .option('--json', 'print JSON'),
).action(
  act((vm: string, tags: string[], opts: CommonOptions) =>
    tagCommand(parseVmRef(vm, defaults.hostId()), tags, false, opts),
  ),
);
temporalOptions(
  program
    .command('untag')
    .description('remove tags from a VM')
    .argument('<vm>', 'domain@host')
    .argument('<tags...>')
    .option('--json', 'print JSON'),
).action(
  act((vm: string, tags: string[], opts: CommonOptions) =>
    tagCommand(parseVmRef(vm, defaults.hostId()), tags, true, opts),
  ),
);

const host = program.command('host').description('hypervisor hosts registered by their workers');
temporalOptions(host.command('list').description('registered hosts').option('--json', 'print JSON')).action(
  act(hostList),
);
temporalOptions(
  host.command('forget').description('remove a decommissioned host').argument('<host>').option('--json', 'print JSON'),
).action(act(hostForget));

const schedule = program.command('schedule').description("a group's periodic snapshots (a Temporal Schedule)");
temporalOptions(
  schedule
    .command('create')
    .description('snapshot a group on a cron schedule, then apply retention')
    .argument('<group>')
    .requiredOption('--cron <expr>', 'cron expression, e.g. "0 * * * *"')
    .option('--timezone <tz>', 'IANA time zone of the cron', 'UTC')
    .option('--overlap <policy>', 'skip | buffer-one | buffer-all | cancel-other | terminate-other | allow-all', 'skip')
    .option('--catchup <duration>', 'how late a missed run may still start, e.g. 10m', '1m')
    .option('--jitter <duration>', 'random delay added to each run, e.g. 30s')
    .option('--keep-last <n>', 'retention: keep the last n snapshots', parseInteger)
    .option('--keep-hourly <n>', 'retention: keep one per hour for n hours', parseInteger)
    .option('--keep-daily <n>', 'retention: keep one per day for n days', parseInteger)
    .option('--keep-weekly <n>', 'retention: keep one per week for n weeks', parseInteger)
    .option('--keep-monthly <n>', 'retention: keep one per month for n months', parseInteger)
    .option('--label <text>', 'label of the scheduled snapshots')
    .option('--max-freeze <ms>', 'longest time a VM may stay paused', parseInteger)
    .option('--note <text>')
    .option('--paused', 'create it paused')
    .option('--json', 'print JSON'),
).action(
  act((g: string, opts: Parameters<typeof scheduleCreate>[1] & { maxFreeze?: number }) =>
    scheduleCreate(g, { ...opts, maxFreezeMs: opts.maxFreeze }),
  ),
);
temporalOptions(schedule.command('list').description('groupsnap schedules').option('--json', 'print JSON')).action(
  act(scheduleList),
);
temporalOptions(
  schedule
    .command('show')
    .description('a schedule: spec, retention, next and recent runs')
    .argument('<group>')
    .option('--json', 'print JSON'),
).action(act(scheduleShow));
for (const action of ['pause', 'unpause', 'trigger', 'delete'] as const) {
  const cmd = schedule.command(action).description(`${action} the group's schedule`).argument('<group>');
  if (action === 'pause' || action === 'unpause') cmd.option('--note <text>', 'why');
  temporalOptions(cmd.option('--json', 'print JSON')).action(
    act((g: string, opts: CommonOptions & { note?: string }) => scheduleAction(action, g, opts)),
  );
}
temporalOptions(
  schedule
    .command('backfill')
    .description('take the runs the schedule would have taken in a past time range')
    .argument('<group>')
    .requiredOption('--start <time>', 'ISO time')
    .requiredOption('--end <time>', 'ISO time')
    .option('--overlap <policy>', 'overlap policy for the backfilled runs', 'allow-all')
    .option('--json', 'print JSON'),
).action(act(scheduleBackfill));

const restore = program
  .command('restore')
  .description('restore a group to one of its snapshots (as clones or in place), list or release restore records');
temporalOptions(
  restore
    .command('run', { isDefault: true })
    .description('(default) restore a group to one of its snapshots, as clones or in place; all VMs or none')
    .argument('<group>')
    .argument('<snapshotId>')
    .option('--as-clone', 'new VMs <domain><suffix> on new overlays over the snapshot, beside the originals')
    .option('--suffix <text>', 'clone name suffix (default: -<restore id>)')
    .option('--in-place', "stop the group's VMs and restart them on the snapshot (discards their current state)")
    .option('--yes', 'confirm an in-place restore')
    .option('--restore-id <id>', 'restore id (default: generated)')
    .option(
      '--from-repo <url>',
      'restore the point from the off-host repository (s3://... or file://...) onto --to-host',
    )
    .option('--key-file <file>', 'repository key file (default: GROUPSNAP_REPO_KEY_FILE)')
    .option('--to-host <id>', 'with --from-repo: the host that rebuilds and runs the VMs')
    .option('--as-original', 'with --from-repo: keep names, UUIDs and MACs (failover); refuses if any VM exists there')
    .option(
      '--map-network <old=new>',
      'with --from-repo: a network or bridge named differently there (repeat)',
      collect(String),
    )
    .option('--no-network', 'with --from-repo: leave out every network interface (isolated VMs)')
    .option(
      '--strip-host-devices',
      'with --from-repo: remove what names a host resource (host shares and devices, other disks, ...) instead of refusing; each removal is listed',
    )
    .addOption(
      new Option('--format <format>', 'with --from-repo: format of the rebuilt disks').choices(['qcow2', 'raw']),
    )
    .option(
      '--instant',
      'with --from-repo: run the VMs at once on local overlays over the point served from the repository, and copy the data in the background (hydration)',
    )
    .option('--vm <name>', 'with --from-repo: only this VM of the point (its name there; repeat)', collect(String))
    .option('--hydrate-parallel <n>', 'with --instant: disks hydrated at once (default 4)')
    .option('--hydrate-bandwidth <MiB/s>', "with --instant: each disk's hydration limited to this (default unlimited)")
    .option('--json', 'print JSON'),
).action(
  act((group: string, snapshotId: string, opts: Parameters<typeof restoreCommand>[2] & Partial<RepoRestoreFlags>) =>
    opts.fromRepo
      ? repoRestoreCommand(group, snapshotId, opts as RepoRestoreFlags)
      : restoreCommand(group, snapshotId, opts),
  ),
);

temporalOptions(
  program
    .command('drill')
    .description(
      'DR drill: restore a point from the repository as isolated clones on a host, wait until ready, record, tear down',
    )
    .argument('<group>')
    .option('--point <id>', "the point's snapshot id, or latest", 'latest')
    .option('--repo <url>', 'repository URL (default: GROUPSNAP_REPO)')
    .option('--to-host <id>', 'the host whose worker restores and boots the clones (its worker holds the key)')
    .option('--check <command>', 'ready when this exits 0 on the host (worker started with --allow-drill-checks)')
    .option('--serial-line <regex>', "ready when a matching line appears on every clone's serial console")
    .option('--timeout <seconds>', 'how long the clones may take to be ready', parseInteger)
    .option(
      '--instant',
      'instant restore: the clones run over the point served from the repository and are checked while they hydrate (the RTO of an instant failover)',
    )
    .option('--cron <expr>', 'instead of drilling now, drill the latest point on this schedule')
    .option('--timezone <tz>', 'time zone of --cron', 'UTC')
    .option(
      '--strip-host-devices',
      'remove what names a host resource in the stored definitions (host shares and devices, other disks, ...) instead of failing; each removal is listed',
    )
    .option('--json', 'print JSON'),
).action(act(drillCommand));

temporalOptions(
  restore
    .command('list')
    .description('clone and in-place restore records (they keep the snapshots they are built on from deletion)')
    .argument('[group]', "only records of this group's snapshots")
    .option('--json', 'print JSON'),
).action(act(restoreList));
temporalOptions(
  restore
    .command('release')
    .description(
      'remove clones / make in-place restores final, by clone name or restore id, so their snapshots can be deleted',
    )
    .argument('<ids...>', 'clone names and/or restore ids (see restore list)')
    .option(
      '--vm <domain@host>',
      'only the records on this VM (repeat)',
      collect((v) => parseVmRef(v, defaults.hostId())),
    )
    .option('--yes', 'confirm: clones are deleted, in-place restores can no longer be undone')
    .option('--json', 'print JSON'),
).action(act(restoreRelease));

program
  .command('catalog')
  .description('list the group snapshots recorded on a VM of this host (read from libvirt, no Temporal needed)')
  .argument('<domain>', 'libvirt domain name')
  .option('--libvirt-uri <uri>', 'libvirt URI (default: GROUPSNAP_LIBVIRT_URI or qemu:///system)')
  .option('--json', 'print JSON')
  .action(catalogCommand);

registerBackupCommands(program, temporalOptions, act);

program.parseAsync(process.argv).catch((err) => process.exit(reportError(err)));

#!/usr/bin/env node
import { Command, Option } from 'commander';
import { defaults } from '../common/config';
import { DEFAULT_MAX_FREEZE_MS } from '../common/names';
import type { VmRef } from '../common/types';
import { catalogCommand, guardCommand, snapshotCommand, workerCommand, EXIT } from './commands';
import { demoCommand } from './demo';
import { collect, parseInteger, parseQuiesce, parseVmRef } from './parse';

const program = new Command('groupsnap')
  .description('Crash-consistent snapshots of groups of VMs, orchestrated by Temporal over libvirt')
  .showHelpAfterError()
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT.badInput));

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
    .option('--no-workflows', 'do not also run the workflow worker on the shared queue')
    .option('--no-guard', 'do not start the freeze guard process (VMs stay protected only while the worker lives)'),
).action(workerCommand);

program
  .command('guard', { hidden: true })
  .requiredOption('--state-dir <dir>')
  .requiredOption('--libvirt-uri <uri>')
  .action(guardCommand);

temporalOptions(
  program
    .command('snapshot')
    .description('take a crash-consistent snapshot of a group of VMs')
    .requiredOption(
      '--vm <domain[@host]>',
      'a VM of the group (repeat); host defaults to this host',
      collect((v) => parseVmRef(v, defaults.hostId())),
    )
    .option('--group <name>', 'group name used in ids and search attributes', 'adhoc')
    .option('--label <text>', 'label kept in the catalog (file-name safe)')
    .option('--snapshot-id <id>', 'snapshot id (default: generated)')
    .option('--max-freeze <ms>', 'longest time a VM may stay paused', parseInteger, DEFAULT_MAX_FREEZE_MS)
    .addOption(
      new Option('--quiesce <mode>', 'freeze guest filesystems via the QEMU guest agent')
        .argParser(parseQuiesce)
        .default('none'),
    )
    .option(
      '--update-barrier-max-hosts <n>',
      "largest group (hosts) released through the workflow's update barrier; keep under the server's history.maxInFlightUpdates",
      parseInteger,
    )
    .option('--json', 'print one JSON result object'),
).action(
  async (opts: {
    vm: VmRef[];
    group: string;
    label?: string;
    snapshotId?: string;
    maxFreeze: number;
    quiesce: 'none';
    updateBarrierMaxHosts?: number;
    json?: boolean;
    address?: string;
    namespace?: string;
  }) => {
    process.exitCode = await snapshotCommand(
      {
        vms: opts.vm,
        group: opts.group,
        label: opts.label,
        snapshotId: opts.snapshotId,
        maxFreezeMs: opts.maxFreeze,
        quiesce: opts.quiesce,
        updateBarrierMaxHosts: opts.updateBarrierMaxHosts,
      },
      opts,
    );
  },
);

program
  .command('catalog')
  .description('list the group snapshots recorded on a VM of this host (read from libvirt, no Temporal needed)')
  .argument('<domain>', 'libvirt domain name')
  .option('--libvirt-uri <uri>', 'libvirt URI (default: GROUPSNAP_LIBVIRT_URI or qemu:///system)')
  .option('--json', 'print JSON')
  .action(catalogCommand);

program
  .command('demo')
  .description('start a local Temporal dev server and worker, create demo VMs, take a group snapshot')
  .option('--vms <n>', 'number of demo VMs', parseInteger, 3)
  .option('--keep', 'keep the server, worker and VMs until Ctrl-C (default when run on a terminal)')
  .option('--no-keep', 'clean up and exit after the snapshot')
  .action(demoCommand);

program.parseAsync(process.argv).catch((err) => {
  console.error(`groupsnap: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});

/** `groupsnap restore <group> <snapshotId> --as-clone | --in-place --yes`. */
import { restoreGroup } from '../client/restore';
import type { RestoreMode } from '../common/groups';
import { BadInputError } from '../common/failures';
import { checkRestore } from './check-input';
import { withClient, type CommonOptions } from './with-client';

export function restoreCommand(
  group: string,
  snapshotId: string,
  opts: CommonOptions & {
    asClone?: boolean;
    inPlace?: boolean;
    suffix?: string;
    yes?: boolean;
    restoreId?: string;
    stripHostDevices?: boolean;
    instant?: boolean;
    vm?: string[];
  },
) {
  if (opts.instant || opts.vm?.length)
    throw new BadInputError('--instant and --vm apply to a restore from the repository (--from-repo) only');
  if (opts.stripHostDevices)
    throw new BadInputError('--strip-host-devices applies to a restore from the repository (--from-repo) only');
  if (Boolean(opts.asClone) === Boolean(opts.inPlace))
    throw new BadInputError('give exactly one of --as-clone and --in-place');
  if (opts.inPlace && !opts.yes)
    throw new BadInputError(
      'an in-place restore stops the VMs and discards their current state (kept on disk): confirm with --yes',
    );
  const mode: RestoreMode = opts.asClone ? 'clone' : 'in-place';
  checkRestore({ group, snapshotId, mode, suffix: opts.suffix, restoreId: opts.restoreId });
  return withClient(
    opts,
    (c) =>
      restoreGroup(c, {
        group,
        snapshotId,
        mode,
        suffix: opts.suffix,
        restoreId: opts.restoreId,
        confirmInPlace: opts.yes === true,
      }),
    (r) =>
      [
        `restore ${r.restoreId} of ${r.group} to ${r.snapshotId} (${r.mode}): ${r.status}${r.error ? `: ${r.error}` : ''}`,
        ...r.vms.map(
          (v) =>
            `  ${v.domain}@${v.host}${v.clone ? ` -> ${v.clone}` : ''}${v.state ? ` ${v.state}` : ''}` +
            (v.error ? ` (${v.error})` : '') +
            v.disks
              .map(
                (d) => `\n    ${d.target}: ${d.overlay} over ${d.image}${d.discarded ? `, kept ${d.discarded}` : ''}`,
              )
              .join(''),
        ),
      ].join('\n'),
    (r) => r.status !== 'restored',
  );
}

/** `groupsnap group create|list|show|delete`. */
import { createGroup, deleteGroup, listGroups, showGroup } from '../client/groups';
import { selectorText } from '../common/groups';
import type { ResumeWhen, VmRef } from '../common/types';
import { checkGroupCreate, checkNames } from './check-input';
import { vmText } from './format';
import { withClient, type CommonOptions } from './with-client';

export function groupCreate(
  name: string,
  opts: CommonOptions & {
    vm?: VmRef[];
    tag?: string;
    description?: string;
    repo?: string;
    copyTo?: string;
    resumeWhen?: ResumeWhen;
  },
) {
  checkGroupCreate(name, opts);
  const selector = opts.tag !== undefined ? { tag: opts.tag } : { vms: opts.vm ?? [] };
  return withClient(
    opts,
    (c) =>
      createGroup(c, {
        name,
        selector,
        description: opts.description,
        ...(opts.repo !== undefined ? { repository: opts.repo } : {}),
        ...(opts.copyTo !== undefined ? { copyTo: opts.copyTo } : {}),
        ...(opts.resumeWhen !== undefined ? { resumeWhen: opts.resumeWhen } : {}),
      }),
    (d) =>
      `created group ${d.name}: ${selectorText(d.selector)}` +
      (d.repository ? `, exported to ${d.repository}` : '') +
      (d.copyTo ? `, copied to ${d.copyTo}` : ''),
  );
}

export function groupList(opts: CommonOptions) {
  return withClient(opts, listGroups, (groups) =>
    groups.length === 0 ? 'no groups' : groups.map((g) => `${g.name}\t${selectorText(g.selector)}`).join('\n'),
  );
}

export function groupShow(name: string, opts: CommonOptions) {
  checkNames([['group name', name]]);
  return withClient(
    opts,
    (c) => showGroup(c, name),
    (g) =>
      [
        `group ${g.definition.name}: ${selectorText(g.definition.selector)}`,
        ...(g.definition.description ? [`  ${g.definition.description}`] : []),
        ...(g.definition.repository ? [`  exported to ${g.definition.repository}`] : []),
        ...(g.definition.copyTo ? [`  copied to ${g.definition.copyTo}`] : []),
        `members (${g.members.length}):`,
        ...g.members.map((m) => `  ${vmText(m)}`),
        ...g.unreachable.map((u) => `  host ${u.host} did not answer: ${u.error}`),
      ].join('\n'),
  );
}

export function groupDelete(name: string, opts: CommonOptions & { withSchedule?: boolean }) {
  checkNames([['group name', name]]);
  return withClient(
    opts,
    async (c) => {
      await deleteGroup(c, name, { withSchedule: opts.withSchedule });
      return { deleted: name };
    },
    () => `deleted group ${name}${opts.withSchedule ? ' (and its schedule, if any)' : ''}`,
  );
}

import type { SetTagsRequest } from '../common/dr-types';
import { DomainNotFoundError } from '../hypervisor/errors';
import type { DrContext } from './dr-context';
import { badInput, checkDomain, checkName, failIf } from './input-checks';

/** A VM's tags (what tag selectors of groups match), kept in its groupsnap metadata. */
export function createTagActivities({ hostId, updateMeta }: DrContext) {
  return {
    /** Adds, then removes, tags on a VM. Returns the VM's tags after. */
    async setTags(req: SetTagsRequest): Promise<string[]> {
      const problems: string[] = [];
      checkDomain(req.domain, problems);
      const add = req.add ?? [];
      const remove = req.remove ?? [];
      if (!Array.isArray(add) || !Array.isArray(remove)) problems.push('add and remove must be lists of tags');
      else {
        for (const t of [...add, ...remove]) checkName('tag', t, problems);
        for (const t of add) if (remove.includes(t)) problems.push(`tag ${t} is both added and removed`);
      }
      failIf(problems);
      try {
        const meta = await updateMeta(req.domain, (m) => {
          for (const t of add) if (!m.tags.includes(t)) m.tags.push(t);
          m.tags = m.tags.filter((t) => !remove.includes(t));
        });
        return meta.tags;
      } catch (err) {
        if (err instanceof DomainNotFoundError)
          throw badInput(`VM ${JSON.stringify(req.domain)} not found on host ${hostId}`);
        throw err;
      }
    },
  };
}

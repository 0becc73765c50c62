/**
 * `groupsnap/worker`: groupsnap's registration for Temporal workers, the two plugins (one per hypervisor host, one
 * for the workflows, control activities and Nexus service) and the ready-made worker `groupsnap worker` runs.
 *
 *   import { groupsnapHostPlugin, groupsnapWorkflowsPlugin } from 'groupsnap/worker';
 */
export {
  GROUPSNAP_WORKFLOWS_PATH,
  GroupsnapHostPlugin,
  GroupsnapWorkflowsPlugin,
  groupsnapHostPlugin,
  groupsnapWorkflowsPlugin,
  registerHost,
  type GroupsnapHostPluginOptions,
  type GroupsnapWorkflowsPluginOptions,
} from './plugins';
export { createGroupsnapWorker, type GroupsnapWorker, type GroupsnapWorkerOptions } from './worker';
export { runGuard, type GuardOptions } from './guard';

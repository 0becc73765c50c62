import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure } from '@temporalio/common';
import type { z } from 'zod';
import type { ExportDiskRequest, WriteGroupManifestRequest, WriteVmManifestRequest } from '../../common/backup-types';
import type {
  ChooseSocketPortsRequest,
  CloneVmRequest,
  DeleteSnapshotRequest,
  InPlaceRequest,
  PinSnapshotRequest,
  RemoveCloneRequest,
  SetTagsRequest,
  UndoInPlaceRequest,
} from '../../common/dr-types';
import type {
  CatalogRequest,
  FreezeRequest,
  PlanRequest,
  ReleaseRequest,
  ThawRequest,
  UndoRequest,
} from '../../common/host-types';
import * as schemas from '../../common/host-requests';
import { BAD_INPUT } from '../../common/failures';
import { guardActivities, unguardedActivities } from '../../worker/activity-door';

/**
 * The host's request schemas and the door that applies them: every bad request is refused with every problem named,
 * before the activity runs; an activity without a schema cannot be registered.
 */

// The older request interfaces (common/host-types.ts, dr-types.ts, backup-types.ts) are the schemas' inputs: a field
// added to one but not to its schema, or typed differently, fails to compile here.
type Fits<A, B> = [A] extends [B] ? true : false;
const fits: true[] = [
  true as Fits<PlanRequest, z.input<typeof schemas.planRequest>>,
  true as Fits<FreezeRequest, z.input<typeof schemas.freezeRequest>>,
  true as Fits<ReleaseRequest, z.input<typeof schemas.releaseRequest>>,
  true as Fits<ThawRequest, z.input<typeof schemas.thawRequest>>,
  true as Fits<UndoRequest, z.input<typeof schemas.undoRequest>>,
  true as Fits<CatalogRequest, z.input<typeof schemas.catalogRequest>>,
  true as Fits<SetTagsRequest, z.input<typeof schemas.setTagsRequest>>,
  true as Fits<DeleteSnapshotRequest, z.input<typeof schemas.deleteSnapshotRequest>>,
  true as Fits<CloneVmRequest, z.input<typeof schemas.cloneVmRequest>>,
  true as Fits<ChooseSocketPortsRequest, z.input<typeof schemas.chooseSocketPortsRequest>>,
  true as Fits<RemoveCloneRequest, z.input<typeof schemas.removeCloneRequest>>,
  true as Fits<InPlaceRequest, z.input<typeof schemas.inPlaceRequest>>,
  true as Fits<UndoInPlaceRequest, z.input<typeof schemas.undoInPlaceRequest>>,
  true as Fits<PinSnapshotRequest, z.input<typeof schemas.pinSnapshotRequest>>,
  true as Fits<ExportDiskRequest, z.input<typeof schemas.exportDiskRequest>>,
  true as Fits<WriteVmManifestRequest, z.input<typeof schemas.writeVmManifestRequest>>,
  true as Fits<WriteGroupManifestRequest, z.input<typeof schemas.writeGroupManifestRequest>>,
];

const issues = (schema: z.ZodType, value: unknown) => {
  const r = schema.safeParse(value);
  return r.success ? [] : schemas.describeIssues(r.error);
};

const rebuild = {
  repo: 'file:///var/repo',
  group: 'g1',
  snapshotId: 's1',
  domain: 'db-1',
  target: 'vda',
  file: '/var/lib/libvirt/images/db-1-r1.vda.r1.qcow2',
  format: 'qcow2',
};

describe('host request schemas', () => {
  it('type the older interfaces', () => expect(fits.every(Boolean)).toBe(true));

  it('accept a well-formed request', () => {
    expect(issues(schemas.rebuildDiskRequest, rebuild)).toEqual([]);
  });

  it.each([
    ['/../../../../etc/x', 'target'],
    ['vda/../x', 'target'],
    ['vd', 'target'],
    ['VDA', 'target'],
    ['sda1', 'target'],
  ])('refuse the disk target %j', (target, path) => {
    expect(issues(schemas.rebuildDiskRequest, { ...rebuild, target })).toEqual([
      expect.stringMatching(new RegExp(`^${path}: a disk target`)),
    ]);
  });

  it.each(['vda', 'sdb', 'hdc', 'xvda', 'fda', 'nvme0n1', 'vdaa'])('accept the disk target %j', (target) => {
    expect(schemas.diskTarget.safeParse(target).success).toBe(true);
  });

  it.each(['relative/x', '/a/../etc/passwd', '/a//b', '/a/./b', '/a/b/', '/a/\0b', ''])(
    'refuse the path %j',
    (file) => {
      expect(issues(schemas.rebuildDiskRequest, { ...rebuild, file })).toEqual([
        expect.stringMatching(/^file: an absolute, normalised path/),
      ]);
    },
  );

  it('name every problem of a request, with its path', () => {
    const found = issues(schemas.defineRestoredVmRequest, {
      repo: 'http://x',
      group: '../g',
      snapshotId: 's1',
      restoreId: 'r1',
      vm: { source: 'a/b', domain: 'ok', sourceHost: 'h', uuid: 'nope', disks: [{ target: 'vda', file: 'x' }] },
      mode: 'clone',
      networkMap: {},
      noNetwork: 'yes',
    });
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^repo: a repository URL/),
        expect.stringMatching(/^group: group "\.\.\/g" is not safe/),
        expect.stringMatching(/^vm\.source: a VM name/),
        expect.stringMatching(/^vm\.uuid: a UUID/),
        expect.stringMatching(/^vm\.disks\.0\.file: an absolute/),
        expect.stringMatching(/^vm\.disks\.0\.format: /),
        expect.stringMatching(/^noNetwork: /),
      ]),
    );
  });

  it('refuse a serial-line pattern that is not a regular expression, and an unsafe snapshot id', () => {
    expect(
      issues(schemas.waitReadyRequest, { domains: ['a'], readiness: 'serial-line', serialLine: '(', timeoutMs: 5000 }),
    ).toEqual([expect.stringMatching(/^serialLine: a JavaScript regular expression/)]);
    expect(issues(schemas.planRequest, { snapshotId: 's/1', domains: ['a'], quiesce: 'none' })).toEqual([
      expect.stringMatching(/^snapshotId: snapshot id "s\/1" is not safe/),
    ]);
  });
});

describe('the door into host activities', () => {
  const env = new MockActivityEnvironment();

  it('parses the request before the activity runs; a bad one is a non-retryable BAD_INPUT naming every issue', async () => {
    const calls: unknown[] = [];
    const acts = guardActivities(
      {
        async rebuildDisk(req: unknown) {
          calls.push(req);
          return 'done';
        },
      },
      schemas.HOST_ACTIVITY_SCHEMAS,
    );
    const bad = { ...rebuild, target: '/../../../../etc/x', file: '/etc/x/../shadow' };
    const err = await env.run(acts.rebuildDisk, bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: BAD_INPUT, nonRetryable: true });
    expect((err as Error).message).toMatch(/^bad request to rebuildDisk: target: a disk target.*; file: an absolute/);
    expect(calls).toEqual([]);
    // A good one reaches the activity, parsed: fields the schema does not know are not passed on.
    await expect(env.run(acts.rebuildDisk, { ...rebuild, extra: 'x' })).resolves.toBe('done');
    expect(calls).toEqual([rebuild]);
  });

  it('refuses more than one argument', async () => {
    const acts = guardActivities({ listVms: async () => [] }, schemas.HOST_ACTIVITY_SCHEMAS);
    await expect(env.run(acts.listVms)).resolves.toEqual([]);
    await expect((acts.listVms as (...a: unknown[]) => Promise<unknown>)(1, 2)).rejects.toMatchObject({
      type: BAD_INPUT,
    });
  });

  it('cannot register an activity without a schema', () => {
    const acts = { rebuildDisk: async () => 1, mystery: async () => 2, another: async () => 3 };
    expect(unguardedActivities(acts, schemas.HOST_ACTIVITY_SCHEMAS)).toEqual(['mystery', 'another']);
    expect(() => guardActivities(acts, schemas.HOST_ACTIVITY_SCHEMAS)).toThrow(
      /host activities without a request schema .*: mystery, another/,
    );
  });
});

/**
 * The S3 bucket policy that lets hypervisor hosts export into a repository with Object Lock without being able to
 * destroy it (docs/repository-format.md, "Object Lock"; README "Immutable repositories"): write, read and extend
 * locks, never delete a version, shorten a lock or change the bucket. Deletions (prune, the sweep of interrupted
 * exports, the chunk index's compaction) and `repo verify --repair` run with the admin's credentials only.
 */
import { parseRepositoryUrl } from './store';

export interface HostPolicyOptions {
  /** The hosts' principal: an IAM ARN on AWS (`arn:aws:iam::111122223333:user/groupsnap-host`), an access key on versitygw. */
  principal: string;
  /**
   * Add the statement that refuses a chunk or manifest PUT without `If-None-Match: *` (AWS's `s3:if-none-match`
   * condition key), so even a host's key holder cannot write a second version over one. versitygw ignores policy
   * conditions (it would apply the Deny to every PUT), so leave it out there. @default true
   */
  conditionalWrites?: boolean;
}

/** The bucket policy (AWS IAM JSON) for hosts writing to `url` (`s3://bucket/prefix`). */
export function hostBucketPolicy(url: string, opts: HostPolicyOptions): Record<string, unknown> {
  const loc = parseRepositoryUrl(url);
  if (loc.kind !== 's3') throw new Error('a bucket policy is for s3:// repositories');
  const bucket = `arn:aws:s3:::${loc.bucket}`;
  const root = `${bucket}/${loc.prefix}`;
  const principal = { AWS: [opts.principal] };
  const statements: Record<string, unknown>[] = [
    {
      Sid: 'GroupsnapHostsWriteAndRead',
      Effect: 'Allow',
      Principal: principal,
      Action: ['s3:GetObject', 's3:PutObject', 's3:PutObjectRetention', 's3:GetObjectRetention'],
      Resource: [`${root}*`],
    },
    {
      Sid: 'GroupsnapHostsList',
      Effect: 'Allow',
      Principal: principal,
      Action: ['s3:ListBucket', 's3:GetBucketObjectLockConfiguration', 's3:GetBucketVersioning'],
      Resource: [bucket],
    },
    {
      // A host removes its own coordination locks: on a versioned bucket a plain delete only adds a delete marker.
      Sid: 'GroupsnapHostsReleaseTheirLocks',
      Effect: 'Allow',
      Principal: principal,
      Action: ['s3:DeleteObject'],
      Resource: [`${root}locks/*`],
    },
    {
      Sid: 'GroupsnapHostsNeverDestroy',
      Effect: 'Deny',
      Principal: principal,
      Action: [
        's3:DeleteObjectVersion',
        's3:BypassGovernanceRetention',
        's3:PutBucketPolicy',
        's3:DeleteBucketPolicy',
        's3:PutBucketVersioning',
        's3:PutBucketObjectLockConfiguration',
        's3:DeleteBucket',
      ],
      Resource: [bucket, `${bucket}/*`],
    },
  ];
  if (opts.conditionalWrites !== false) {
    statements.push({
      Sid: 'GroupsnapHostsWriteOnce',
      Effect: 'Deny',
      Principal: principal,
      Action: ['s3:PutObject'],
      Resource: [`${root}chunks/*`, `${root}points/*/group`, `${root}points/*/vms/*`, `${root}points/*/disks/*`],
      Condition: { Null: { 's3:if-none-match': 'true' } },
    });
  }
  return { Version: '2012-10-17', Statement: statements };
}

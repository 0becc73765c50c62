import { ObjectLockedError } from '../../backup/errors';
import {
  FileStore,
  type BodyDigests,
  type GetOptions,
  type LockingStore,
  type ObjectRetention,
  type ObjectStore,
  type ObjectVersion,
  type StoredObject,
} from '../../backup/store';

/**
 * A fake object store with Object Lock for unit tests: a directory (FileStore) plus retention dates kept in memory,
 * with S3's rules for them (a locked object is not deleted; a compliance lock is not shortened; write-once puts).
 * One version per key (no history: versions are proven on versitygw, test/object-lock-s3.test.ts). Counts calls.
 */
export class FakeLockingStore implements ObjectStore {
  readonly files: FileStore;
  readonly retentions = new Map<string, ObjectRetention>();
  readonly calls = { delete: 0, setRetention: 0, putLocked: 0 };
  readonly locking: LockingStore;

  constructor(
    url: string,
    root: string,
    readonly now: () => number = Date.now,
  ) {
    this.files = new FileStore(url, root);
    this.locking = this.lockingCalls();
  }

  get url(): string {
    return this.files.url;
  }

  checkLocation(): Promise<void> {
    return this.files.checkLocation();
  }
  get(key: string, opts?: GetOptions): Promise<Buffer | undefined> {
    return this.files.get(key, opts);
  }
  put(key: string, body: Buffer): Promise<void> {
    this.assertUnlocked(key);
    return this.files.put(key, body);
  }
  putIfAbsent(key: string, body: Buffer): Promise<boolean> {
    return this.files.putIfAbsent(key, body);
  }
  exists(key: string): Promise<boolean> {
    return this.files.exists(key);
  }
  list(prefix: string): AsyncIterable<StoredObject> {
    return this.files.list(prefix);
  }
  async delete(key: string): Promise<void> {
    this.calls.delete++;
    this.assertUnlocked(key);
    await this.files.delete(key);
    this.retentions.delete(key);
  }
  close(): void {}

  private assertUnlocked(key: string): void {
    const r = this.retentions.get(key);
    if (r && r.until.getTime() > this.now()) throw new ObjectLockedError(key, `locked until ${r.until.toISOString()}`);
  }

  private lockingCalls(): LockingStore {
    return {
      bucketLock: async () => ({ objectLock: true, versioning: true }),
      createLockedBucket: async () => undefined,
      putLocked: async (key: string, body: Buffer, retention: ObjectRetention, _d?: BodyDigests) => {
        this.calls.putLocked++;
        if (!(await this.files.putIfAbsent(key, body))) return false;
        this.retentions.set(key, retention);
        return true;
      },
      setRetention: async (key: string, retention: ObjectRetention) => {
        this.calls.setRetention++;
        const held = this.retentions.get(key);
        if (held && held.mode === 'compliance' && retention.until < held.until) {
          throw new ObjectLockedError(key, 'a compliance lock cannot be shortened');
        }
        this.retentions.set(key, retention);
      },
      retention: async (key: string) => this.retentions.get(key),
      listVersions: (prefix: string) => this.versions(prefix),
      getVersion: (key: string, _v: string, opts?: GetOptions) => this.files.get(key, opts),
      restoreVersion: async () => undefined,
      deleteVersion: (key: string) => this.delete(key),
    };
  }

  private async *versions(prefix: string): AsyncIterable<ObjectVersion> {
    for await (const o of this.files.list(prefix)) {
      yield {
        key: o.key,
        versionId: 'v1',
        latest: true,
        deleteMarker: false,
        lastModified: o.lastModified,
        size: o.size,
      };
    }
  }
}

import type { ObjectStore, StoredObject } from '../../backup/store';

/**
 * An object store in front of another that counts the listings by prefix and can slow them down (a large
 * repository or a slow link, in a unit test). `onList` runs when a listing starts, `onListed` when it ends.
 */
export class CountingStore implements ObjectStore {
  readonly lists: string[] = [];
  readonly puts: string[] = [];
  /** Milliseconds each listing of a prefix starting with one of these keys waits before its first object. */
  slow: Record<string, number> = {};
  onList?: (prefix: string) => void;
  onListed?: (prefix: string) => void;
  /** When set, `delete` of a key starting with this prefix throws (a crash midway). */
  failDeletesOf?: string;

  constructor(private readonly inner: ObjectStore) {}

  get url(): string {
    return this.inner.url;
  }
  checkLocation(): Promise<void> {
    return this.inner.checkLocation();
  }
  get(key: string): Promise<Buffer | undefined> {
    return this.inner.get(key);
  }
  put(key: string, body: Buffer, digests?: Parameters<ObjectStore['put']>[2]): Promise<void> {
    this.puts.push(key);
    return this.inner.put(key, body, digests);
  }
  exists(key: string): Promise<boolean> {
    return this.inner.exists(key);
  }
  async *list(prefix: string): AsyncIterable<StoredObject> {
    this.lists.push(prefix);
    this.onList?.(prefix);
    const wait = Object.entries(this.slow).find(([p]) => prefix.startsWith(p))?.[1];
    if (wait) await new Promise((r) => setTimeout(r, wait));
    yield* this.inner.list(prefix);
    this.onListed?.(prefix);
  }
  async delete(key: string): Promise<void> {
    if (this.failDeletesOf !== undefined && key.startsWith(this.failDeletesOf)) throw new Error(`injected: ${key}`);
    return this.inner.delete(key);
  }
  close(): void {
    // the test closes the inner store
  }
}

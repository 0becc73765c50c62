// Basics against libvirt's in-process test driver (test:///default): every connection starts from the same
// fresh state with one running domain named 'test'.
import {
  Connection,
  DomainNotFoundError,
  HypervisorConnectionError,
  LibvirtError,
  MetadataNotFoundError,
  SnapshotNotFoundError,
  BlockCommitFlags,
  BlockJobAbortFlags,
  DomainXMLFlags,
  SnapshotCreateFlags,
  SnapshotDeleteFlags,
  UndefineFlags,
  libvirtVersion,
  open,
} from '../src';
import { native } from '../src/native';

const URI = 'test:///default';

describe('test:///default driver', () => {
  let conn: Connection;

  beforeEach(async () => {
    conn = await open(URI);
  });

  afterEach(async () => {
    if (!conn.closed) await conn.close();
  });

  it('lists the default domain with its state', async () => {
    const domains = await conn.listAllDomains();
    expect(domains).toEqual([expect.objectContaining({ name: 'test', state: 'running', id: 1 })]);
    expect(domains[0].uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(await conn.hostname()).toBeTruthy();
    expect(await conn.isAlive()).toBe(true);
  });

  it('looks a domain up by name and by UUID and caches name and uuid', async () => {
    const byName = await conn.lookupByName('test');
    const byUuid = await conn.lookupByUUID(byName.uuid);
    expect(byUuid.name).toBe('test');
    expect(byUuid.uuid).toBe(byName.uuid);
    expect(await byName.xml()).toContain('<name>test</name>');
    expect((await byName.info()).state).toBe('running');
  });

  it('suspends and resumes', async () => {
    const dom = await conn.lookupByName('test');
    await dom.suspend();
    expect((await dom.state()).state).toBe('paused');
    await dom.resume();
    expect((await dom.state()).state).toBe('running');
  });

  it('creates, lists, looks up and deletes snapshots with metadata', async () => {
    const dom = await conn.lookupByName('test');
    expect(await dom.snapshotList()).toEqual([]);
    const name = await dom.snapshotCreateXML('<domainsnapshot><name>s1</name></domainsnapshot>');
    expect(name).toBe('s1');
    expect(await dom.snapshotList()).toEqual(['s1']);
    expect(await dom.snapshotXML('s1')).toContain('<name>s1</name>');
    await dom.snapshotDelete('s1');
    expect(await dom.snapshotList()).toEqual([]);
    await expect(dom.snapshotXML('s1')).rejects.toBeInstanceOf(SnapshotNotFoundError);
    await expect(dom.snapshotDelete('nope')).rejects.toBeInstanceOf(SnapshotNotFoundError);
  });

  it('round-trips metadata and reports missing metadata with a typed error', async () => {
    const dom = await conn.lookupByName('test');
    const ns = 'https://groupsnap.dev/test';
    await expect(dom.getMetadata(ns)).rejects.toBeInstanceOf(MetadataNotFoundError);
    await dom.setMetadata(ns, 'gs', '<group name="g1"/>');
    expect(await dom.getMetadata(ns)).toBe('<group name="g1"/>');
    await dom.removeMetadata(ns);
    await expect(dom.getMetadata(ns)).rejects.toBeInstanceOf(MetadataNotFoundError);
  });

  it('freezes and thaws guest filesystems (the test driver fakes an agent)', async () => {
    const dom = await conn.lookupByName('test');
    expect(await dom.fsFreeze()).toBeGreaterThan(0);
    expect(await dom.fsThaw()).toBeGreaterThan(0);
  });

  it('rejects an unknown domain with DomainNotFoundError carrying code, errorDomain and name', async () => {
    const err = await conn.lookupByName('no-such-vm').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DomainNotFoundError);
    expect(err).toBeInstanceOf(LibvirtError);
    expect(err).toMatchObject({ code: 42, vmName: 'no-such-vm', operation: 'lookupByName' });
    expect((err as LibvirtError).errorDomain).toBeGreaterThan(0);
    await expect(conn.lookupByUUID('00000000-0000-0000-0000-000000000000')).rejects.toBeInstanceOf(DomainNotFoundError);
  });

  it('rejects a bad URI with HypervisorConnectionError', async () => {
    await expect(open('nosuchdriver:///x')).rejects.toBeInstanceOf(HypervisorConnectionError);
    await expect(open('qemu+unix:///system?socket=/nonexistent/sock')).rejects.toBeInstanceOf(
      HypervisorConnectionError,
    );
  });

  it('rejects calls on a closed connection, also through its domains', async () => {
    const dom = await conn.lookupByName('test');
    await conn.close();
    expect(conn.closed).toBe(true);
    await expect(conn.listAllDomains()).rejects.toBeInstanceOf(HypervisorConnectionError);
    await expect(dom.state()).rejects.toBeInstanceOf(HypervisorConnectionError);
    await expect(conn.close()).rejects.toThrow(/closed/);
  });

  it('rejects calls on a freed domain handle', async () => {
    const dom = await conn.lookupByName('test');
    dom.free();
    await expect(dom.state()).rejects.toThrow(/freed/);
  });

  it('defines, starts, destroys and undefines a domain', async () => {
    const xml = (await (await conn.lookupByName('test')).xml(DomainXMLFlags.INACTIVE))
      .replace(/<name>test<\/name>/, '<name>t2</name>')
      .replace(/<uuid>[^<]*<\/uuid>/, '');
    const dom = await conn.defineXML(xml);
    expect((await dom.state()).state).toBe('shutoff');
    expect(await dom.isPersistent()).toBe(true);
    await dom.create();
    expect(await dom.isActive()).toBe(true);
    await dom.destroy();
    await dom.undefine(UndefineFlags.SNAPSHOTS_METADATA);
    await expect(conn.lookupByName('t2')).rejects.toBeInstanceOf(DomainNotFoundError);
  });

  it('exports flag constants equal to the C headers', () => {
    const c = native.constants;
    expect(SnapshotCreateFlags).toEqual({
      REDEFINE: c.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE,
      CURRENT: c.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
      NO_METADATA: c.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA,
      HALT: c.VIR_DOMAIN_SNAPSHOT_CREATE_HALT,
      DISK_ONLY: c.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY,
      REUSE_EXT: c.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT,
      QUIESCE: c.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE,
      ATOMIC: c.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC,
      LIVE: c.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE,
      VALIDATE: c.VIR_DOMAIN_SNAPSHOT_CREATE_VALIDATE,
    });
    expect(SnapshotDeleteFlags).toEqual({
      CHILDREN: c.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN,
      METADATA_ONLY: c.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY,
      CHILDREN_ONLY: c.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY,
    });
    expect(BlockCommitFlags).toEqual({
      SHALLOW: c.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW,
      DELETE: c.VIR_DOMAIN_BLOCK_COMMIT_DELETE,
      ACTIVE: c.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE,
      RELATIVE: c.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE,
      BANDWIDTH_BYTES: c.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES,
    });
    expect(BlockJobAbortFlags).toEqual({
      ASYNC: c.VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC,
      PIVOT: c.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT,
    });
    expect(UndefineFlags).toEqual({
      MANAGED_SAVE: c.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
      SNAPSHOTS_METADATA: c.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
      NVRAM: c.VIR_DOMAIN_UNDEFINE_NVRAM,
      KEEP_NVRAM: c.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM,
      CHECKPOINTS_METADATA: c.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
      TPM: c.VIR_DOMAIN_UNDEFINE_TPM,
      KEEP_TPM: c.VIR_DOMAIN_UNDEFINE_KEEP_TPM,
    });
    expect(libvirtVersion()).toBeGreaterThanOrEqual(9_000_000);
  });
});

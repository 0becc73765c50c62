import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { parseDomainXml } from '../../hypervisor/domain-xml';

const run = promisify(execFile);

/** Default size of a marker, in bytes. */
export const MARKER_BYTES = 4096;

async function hmp(uri: string, domain: string, command: string): Promise<string> {
  const { stdout } = await run('virsh', ['-c', uri, 'qemu-monitor-command', domain, '--hmp', command]);
  return stdout;
}

/**
 * The QEMU device path (qdev) and active image file of disk `target` of a running VM, from `info block` and the
 * disk's alias in the live XML.
 */
export async function qdevOf(
  domain: string,
  target: string,
  uri = 'qemu:///system',
): Promise<{ qdev: string; file: string }> {
  const { stdout: xml } = await run('virsh', ['-c', uri, 'dumpxml', domain]);
  const disk = [...xml.matchAll(/<disk\b[\s\S]*?<\/disk>/g)].find((m) =>
    new RegExp(`<target\\s+dev=['"]${target}['"]`).test(m[0]),
  );
  const alias = disk && /<alias\s+name=['"]([^'"]+)['"]/.exec(disk[0])?.[1];
  if (!alias) throw new Error(`${domain} has no disk ${target} with an alias (is it running?)`);
  const info = await hmp(uri, domain, 'info block');
  // Blocks of "node: file (fmt)\n    Attached to: /machine/peripheral/<alias>[/virtio-backend]"
  for (const block of info.split(/\r?\n(?=\S)/)) {
    const attached = /Attached to:\s+(\S+)/.exec(block)?.[1];
    if (!attached || !(attached.endsWith(`/${alias}`) || attached.includes(`/${alias}/`))) continue;
    const file = /^[^:]+:\s+(.+?)\s+\([^)]*\)\s*$/m.exec(block)?.[1];
    return { qdev: attached, file: file ?? parseDomainXml(xml).disks.find((d) => d.target === target)!.source! };
  }
  throw new Error(`no block device attached as ${alias} in ${domain}: ${info}`);
}

/**
 * Writes `length` bytes of `byte` at `offset` of disk `target` of a running VM through QEMU's own block backend (as
 * a guest write would land), flushes, and checks the active image now reads it. Test-only: HMP passthrough.
 */
export async function writeMarker(
  domain: string,
  target: string,
  byte: number,
  offset: number,
  length = MARKER_BYTES,
  uri = 'qemu:///system',
): Promise<void> {
  const { qdev, file } = await qdevOf(domain, target, uri);
  const pattern = `0x${byte.toString(16).padStart(2, '0')}`;
  // qemu-io's output goes to the VM's QEMU log, not to the monitor: the write is checked by reading the file.
  await hmp(uri, domain, `qemu-io -d ${qdev} "write -P ${pattern} ${offset} ${length}"`);
  await hmp(uri, domain, `qemu-io -d ${qdev} "flush"`);
  if (!(await readsMarker(file, byte, offset, length))) {
    throw new Error(`marker ${pattern} at ${offset} of ${domain} ${target} did not reach ${file}`);
  }
}

/**
 * Whether image `file` (through its backing chain) reads `length` bytes of `byte` at `offset`. Opened read-only
 * without locks (`-U`), so it also reads images a running VM has open (its flushed state).
 */
export async function readsMarker(file: string, byte: number, offset: number, length = MARKER_BYTES): Promise<boolean> {
  const pattern = `0x${byte.toString(16).padStart(2, '0')}`;
  const { stdout: info } = await run('qemu-img', ['info', '-U', '--output=json', file]);
  const format = (JSON.parse(info) as { format: string }).format;
  try {
    const { stdout } = await run('qemu-io', [
      '-r',
      '-U',
      '-f',
      format,
      file,
      '-c',
      `read -P ${pattern} ${offset} ${length}`,
    ]);
    return !/Pattern verification failed/.test(stdout);
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    if (/Pattern verification failed/.test(`${e.stdout ?? ''}${e.stderr ?? ''}`)) return false;
    throw err;
  }
}

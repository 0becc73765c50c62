import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * Where a host's restored and cloned disks go by default: libvirt's own default pool directory for the daemon the
 * URI names (`$XDG_DATA_HOME/libvirt/images`, i.e. `~/.local/share/libvirt/images`, for a session daemon;
 * `/var/lib/libvirt/images` for the system one). `GROUPSNAP_IMAGES_DIR` overrides it; so does the worker's
 * `--images-dir`.
 */
export function defaultImagesDir(libvirtUri: string, home: string = process.env.HOME || homedir()): string {
  if (process.env.GROUPSNAP_IMAGES_DIR) return process.env.GROUPSNAP_IMAGES_DIR;
  if (/^qemu(\+\w+)?:\/\/[^/]*\/session\b/.test(libvirtUri))
    return join(process.env.XDG_DATA_HOME || join(home, '.local/share'), 'libvirt/images');
  return '/var/lib/libvirt/images';
}

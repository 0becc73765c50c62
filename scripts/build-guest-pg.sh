#!/usr/bin/env bash
# Builds groupsnap's PostgreSQL guest (docs/consistency.md, part 2) from Debian packages only:
#
#   vmlinuz      Debian's cloud kernel, from scripts/build-guest.sh (ext4 is built in; virtio modules in the initrd)
#   initrd.img   the busybox initramfs of scripts/build-guest.sh with another /init: load the virtio modules,
#                mount /dev/vda (ext4) and switch_root into it, running /sbin/gs-pg-init (scripts/guest-pg-init.sh)
#   root.qcow2   Debian 12 (debootstrap --variant=minbase) with postgresql-15 and postgresql-client-15 (2 GiB ext4)
#   data.qcow2   ext4 (1 GiB) holding /pg/data/main: `initdb -k --waldir=/pg/wal/pg_wal`, made in the root's chroot
#   wal.qcow2    ext4 (1 GiB) holding /pg/wal/pg_wal
#
# Needs root (debootstrap, chroot). Installs debootstrap when missing. Idempotent and cached under
# $GROUPSNAP_STATE_DIR/guest-pg/<key>/ (key: kernel build + hash of this script, the guest init and
# scripts/lib/guest-build.sh, whose locking, packing and module list it shares with scripts/build-guest.sh); prints
# that directory on stdout, progress on stderr. A first build takes some minutes (debootstrap of about 150 packages).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${GROUPSNAP_STATE_DIR:-/var/lib/groupsnap}"
PG_DIR="$STATE_DIR/guest-pg"
INIT="$ROOT/scripts/guest-pg-init.sh"
MIRROR="${GROUPSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

GUEST_BUILDER=build-guest-pg
# shellcheck source=lib/guest-build.sh
source "$ROOT/scripts/lib/guest-build.sh"

KERNEL_DIR="$(bash "$ROOT/scripts/build-guest.sh")"
[ -f "$KERNEL_DIR/vmlinuz" ] || die "scripts/build-guest.sh gave no kernel"
guest_lock "$PG_DIR"

hash="$(guest_key_hash "$INIT" "${BASH_SOURCE[0]}")"
key="$(basename "$KERNEL_DIR" | cut -d_ -f1-2)_pg15_$hash"
OUT="$PG_DIR/$key"
guest_cached "$OUT" wal.qcow2
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

work="$(mktemp -d "$PG_DIR/.build.XXXXXX")"
cleanup() {
  for m in dev/shm dev proc; do umount "$work/root/$m" 2>/dev/null || true; done
  # Never recurse into a mount that is still there (the bind mount of /dev above all).
  if grep -q " $work/" /proc/mounts; then
    log "left $work in place: something is still mounted under it"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
root="$work/root"
log "debootstrap bookworm (minbase + postgresql-15) from $MIRROR"
mkdir -p "$PG_DIR/debs" # downloaded packages, kept for the next build
debootstrap --cache-dir="$PG_DIR/debs" --variant=minbase --include=postgresql-15,postgresql-client-15 bookworm "$root" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# Our own cluster: data on vdb (/pg/data), WAL on vdc (/pg/wal). The packaged cluster is not used.
rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main"
mkdir -p "$root/pg/data" "$root/pg/wal"
chroot "$root" chown postgres:postgres /pg/data /pg/wal
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/dev/shm"
chroot "$root" runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -k -A trust -U postgres \
  -D /pg/data/main --waldir=/pg/wal/pg_wal >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; die initdb; }
for m in dev/shm dev proc; do umount "$root/$m"; done
# Durable and crash-recoverable as shipped (fsync, synchronous_commit and full_page_writes on); a small buffer
# cache and frequent checkpoints so the data disk is written all the time, not only at shutdown.
cat >>"$root/pg/data/main/postgresql.conf" <<'CONF'
# groupsnap PostgreSQL guest (scripts/build-guest-pg.sh)
listen_addresses = ''
unix_socket_directories = '/run/postgresql'
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
shared_buffers = 16MB
checkpoint_timeout = 30s
max_wal_size = 64MB
min_wal_size = 32MB
bgwriter_delay = 50ms
bgwriter_lru_maxpages = 400
jit = off
max_connections = 20
CONF
install -m 0755 "$INIT" "$root/sbin/gs-pg-init"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*

# mkfs.ext4 -d copies a directory (owners and modes kept) into a new file system: no loop mount needed.
mkimg() { # dir size name
  truncate -s "$2" "$work/$3.raw"
  mkfs.ext4 -q -F -L "$3" -d "$1" "$work/$3.raw"
  qemu-img convert -q -f raw -O qcow2 "$work/$3.raw" "$work/out/$3.qcow2"
  rm -f "$work/$3.raw"
}
mkdir -p "$work/out"
mkimg "$root/pg/data" 1G data
mkimg "$root/pg/wal" 1G wal
rm -rf "$root/pg/data"/* "$root/pg/wal"/*
mkimg "$root" 2G root

# The initramfs: scripts/build-guest.sh's (busybox, virtio modules and their load order) with a switch_root /init.
mkdir -p "$work/initrd"
(cd "$work/initrd" && gzip -dc "$KERNEL_DIR/initrd.img" | cpio -id --quiet)
cat >"$work/initrd/init" <<'INIT'
#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || echo "gs: insmod $m failed"
done
i=0
until [ -b /dev/vda ] && [ -b /dev/vdb ] && [ -b /dev/vdc ]; do
  i=$((i + 1))
  [ $i -gt 300 ] && { echo "gs: no /dev/vda, vdb, vdc"; poweroff -f; }
  sleep 0.1
done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "gs: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/gs-pg-init
INIT
chmod 0755 "$work/initrd/init"
guest_pack_initramfs "$work/initrd" "$work/out/initrd.img"
cp "$KERNEL_DIR/vmlinuz" "$work/out/vmlinuz"
{
  cat "$KERNEL_DIR/VERSIONS"
  chroot "$root" dpkg-query -W postgresql-15 postgresql-client-15 libc6
  printf 'guest-pg init+builder sha256 %s\n' "$hash"
} >"$work/out/VERSIONS"
guest_publish "$work/out" "$OUT"
log "built $OUT ($(du -sh "$OUT" | cut -f1))"
printf '%s\n' "$OUT"

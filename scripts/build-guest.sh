#!/usr/bin/env bash
# Builds groupsnap's workload guest from Debian packages only (fetched with apt-get download from the machine's
# apt sources): Debian's cloud kernel (linux-image-*-cloud-amd64) for direct kernel boot, and an initramfs with
# busybox-static, the kernel's virtio modules and scripts/guest-init.sh as /init.
#
# Idempotent and cached: the result lives in $GROUPSNAP_STATE_DIR/guest/<key>/{vmlinuz,initrd.img}, where the key
# names the package versions and hashes the init script, this builder and scripts/lib/guest-build.sh (module list,
# locking, packing, shared with scripts/build-guest-pg.sh); a second run only prints the directory.
# Prints that directory on stdout (progress goes to stderr).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${GROUPSNAP_STATE_DIR:-/var/lib/groupsnap}"
GUEST_DIR="$STATE_DIR/guest"
INIT="$ROOT/scripts/guest-init.sh"
KERNEL_META="${GROUPSNAP_GUEST_KERNEL:-linux-image-cloud-amd64}"
GUEST_BUILDER=build-guest
# shellcheck source=lib/guest-build.sh
source "$ROOT/scripts/lib/guest-build.sh"

guest_lock "$GUEST_DIR"

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }

# apt's package lists are needed to resolve versions; a fresh machine may not have them yet.
BUSYBOX_VER="$(candidate busybox-static)"
if [ -z "$BUSYBOX_VER" ] || [ "$BUSYBOX_VER" = "(none)" ]; then
  [ "$(id -u)" = 0 ] || die "apt has no package lists; run 'apt-get update' as root"
  log "apt-get update"
  apt-get update -qq
  BUSYBOX_VER="$(candidate busybox-static)"
fi
KERNEL_PKG="$(apt-cache depends --important "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')"
[ -n "$KERNEL_PKG" ] || die "cannot resolve $KERNEL_META to a kernel package (is it in the apt sources?)"
KERNEL_VER="$(candidate "$KERNEL_PKG")"
for v in "$KERNEL_VER" "$BUSYBOX_VER"; do [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate version"; done

hash="$(guest_key_hash "$INIT" "${BASH_SOURCE[0]}")"
key="$(printf '%s_%s_busybox-static_%s_%s' "$KERNEL_PKG" "$KERNEL_VER" "$BUSYBOX_VER" "$hash" | tr ':~+' '---')"
OUT="$GUEST_DIR/$key"
[ -f "$OUT/vmlinuz" ] && guest_cached "$OUT" initrd.img

if ! command -v cpio >/dev/null; then
  [ "$(id -u)" = 0 ] || die "cpio is missing; install it (apt-get install cpio)"
  log "installing cpio"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cpio >/dev/null
fi

DEBS="$GUEST_DIR/debs"
mkdir -p "$DEBS"
fetch() { # package version -> path of the .deb in $DEBS
  local f
  f="$(find "$DEBS" -maxdepth 1 -name "${1}_*.deb" | while read -r d; do
    [ "$(dpkg-deb -f "$d" Version)" = "$2" ] && printf '%s\n' "$d"
  done | head -n 1)"
  if [ -z "$f" ]; then
    log "apt-get download $1=$2"
    # apt's _apt sandbox user cannot write every directory; run the download from a private one.
    (cd "$DEBS" && apt-get download -q "$1=$2" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    f="$(find "$DEBS" -maxdepth 1 -name "${1}_*.deb" | while read -r d; do
      [ "$(dpkg-deb -f "$d" Version)" = "$2" ] && printf '%s\n' "$d"
    done | head -n 1)"
    [ -n "$f" ] || die "apt-get download $1=$2 failed"
  fi
  printf '%s\n' "$f"
}
kernel_deb="$(fetch "$KERNEL_PKG" "$KERNEL_VER")"
busybox_deb="$(fetch busybox-static "$BUSYBOX_VER")"

work="$(mktemp -d "$GUEST_DIR/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$INIT" "$root/init"
guest_copy_modules "$work/kernel" "$root/lib/modules"
# The kernel opens /dev/console before running /init (devtmpfs is mounted only by /init itself).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || log "no mknod: /init reopens /dev/console itself"

mkdir -p "$work/out"
cp "$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n 1)" "$work/out/vmlinuz"
guest_pack_initramfs "$root" "$work/out/initrd.img"
printf 'kernel %s %s\nbusybox-static %s\ninit+builder sha256 %s\n' "$KERNEL_PKG" "$KERNEL_VER" "$BUSYBOX_VER" \
  "$hash" >"$work/out/VERSIONS"
guest_publish "$work/out" "$OUT"
# Older packages are no longer needed.
find "$DEBS" -maxdepth 1 -name '*.deb' ! -samefile "$kernel_deb" ! -samefile "$busybox_deb" -delete
log "built $OUT ($(du -h "$OUT/initrd.img" | cut -f1) initramfs)"
printf '%s\n' "$OUT"

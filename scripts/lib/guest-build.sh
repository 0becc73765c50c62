# Shared by groupsnap's guest builders (scripts/build-guest.sh, scripts/build-guest-pg.sh); sourced, not run.
# Callers set GUEST_BUILDER (their name, for messages) before sourcing.

# Kernel modules every guest loads from its initramfs, in load order: the virtio PCI transport and virtio-blk
# (Debian's cloud kernel builds them as modules; ext4 is built in).
GUEST_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

log() { printf '%s: %s\n' "$GUEST_BUILDER" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$GUEST_BUILDER" "$*" >&2
  exit 1
}

# guest_lock DIR: one build at a time per cache directory (fd 9, held until the builder exits); a run that waited
# then finds the cache filled.
guest_lock() {
  mkdir -p "$1"
  exec 9>"$1/.lock"
  flock 9
}

# guest_key_hash FILE...: the first 12 hex digits of the SHA-256 of the files (the builder, this library, the guest's
# init): part of a cache key, so that changing any of them builds a new guest.
guest_key_hash() { cat "$@" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12; }

# guest_cached OUT FILE: when OUT/FILE exists, says so, prints OUT and exits the builder (the cache hit).
guest_cached() {
  if [ -f "$1/$2" ]; then
    log "cached: $1"
    printf '%s\n' "$1"
    exit 0
  fi
}

# guest_copy_modules KERNEL_TREE DEST: copies GUEST_MODULES' .ko files from an unpacked kernel package into DEST
# (the initramfs' /lib/modules), with DEST/load-order listing them for the guest's init to insmod in that order.
guest_copy_modules() {
  local m ko
  for m in "${GUEST_MODULES[@]}"; do
    ko="$(find "$1/lib/modules" -name "$m.ko" | head -n 1)"
    [ -n "$ko" ] || die "module $m.ko not found in the kernel package"
    cp "$ko" "$2/"
  done
  printf '%s\n' "${GUEST_MODULES[@]}" >"$2/load-order"
}

# guest_pack_initramfs ROOT OUT: a gzip'd newc cpio of ROOT. Same inputs, same bytes: fixed file times, sorted
# entries, root-owned, no name or time in the gzip header.
guest_pack_initramfs() {
  find "$1" -exec touch -h -d @0 {} +
  (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 --reproducible) | gzip -9n >"$2"
}

# guest_publish WORK_OUT OUT: moves a finished build into place (replacing a partial one), then removes other
# builds older than a day from OUT's directory (another checkout may still boot a recent one).
guest_publish() {
  local dir key
  dir="$(dirname "$2")"
  key="$(basename "$2")"
  rm -rf "$2"
  mv "$1" "$2"
  find "$dir" -mindepth 1 -maxdepth 1 -type d ! -name debs ! -name "$key" ! -name '.build.*' -mmin +1440 \
    -exec rm -rf {} +
}

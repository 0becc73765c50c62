#!/usr/bin/env bash
# Builds groupsnap's replicated-PostgreSQL guest (docs/consistency.md, part 3: three VMs, a primary, a synchronous
# standby and a client) on top of the PostgreSQL guest of scripts/build-guest-pg.sh, from Debian packages only:
#
#   vmlinuz, root.qcow2, data.qcow2, wal.qcow2   hard links to scripts/build-guest-pg.sh's build (the same Debian 12
#                root with postgresql-15, and its initdb'd cluster: the primary and the standby both start from it,
#                a cold copy of a cleanly shut down cluster being a valid base backup)
#   initrd.img   that build's busybox initramfs plus the kernel's virtio-net modules (failover, net_failover,
#                virtio_net, from the same cached kernel package) and another /init: load the modules, give the NICs
#                their link-local addresses (kernel command line gs.net=eth0:169.254.1.1/24,...), mount /dev/vda and
#                switch_root into scripts/guest-pgrep-init.sh, which it copies into the root first (the root image
#                is shared with scripts/build-guest-pg.sh and not rebuilt). A client VM in check mode is answered
#                by the initramfs alone (it reads its acknowledgement log from /dev/vdb).
#
# Needs root the first time (scripts/build-guest-pg.sh's debootstrap). Idempotent and cached under
# $GROUPSNAP_STATE_DIR/guest-pgrep/<pg build>_<hash of this script, the guest init, scripts/lib/guest-build.sh>/;
# prints that directory on stdout, progress on stderr. After the PostgreSQL guest exists it takes a few seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${GROUPSNAP_STATE_DIR:-/var/lib/groupsnap}"
REP_DIR="$STATE_DIR/guest-pgrep"
INIT="$ROOT/scripts/guest-pgrep-init.sh"
NET_MODULES=(failover net_failover virtio_net)

GUEST_BUILDER=build-guest-pgrep
# shellcheck source=lib/guest-build.sh
source "$ROOT/scripts/lib/guest-build.sh"

PG="$(bash "$ROOT/scripts/build-guest-pg.sh")"
[ -f "$PG/wal.qcow2" ] || die "scripts/build-guest-pg.sh gave no image"
guest_lock "$REP_DIR"
hash="$(guest_key_hash "$INIT" "${BASH_SOURCE[0]}")"
OUT="$REP_DIR/$(basename "$PG")_rep_$hash"
guest_cached "$OUT" initrd.img

# The kernel package the PostgreSQL guest boots (its VERSIONS: "kernel <package> <version>"), from
# scripts/build-guest.sh's cache of downloaded packages, or apt when that cache was cleaned.
read -r _ KPKG KVER < <(grep '^kernel ' "$PG/VERSIONS")
DEBS="$STATE_DIR/guest/debs"
mkdir -p "$DEBS"
kdeb=""
for d in "$DEBS/${KPKG}"_*.deb; do
  [ -f "$d" ] && [ "$(dpkg-deb -f "$d" Version)" = "$KVER" ] && kdeb="$d"
done
if [ -z "$kdeb" ]; then
  log "apt-get download $KPKG=$KVER"
  (cd "$DEBS" && apt-get download -q "$KPKG=$KVER" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  for d in "$DEBS/${KPKG}"_*.deb; do
    [ -f "$d" ] && [ "$(dpkg-deb -f "$d" Version)" = "$KVER" ] && kdeb="$d"
  done
  [ -n "$kdeb" ] || die "apt-get download $KPKG=$KVER failed"
fi

work="$(mktemp -d "$REP_DIR/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$kdeb" "$work/kernel"
mkdir -p "$work/initrd" "$work/out"
(cd "$work/initrd" && gzip -dc "$PG/initrd.img" | cpio -id --quiet)
for m in "${NET_MODULES[@]}"; do
  ko="$(find "$work/kernel/lib/modules" -name "$m.ko" | head -n 1)"
  [ -n "$ko" ] || die "module $m.ko not found in $KPKG"
  cp "$ko" "$work/initrd/lib/modules/"
  printf '%s\n' "$m" >>"$work/initrd/lib/modules/load-order"
done
install -m 0755 "$INIT" "$work/initrd/gs-pgrep-init"
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
ROLE=primary MODE=load NET=
for w in $(cat /proc/cmdline); do
  case "$w" in
    gs.role=*) ROLE=${w#*=} ;;
    gs.mode=*) MODE=${w#*=} ;;
    gs.net=*) NET=${w#*=} ;;
  esac
done
i=0
until [ -b /dev/vda ] && [ -b /dev/vdb ]; do
  i=$((i + 1))
  [ $i -gt 300 ] && { echo "gs: no /dev/vda, vdb"; poweroff -f; }
  sleep 0.1
done
if [ "$ROLE" = client ] && [ "$MODE" = check ]; then
  # The client's durable acknowledgement log: sector 0 of vdb, "GSACK <id>" (nothing: 0).
  N=$(dd if=/dev/vdb bs=512 count=1 2>/dev/null | tr -d '\000' | sed -n 's/^GSACK \([0-9][0-9]*\)$/\1/p')
  echo "GSMV-RESULT role=client acked=${N:-0} ok=1"
  echo "GSMV-END"
  sync
  poweroff -f
fi
ip link set lo up
if [ "$MODE" = load ]; then
  # Only the load VMs talk to each other; a restored clone is checked alone (no address, nothing sent).
  for spec in $(echo "$NET" | tr ',' ' '); do
    dev=${spec%%:*}
    i=0
    until [ -e "/sys/class/net/$dev" ]; do
      i=$((i + 1))
      [ $i -gt 100 ] && { echo "gs: no $dev"; break; }
      sleep 0.1
    done
    ip link set "$dev" up && ip addr add "${spec#*:}" dev "$dev" || echo "gs: cannot configure $spec"
  done
fi
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "gs: cannot mount /dev/vda"; poweroff -f; }
cp /gs-pgrep-init /newroot/sbin/gs-pgrep-init && chmod 0755 /newroot/sbin/gs-pgrep-init
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/gs-pgrep-init
INIT
chmod 0755 "$work/initrd/init"
guest_pack_initramfs "$work/initrd" "$work/out/initrd.img"
for f in vmlinuz root.qcow2 data.qcow2 wal.qcow2; do
  ln "$PG/$f" "$work/out/$f" 2>/dev/null || cp "$PG/$f" "$work/out/$f"
done
{
  cat "$PG/VERSIONS"
  printf 'net modules %s from %s %s\n' "${NET_MODULES[*]}" "$KPKG" "$KVER"
  printf 'guest-pgrep init+builder sha256 %s\n' "$hash"
} >"$work/out/VERSIONS"
guest_publish "$work/out" "$OUT"
log "built $OUT"
printf '%s\n' "$OUT"

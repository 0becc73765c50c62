#!/usr/bin/env bash
# Installs (when missing) and starts libvirtd + QEMU in a container without systemd.
# Idempotent: a second run changes nothing and only reports what is already there.
# Writes the detected virtualisation type (kvm or qemu, i.e. TCG) to $GROUPSNAP_STATE_DIR/virt-type
# and prints it; set GROUPSNAP_VIRT_TYPE=qemu to force TCG.
#
# Never weakens a real hypervisor: the container settings in qemu.conf (security_driver "none", QEMU as root, no
# cgroup controllers) are written only where this script installed libvirt itself (it leaves a marker file,
# $GROUPSNAP_LIBVIRT_MARKER, when it installs the packages) or when asked with GROUPSNAP_LIBVIRT_CONFIGURE=1.
# Where libvirt was installed before, its configuration is left exactly as it is, and the script says so.
#
# Two hypervisor stacks are supported: Debian 12's libvirt 9.0 / QEMU 7.2 (the default) and bookworm-backports'
# libvirt 11.3 / QEMU 10.0 (what Debian 13 ships). GROUPSNAP_LIBVIRT_STACK=backports adds the bookworm-backports
# source, installs (or upgrades to) that stack and restarts libvirtd on it (running VMs keep running; libvirtd
# reconnects to them). Going back is a downgrade with apt, left to the operator.
set -euo pipefail

STATE_DIR="${GROUPSNAP_STATE_DIR:-/var/lib/groupsnap}"
# Overridable so tests can exercise the failure paths without breaking the machine's libvirtd.
SOCK="${GROUPSNAP_LIBVIRT_SOCK:-/var/run/libvirt/libvirt-sock}"
LIBVIRTD="${GROUPSNAP_LIBVIRTD:-libvirtd}"
KVM_DEVICE="${GROUPSNAP_KVM_DEVICE:-/dev/kvm}"
WAIT_S="${GROUPSNAP_LIBVIRTD_WAIT_S:-10}"
QEMU_CONF="${GROUPSNAP_QEMU_CONF:-/etc/libvirt/qemu.conf}"
# Written when this script installed libvirt's packages: only then (or when asked) does it configure libvirt.
MARKER="${GROUPSNAP_LIBVIRT_MARKER:-/var/lib/groupsnap/libvirt-installed-by-groupsnap}"
# libnbd-bin: nbdinfo, a second NBD client the tests check groupsnap's NBD server against (test/repo-serve.test.ts).
PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
  python3-libvirt libnbd-bin)
STACK="${GROUPSNAP_LIBVIRT_STACK:-debian}"
BACKPORTS_LIST="${GROUPSNAP_BACKPORTS_LIST:-/etc/apt/sources.list.d/bookworm-backports.list}"

log() { printf 'setup-libvirt: %s\n' "$*" >&2; }
die() { printf 'setup-libvirt: error: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root to install packages and start libvirtd (try: sudo $0)"
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "packages already installed"
    return
  fi
  need_root
  command -v apt-get >/dev/null || die "apt-get not found; install these packages yourself: ${missing[*]}"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Only a libvirt this script installed from scratch is ours to configure for a container.
  if [[ " ${missing[*]} " == *" libvirt-daemon "* ]]; then
    mkdir -p "$(dirname "$MARKER")"
    printf 'libvirt installed by groupsnap scripts/setup-libvirt.sh on %s: %s\n' "$(date -u +%FT%TZ)" "${missing[*]}" >"$MARKER"
    log "installed libvirt here: recorded in $MARKER (this script may configure it for a container)"
  fi
}

# The bookworm-backports stack (libvirt 11.x / QEMU 10.x): added as a source, installed with -t, libvirtd restarted.
use_backports() {
  case "$STACK" in
    debian) return 0 ;;
    backports) ;;
    *) die "GROUPSNAP_LIBVIRT_STACK must be debian or backports, not '$STACK'" ;;
  esac
  need_root
  local version
  version=$(dpkg-query -W -f='${Version}' libvirt-daemon 2>/dev/null || true)
  if [[ "$version" == *bpo* ]]; then
    log "libvirt from bookworm-backports already installed ($version)"
    return 0
  fi
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'deb http://deb.debian.org/debian bookworm-backports main\n' >"$BACKPORTS_LIST"
    log "added the bookworm-backports source ($BACKPORTS_LIST)"
  fi
  apt-get update -qq
  log "installing libvirt and QEMU from bookworm-backports (was ${version:-not installed})"
  # qemu.conf as it is (a prompt about the conffile would stop dpkg half-configured).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    -o Dpkg::Options::=--force-confold "${PACKAGES[@]}" >/dev/null
  if pgrep -x libvirtd >/dev/null; then
    log "restarting libvirtd on $(libvirtd --version)"
    pkill -x libvirtd
    for _ in $(seq 1 100); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
    # virtlogd re-executes itself on SIGUSR1, keeping its open logs.
    pkill -USR1 -x virtlogd || true
  fi
}

# Sets `key = value` in qemu.conf, replacing an existing (possibly commented) line; no change when already set.
set_conf() {
  local file=$1 key=$2 value=$3
  if grep -Eq "^${key} = ${value//[/\\[}\$" "$file"; then return; fi
  if grep -Eq "^#? *${key} = " "$file"; then
    sed -i -E "0,/^#? *${key} = .*/s||${key} = ${value}|" "$file"
  else
    printf '%s = %s\n' "$key" "$value" >>"$file"
  fi
  log "set ${key} = ${value} in ${file}"
}

# Whether libvirt's configuration is ours to change: installed by this script, or the user asked for it.
may_configure() {
  if [ "${GROUPSNAP_LIBVIRT_CONFIGURE:-}" = 1 ]; then
    log "configuring libvirt for a container as asked (GROUPSNAP_LIBVIRT_CONFIGURE=1): $QEMU_CONF gets security_driver \"none\" and QEMU as root"
    return 0
  fi
  if [ -f "$MARKER" ]; then
    log "libvirt was installed by this script ($MARKER): configuring it for a container (security_driver \"none\", QEMU as root)"
    return 0
  fi
  log "libvirt was installed before groupsnap's set-up: leaving its configuration ($QEMU_CONF) as it is; in a container without systemd, GROUPSNAP_LIBVIRT_CONFIGURE=1 lets this script configure it for one (security_driver \"none\", QEMU as root)"
  return 1
}

configure() {
  mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/images "$STATE_DIR"
  may_configure || return 0
  local conf=$QEMU_CONF
  # Debian's libvirt-daemon-system ships this file; the bare daemon packages do not.
  mkdir -p "$(dirname "$conf")"
  [ -f "$conf" ] || { : >"$conf"; log "created $conf"; }
  # A container has no cgroup delegation, no SELinux/AppArmor and runs QEMU as root.
  set_conf "$conf" security_driver '"none"'
  set_conf "$conf" cgroup_controllers '[ ]'
  set_conf "$conf" user '"root"'
  set_conf "$conf" group '"root"'
  # libvirtd looks these up at start even when QEMU runs as root.
  getent group kvm >/dev/null || groupadd -r kvm
  getent group libvirt >/dev/null || groupadd -r libvirt
  getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
  getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
}

# In a container, a libvirt configured for a full host often cannot start QEMU: say what would help.
hint() {
  [ -f "$MARKER" ] || [ "${GROUPSNAP_LIBVIRT_CONFIGURE:-}" = 1 ] ||
    printf '%s' "; if this is a container without systemd, GROUPSNAP_LIBVIRT_CONFIGURE=1 lets this script configure libvirt for it"
}

start_daemons() {
  if ! pgrep -x virtlogd >/dev/null; then
    log "starting virtlogd"
    virtlogd -d
  fi
  if pgrep -x libvirtd >/dev/null && [ -S "$SOCK" ] && virsh -c qemu:///system version >/dev/null 2>&1; then
    log "libvirtd already running"
    return
  fi
  log "starting libvirtd"
  "$LIBVIRTD" -d || die "libvirtd failed to start (exit $?); see /var/log/libvirt/libvirtd.log or run 'libvirtd -v'$(hint)"
  for _ in $(seq 1 $((WAIT_S * 10))); do
    if [ -S "$SOCK" ] && virsh -c qemu:///system version >/dev/null 2>&1; then
      log "libvirtd is up"
      return
    fi
    sleep 0.1
  done
  die "libvirtd did not come up within ${WAIT_S} s (socket $SOCK); see /var/log/libvirt/libvirtd.log and run 'libvirtd -v' to see why$(hint)"
}

# KVM "works" when QEMU can actually start an accelerated machine, not merely when /dev/kvm exists.
detect_virt_type() {
  local type=qemu reason
  if [ "${GROUPSNAP_VIRT_TYPE:-}" = qemu ]; then
    reason="forced by GROUPSNAP_VIRT_TYPE=qemu"
  elif [ ! -e "$KVM_DEVICE" ]; then
    reason="$KVM_DEVICE is missing"
  elif out=$(echo quit | timeout 20 qemu-system-x86_64 -accel kvm -machine q35 -nodefaults -display none \
      -S -monitor stdio 2>&1) && ! grep -qi 'failed\|error' <<<"$out"; then
    type=kvm
    reason="qemu started a KVM machine"
  else
    reason="qemu could not use KVM: $(grep -i 'failed\|error' <<<"$out" | head -n 1)"
  fi
  if [ "$type" = qemu ]; then
    log "KVM not usable ($reason): VMs fall back to TCG (software emulation, slower)"
  else
    log "KVM works ($reason)"
  fi
  printf '%s\n' "$type" >"$STATE_DIR/virt-type.tmp" && mv "$STATE_DIR/virt-type.tmp" "$STATE_DIR/virt-type"
  printf '%s\n' "$type"
}

install_packages
use_backports
need_root
configure
start_daemons
detect_virt_type

#!/usr/bin/env bash
# A second, independent hypervisor on this machine: a dedicated Unix user (default gshostb) with its own libvirt
# session daemon (qemu:///session: its own QEMU processes, domain definitions and state) and its own image
# directory. Used by the two-hypervisor test fixture and the DR demo (dev/hypervisor-hosts.ts).
# Idempotent: creates the user and directories when missing and starts the daemon when it does not answer.
# Prints the user's runtime directory (root reaches the daemon at
# qemu+unix:///session?socket=<runtime dir>/libvirt/libvirt-sock). Nothing of the system libvirtd is touched, and
# /dev/kvm stays root-only: the user's VMs run under TCG.
set -euo pipefail

USER_NAME="${1:-gshostb}"
WAIT_S="${GROUPSNAP_LIBVIRTD_WAIT_S:-15}"
log() { printf 'setup-hypervisor-host: %s\n' "$*" >&2; }
die() { printf 'setup-hypervisor-host: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (creates a user and starts its libvirt daemon)"
command -v libvirtd >/dev/null || die "libvirtd is not installed: run scripts/setup-libvirt.sh first"
[[ "$USER_NAME" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "bad user name '$USER_NAME'"

if ! getent passwd "$USER_NAME" >/dev/null; then
  useradd --system --create-home --home-dir "/var/lib/groupsnap-hosts/$USER_NAME" --shell /usr/sbin/nologin \
    "$USER_NAME"
  log "created user $USER_NAME"
fi
uid="$(id -u "$USER_NAME")"
gid="$(id -g "$USER_NAME")"
home="$(getent passwd "$USER_NAME" | cut -d: -f6)"
runtime="/run/user/$uid"
images="$home/.local/share/libvirt/images"
state="$home/groupsnap"
for d in "$home" "$runtime" "$home/.local/share/libvirt" "$images" "$state"; do
  if [ ! -d "$d" ]; then
    mkdir -p "$d"
    log "created $d"
  fi
  chown "$uid:$gid" "$d"
done
chmod 0700 "$runtime"

as_user() {
  setpriv --reuid="$uid" --regid="$gid" --init-groups \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$home" USER="$USER_NAME" XDG_RUNTIME_DIR="$runtime" "$@"
}

sock="$runtime/libvirt/libvirt-sock"
if [ -S "$sock" ] && as_user virsh -c qemu:///session version >/dev/null 2>&1; then
  log "session libvirtd of $USER_NAME already running"
else
  log "starting the session libvirtd of $USER_NAME"
  # Started by hand (no --timeout), so it stays up when no client is connected.
  (cd "$home" && as_user libvirtd -d) || die "the session libvirtd of $USER_NAME failed to start"
  for _ in $(seq $((WAIT_S * 10))); do
    as_user virsh -c qemu:///session version >/dev/null 2>&1 && break
    sleep 0.1
  done
  as_user virsh -c qemu:///session version >/dev/null 2>&1 ||
    die "the session libvirtd of $USER_NAME does not answer after ${WAIT_S}s (see $home/.cache/libvirt/libvirtd.log)"
fi
printf '%s\n' "$runtime"

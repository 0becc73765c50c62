#!/usr/bin/env bash
# Debian's Chromium for the browser test of the Temporal UI (test/ui-browser.test.ts drives it with playwright-core;
# no browser download of Playwright's own). Idempotent: skipped when the package is installed. Prints its path.
set -euo pipefail

log() { printf 'ensure-chromium: %s\n' "$*" >&2; }
die() { printf 'ensure-chromium: error: %s\n' "$*" >&2; exit 1; }

if [ -n "${GROUPSNAP_CHROMIUM:-}" ]; then
  [ -x "$GROUPSNAP_CHROMIUM" ] || die "GROUPSNAP_CHROMIUM=$GROUPSNAP_CHROMIUM is not an executable file"
  printf '%s\n' "$GROUPSNAP_CHROMIUM"
  exit 0
fi
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed'; then
  [ "$(id -u)" = 0 ] || die "must run as root to install Debian's chromium package (try: sudo $0)"
  command -v apt-get >/dev/null || die "apt-get not found; install Chromium yourself and set GROUPSNAP_CHROMIUM"
  log "installing chromium"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium >/dev/null
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is missing after installing the chromium package"
printf '%s\n' /usr/bin/chromium

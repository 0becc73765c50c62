#!/usr/bin/env bash
# Everything groupsnap needs on this machine, idempotent: libvirtd + QEMU, the Temporal CLI and server, PostgreSQL,
# Chromium (UI test), npm dependencies (including the native libvirt binding) and the TypeScript build. Each step is
# skipped when already done.
#   --main-job  only what `npm start` (the demo) needs: libvirt + QEMU, the Temporal CLI, versitygw, npm
#               dependencies and the build; not the second hypervisor, the Temporal server, PostgreSQL, the
#               workload guest or Chromium, which only the tests and benchmarks use.
set -euo pipefail
main_job=0
for arg in "$@"; do
  case "$arg" in
    --main-job) main_job=1 ;;
    *) printf 'setup: unknown option %s (known: --main-job)\n' "$arg" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf 'setup: %s\n' "$*" >&2; }

bash scripts/setup-libvirt.sh >/dev/null
# Node 24 LTS, what the demo and the tests run on (scripts/with-node.sh), when the machine's node is another major.
bash scripts/ensure-node.sh >/dev/null
bash scripts/ensure-temporal.sh >/dev/null
# versitygw, a real S3 gateway for the off-host backup tests and the demo (built once into .tools/).
bash scripts/ensure-versitygw.sh >/dev/null
if [ "$main_job" = 0 ]; then
  # A second, independent hypervisor (a Unix user's libvirt session daemon) for the two-host tests.
  bash scripts/setup-hypervisor-host.sh gshostb >/dev/null
  # The Temporal server and its SQL schema tool (built once into .tools/) and Debian's PostgreSQL, for the
  # production-shaped two-process cluster of test/temporal-cluster.ts and `npm run bench:cluster`.
  bash scripts/ensure-temporal-server.sh >/dev/null
  bash scripts/ensure-postgres.sh >/dev/null
  # The workload guest of the crash-consistency check (kernel + busybox initramfs from Debian packages, cached).
  bash scripts/build-guest.sh >/dev/null
  # Debian's Chromium, for the browser test of the Temporal UI (playwright-core drives it; no browser download).
  bash scripts/ensure-chromium.sh >/dev/null
fi

# npm ci only when the lockfile changed since the last install (or node_modules is missing).
stamp=node_modules/.groupsnap-lock-stamp
want="$(sha256sum package-lock.json libvirt/package.json | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -f libvirt/build/Release/groupsnap_libvirt.node ]; then
  log "installing npm dependencies and building the native libvirt binding"
  bash scripts/with-node.sh npm ci --no-audit --no-fund
  printf '%s\n' "$want" >"$stamp"
fi
log "building TypeScript"
bash scripts/with-node.sh npm run --silent build

#!/usr/bin/env bash
# Prints the folder of PostgreSQL's server binaries (initdb, postgres, pg_ctl), installing Debian's PostgreSQL
# once if none is there, and makes sure the unprivileged `postgres` user exists to run private clusters
# (dev/temporal-cluster.ts). Idempotent. Never creates, starts or changes a system cluster: Debian's automatic
# "main" cluster is switched off before the package is installed.
set -euo pipefail

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }
die() { printf 'ensure-postgres: error: %s\n' "$*" >&2; exit 1; }

find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

if ! bin=$(find_bin); then
  command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL server found under /usr/lib/postgresql and no apt-get to install one"
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; run this script as root once (it installs Debian's postgresql-15)"
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common
    printf 'create_main_cluster = false\n' >/etc/postgresql-common/createcluster.conf
  fi
  log "installing Debian's PostgreSQL server (postgresql-15)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold postgresql-15 >&2 ||
    { apt-get update >&2 && apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold postgresql-15 >&2; } ||
    die "apt-get install postgresql-15 failed (see above)"
  bin=$(find_bin) || die "postgresql-15 installed but no initdb/postgres under /usr/lib/postgresql/*/bin"
fi
if ! id postgres >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "no 'postgres' user to run PostgreSQL as; run this script as root once"
  log "creating the system user 'postgres'"
  useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
fi
command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is missing"
printf '%s\n' "$bin"

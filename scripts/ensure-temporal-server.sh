#!/usr/bin/env bash
# Prints the folder holding the Temporal server v1.29.1 (the release the CLI 1.5.1 embeds) for a production-shaped
# cluster (dev/temporal-cluster.ts): bin/temporal-server, bin/temporal-sql-tool (the SQL schema tool), and the
# module's files the server needs at run time, config/docker.yaml (the config template temporalio/server renders
# from environment variables) and schema/postgresql. Built once with `go install` into the git-ignored .tools/
# and reused afterwards; idempotent.
set -euo pipefail

VERSION=1.29.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${GROUPSNAP_TOOLS_DIR:-$ROOT/.tools}"
HOME_DIR="$TOOLS/temporal-server-$VERSION"

log() { printf 'ensure-temporal-server: %s\n' "$*" >&2; }
die() { printf 'ensure-temporal-server: error: %s\n' "$*" >&2; exit 1; }

ready() {
  [ -x "$HOME_DIR/bin/temporal-server" ] && [ -x "$HOME_DIR/bin/temporal-sql-tool" ] &&
    [ -f "$HOME_DIR/config/docker.yaml" ] && [ -d "$HOME_DIR/schema/postgresql/v12" ]
}
if ready; then
  printf '%s\n' "$HOME_DIR"
  exit 0
fi
command -v go >/dev/null 2>&1 || die "no Go toolchain to build the Temporal server v$VERSION; install Go >= 1.25 and run this script again"
mkdir -p "$HOME_DIR/bin"
if [ ! -x "$HOME_DIR/bin/temporal-server" ] || [ ! -x "$HOME_DIR/bin/temporal-sql-tool" ]; then
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  start=$(date +%s)
  log "building Temporal server v$VERSION and its SQL schema tool with 'go install' into $HOME_DIR/bin (once; a few minutes)"
  # Pure Go (the SQL drivers need no cgo); both commands come from one module, so they share one build.
  CGO_ENABLED=0 GOBIN="$build" GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" \
    "go.temporal.io/server/cmd/server@v$VERSION" "go.temporal.io/server/cmd/tools/sql@v$VERSION" >&2 ||
    die "go install of go.temporal.io/server v$VERSION failed (see above)"
  install -m 0755 "$build/server" "$HOME_DIR/bin/temporal-server"
  install -m 0755 "$build/sql" "$HOME_DIR/bin/temporal-sql-tool"
  log "built in $(($(date +%s) - start)) s"
fi
# The module as the build downloaded it (go mod download is a no-op then; it fetches it if the cache was cleaned).
mod=$(GOFLAGS=-mod=mod go mod download -json "go.temporal.io/server@v$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -f "$mod/config/docker.yaml" ] && [ -d "$mod/schema/postgresql/v12" ] ||
  die "config/docker.yaml or schema/postgresql/v12 not found in the module at '$mod'"
rm -rf "$HOME_DIR/config" "$HOME_DIR/schema"
mkdir -p "$HOME_DIR/config" "$HOME_DIR/schema"
cp "$mod/config/docker.yaml" "$HOME_DIR/config/docker.yaml"
cp -r "$mod/schema/postgresql" "$HOME_DIR/schema/"
chmod -R u+w "$HOME_DIR/config" "$HOME_DIR/schema"
printf '%s\n' "$HOME_DIR"

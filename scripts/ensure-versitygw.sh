#!/usr/bin/env bash
# Prints the path of a versitygw (a real S3 gateway, Apache-2.0) for the tests, the demo and the benchmark:
# $VERSITYGW if set, else a `versitygw` on PATH, else the pinned version built once with `go install` into the
# git-ignored .tools/bin folder and reused afterwards.
set -euo pipefail

VERSION=1.7.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="${GROUPSNAP_TOOLS_DIR:-$ROOT/.tools}/bin"

log() { printf 'ensure-versitygw: %s\n' "$*" >&2; }
die() { printf 'ensure-versitygw: error: %s\n' "$*" >&2; exit 1; }

if [ -n "${VERSITYGW:-}" ]; then
  [ -x "$VERSITYGW" ] || die "VERSITYGW=$VERSITYGW is not an executable file"
  printf '%s\n' "$VERSITYGW"
  exit 0
fi
if found=$(command -v versitygw 2>/dev/null); then
  printf '%s\n' "$found"
  exit 0
fi
if [ -x "$TOOLS_BIN/versitygw" ]; then
  printf '%s\n' "$TOOLS_BIN/versitygw"
  exit 0
fi
command -v go >/dev/null 2>&1 || die "no 'versitygw' on PATH and no Go toolchain to build it.
  Install Go and run this script again, or set VERSITYGW=/path/to/versitygw."
log "building versitygw v$VERSION with 'go install' into $TOOLS_BIN (once; about a minute)"
mkdir -p "$TOOLS_BIN"
start=$(date +%s)
CGO_ENABLED=0 GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" \
  "github.com/versity/versitygw/cmd/versitygw@v$VERSION" >&2 || die "go install of versitygw failed (see above)"
log "built in $(( $(date +%s) - start )) s"
printf '%s\n' "$TOOLS_BIN/versitygw"

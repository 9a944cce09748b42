#!/usr/bin/env bash
# Installs the npm clients of the interop tests (tests/clients/node/package.json)
# into a cache directory: $1, default the tests' cache (tests/interop_clients.py):
# $QMPEVENTS_INTEROP_CACHE/node, or ${XDG_CACHE_HOME:-~/.cache}/qmpevents/interop/node.
# Quick when already installed; run by `./dev test` and by the tests' fixture.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${QMPEVENTS_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qmpevents/interop}"
dest="${1:-$cache/node}"
mkdir -p "$dest"
if cmp -s "$here/node/package.json" "$dest/package.json" \
        && [ -f "$dest/node_modules/qemu-qmp/package.json" ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "install_node_clients.sh: npm not found (apt-get install nodejs npm)" >&2
    exit 1
fi
cp "$here/node/package.json" "$dest/package.json"
npm install --prefix "$dest" --no-audit --no-fund --loglevel=error >/dev/null

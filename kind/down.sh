#!/bin/bash
# Removes what kind/up.sh made: the kind cluster and the host's swtpm (its state too with --purge).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
STATE=$REPO/kind/.state
kind delete cluster --name phylax 2>/dev/null || true
if [ -f "$STATE/swtpm.pid" ]; then
  kill "$(cat "$STATE/swtpm.pid")" 2>/dev/null || true
  rm -f "$STATE/swtpm.pid"
fi
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$STATE"
fi

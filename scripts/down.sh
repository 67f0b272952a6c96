#!/bin/bash
# Stops what scripts/up.sh started: the Phylax roles (by pid, checked against /proc/PID/exe),
# then the control plane. --purge also deletes the control plane's data and certificates.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
STATE=${PHYLAX_LOCAL_DIR:-/var/tmp/phylax/local}
for pf in "$STATE"/run/*.pid; do
  [ -f "$pf" ] || continue
  pid=$(cat "$pf")
  if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$STATE/phylax" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    echo "$(basename "$pf" .pid): stopped"
  fi
  rm -f "$pf"
done
tests/control-plane/down.sh "$@"

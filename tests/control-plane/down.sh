#!/bin/bash
# Stop the control plane started by $CONTROL_PLANE_ROOT/up.sh, by PID only (pid files in $CONTROL_PLANE_ROOT/run).
# A PID is only signalled if /proc/PID/exe still is the expected binary (guards against PID reuse).
# Usage: $CONTROL_PLANE_ROOT/down.sh [--purge]   (--purge also deletes etcd data, certs and kubeconfigs)
set -uo pipefail
ROOT=${CONTROL_PLANE_ROOT:-${PHYLAX_CONTROL_PLANE_DIR:-/var/tmp/phylax/control-plane}}
RUN=$ROOT/run

stop() {
  local n=$1 pf=$RUN/$1.pid pid exe
  [ -f "$pf" ] || return 0
  pid=$(cat "$pf")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  if [ -z "$pid" ] || [[ "$exe" != *"/$n" ]]; then echo "$n: not running"; rm -f "$pf"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then echo "$n: still alive after 20s, sending SIGKILL to $pid"; kill -KILL "$pid" 2>/dev/null; fi
  echo "$n: stopped (pid $pid)"
  rm -f "$pf"
}
# reverse start order
stop kube-controller-manager
stop kube-apiserver
stop etcd
stop kms-mock   # only present if kms-test.sh was interrupted
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$RUN" "$ROOT/kubeconfig" "$ROOT/kubeconfig-token"
  echo "purged $RUN"
fi

#!/bin/bash
# Startup and footprint of the phylax binary (issue: foundation):
#   - stripped size of the release binary (all roles, glibc build);
#   - operator: time from exec to /readyz 200 against the local real control plane (N runs, each
#     in a fresh namespace so it becomes leader at once), min/median/max;
#   - operator idle RSS and CPU over an idle window (no work: leader election renewing every 2s).
# Usage: benches/startup.sh [RUNS=10] [IDLE_SECONDS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10}
IDLE=${2:-30}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/phylax/target}
export PHYLAX_CONTROL_PLANE_DIR=${PHYLAX_CONTROL_PLANE_DIR:-/var/tmp/phylax/control-plane}

cargo build --release -q
BIN=$CARGO_TARGET_DIR/release/phylax
echo "binary: $(stat -c %s "$BIN") bytes stripped ($(numfmt --to=iec "$(stat -c %s "$BIN")")), $(file -b "$BIN" | cut -d, -f1-2)"

started_cp=0
if ! tests/control-plane/up.sh >/tmp/phylax-bench-cp.log 2>&1; then
  grep -q "already running" /tmp/phylax-bench-cp.log || { cat /tmp/phylax-bench-cp.log; exit 1; }
else
  started_cp=1
fi
KC=$PHYLAX_CONTROL_PLANE_DIR/kubeconfig
cleanup() { [ "$started_cp" = 1 ] && tests/control-plane/down.sh >/dev/null; }
trap cleanup EXIT

PORT=19190
times=()
for i in $(seq 1 "$RUNS"); do
  ns="bench-startup-$RANDOM$RANDOM"
  KUBECONFIG=$KC kubectl create namespace "$ns" >/dev/null 2>&1
  t0=$(date +%s%N)
  "$BIN" operator --kubeconfig "$KC" --namespace "$ns" --admin-addr "127.0.0.1:$PORT" >/dev/null 2>&1 &
  pid=$!
  until curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do :; done
  t1=$(date +%s%N)
  times+=($(( (t1 - t0) / 1000000 )))
  if [ "$i" = "$RUNS" ]; then
    s0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    sleep "$IDLE"
    s1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    echo "operator idle over ${IDLE}s: RSS ${rss} KiB (peak ${hwm} KiB), CPU $(( (s1 - s0) * 10 )) ms = $(awk -v t=$(( (s1 - s0) * 10 )) -v w="$IDLE" 'BEGIN{printf "%.2f", t/(w*10)}')% of one core"
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  KUBECONFIG=$KC kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
echo "operator exec -> /readyz over $RUNS runs (ms): min $(echo "$sorted" | head -1), median $(echo "$sorted" | sed -n "$(( (RUNS + 1) / 2 ))p"), max $(echo "$sorted" | tail -1)"

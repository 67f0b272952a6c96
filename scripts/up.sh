#!/bin/bash
# Phylax's main job on a machine without Docker: a real control plane (etcd, kube-apiserver,
# kube-controller-manager on 127.0.0.1), Phylax installed into it, and every role running against
# it as a local process. Prints what to try next. Stop everything with scripts/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/phylax/target}
export PHYLAX_CONTROL_PLANE_DIR=${PHYLAX_CONTROL_PLANE_DIR:-/var/tmp/phylax/control-plane}
STATE=${PHYLAX_LOCAL_DIR:-/var/tmp/phylax/local}
NS=phylax-system

scripts/setup.sh
echo "== building phylax (release)"
cargo build --release -q
PHYLAX=$CARGO_TARGET_DIR/release/phylax
mkdir -p "$STATE/logs" "$STATE/run"
cp "$PHYLAX" "$STATE/phylax"
PHYLAX=$STATE/phylax

echo "== control plane"
if ! "$REPO/tests/control-plane/up.sh" >"$STATE/logs/control-plane.log" 2>&1; then
  if grep -q "already running" "$STATE/logs/control-plane.log"; then
    echo "   already running; reusing it"
  else
    cat "$STATE/logs/control-plane.log" >&2
    exit 1
  fi
fi
KUBECONFIG_FILE=$PHYLAX_CONTROL_PLANE_DIR/kubeconfig
export KUBECONFIG=$KUBECONFIG_FILE

echo "== installing Phylax's namespace, CRDs and RBAC (phylax manifests | kubectl apply)"
"$PHYLAX" manifests --namespace "$NS" | kubectl apply --server-side --field-manager=phylax-up -f - 2>&1 \
  | grep -v -i "version difference\|skew" | sed 's/^/   /'

alive() { local pf=$STATE/run/$1.pid; [ -f "$pf" ] && [ "$(readlink "/proc/$(cat "$pf")/exe" 2>/dev/null)" = "$PHYLAX" ]; }
start() { # name role admin-port args...
  local name=$1 role=$2 port=$3; shift 3
  if alive "$name"; then echo "   $name already running (pid $(cat "$STATE/run/$name.pid"))"; return; fi
  setsid nohup "$PHYLAX" "$role" --admin-addr "127.0.0.1:$port" "$@" \
    >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/run/$name.pid"
}
echo "== starting the roles"
start operator-a operator 9090 --kubeconfig "$KUBECONFIG_FILE" --namespace "$NS" --identity operator-a
start operator-b operator 19090 --kubeconfig "$KUBECONFIG_FILE" --namespace "$NS" --identity operator-b
start webhook webhook 9091
start kms-plugin kms-plugin 9092
start node-agent node-agent 9093
start tokenizer tokenizer 9094

for entry in operator-a:9090 operator-b:19090 webhook:9091 kms-plugin:9092 node-agent:9093 tokenizer:9094; do
  name=${entry%%:*}; port=${entry##*:}
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    alive "$name" || { echo "error: $name exited; its log:" >&2; tail -5 "$STATE/logs/$name.log" >&2; exit 1; }
    sleep 0.2
  done
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    printf '   %-11s ready   admin http://127.0.0.1:%s  log %s\n' "$name" "$port" "$STATE/logs/$name.log"
  else
    printf '   %-11s NOT READY: %s\n' "$name" "$(curl -sS "http://127.0.0.1:$port/readyz" 2>&1)"
  fi
done

cat <<TXT

Phylax is running against a real Kubernetes 1.20 control plane on 127.0.0.1.
The Deployments and DaemonSet it installed stay Pending (this control plane has no kubelet); the
roles run as the local processes above instead. Today the operator elects a leader and the other
roles serve their admin endpoints; their functions arrive with their issues.

Try next:
  export KUBECONFIG=$KUBECONFIG_FILE
  kubectl -n $NS get lease phylax-operator -o yaml        # who leads
  curl -s 127.0.0.1:9090/metrics | grep leader_is_leader   # 1 on the leader, 0 on the other
  curl -s 127.0.0.1:19090/metrics | grep leader_is_leader
  kill \$(cat $STATE/run/operator-a.pid)                   # graceful stop: the lease is handed over at once
  curl -s 127.0.0.1:9091/readyz; tail -f $STATE/logs/*.log
  scripts/down.sh                                          # stop everything
TXT

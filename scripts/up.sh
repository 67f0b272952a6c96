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
# The roles run from a copy, so a rebuild does not pull the binary from under them; while any of
# them runs, the copy stays as it is (scripts/down.sh first to run a new build).
if cmp -s "$PHYLAX" "$STATE/phylax"; then
  :
elif pgrep -f "^$STATE/phylax " >/dev/null; then
  echo "   roles from an earlier build are running; keeping them (scripts/down.sh, then up.sh, to switch)"
else
  cp "$PHYLAX" "$STATE/phylax.new" && mv "$STATE/phylax.new" "$STATE/phylax"
fi
PHYLAX=$STATE/phylax

alive() { local pf=$STATE/run/$1.pid; [ -f "$pf" ] && [ "$(readlink "/proc/$(cat "$pf")/exe" 2>/dev/null)" = "$PHYLAX" ]; }
start() { # name role admin-port args...
  local name=$1 role=$2 port=$3; shift 3
  if alive "$name"; then echo "   $name already running (pid $(cat "$STATE/run/$name.pid"))"; return; fi
  setsid nohup "$PHYLAX" "$role" --admin-addr "127.0.0.1:$port" "$@" \
    >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/run/$name.pid"
}
wait_ready() { # name port
  local name=$1 port=$2
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    alive "$name" || { echo "error: $name exited; its log:" >&2; tail -5 "$STATE/logs/$name.log" >&2; exit 1; }
    sleep 0.2
  done
  return 1
}

# The KMS plugin first: the API server encrypts Secrets through it from its first write.
echo "== KMS plugin (key file $STATE/kms.key) and the API server's encryption configuration"
KMS_SOCKET=$STATE/run/kms.sock
start kms-plugin kms-plugin 9092 --listen "unix://$KMS_SOCKET" --key-file "$STATE/kms.key" --create-key-file
wait_ready kms-plugin 9092
cat >"$STATE/encryption.yaml" <<YAML
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - kms:
      name: phylax
      endpoint: unix://$KMS_SOCKET
      cachesize: 1000
      timeout: 3s
  - identity: {}
YAML
export ENCRYPTION_PROVIDER_CONFIG=$STATE/encryption.yaml

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
# A previous run pointed the webhook configuration at a URL; the manifests name the Service.
kubectl delete validatingwebhookconfiguration phylax --ignore-not-found >/dev/null 2>&1 || true
kubectl delete mutatingwebhookconfiguration phylax --ignore-not-found >/dev/null 2>&1 || true
"$PHYLAX" manifests --namespace "$NS" | kubectl apply --server-side --field-manager=phylax-up -f - 2>&1 \
  | grep -v -i "version difference\|skew" | sed 's/^/   /'

echo "== starting the roles"
# The serving certificate also names 127.0.0.1: this control plane has no cluster network, so the
# API server calls the webhook on loopback instead of through its Service.
OPERATOR_FLAGS=(--kubeconfig "$KUBECONFIG_FILE" --namespace "$NS" --webhook-cert-extra-name=127.0.0.1 --webhook-certs-resync=5s)
start operator-a operator 9090 "${OPERATOR_FLAGS[@]}" --identity operator-a
start operator-b operator 19090 "${OPERATOR_FLAGS[@]}" --identity operator-b

# The kubelet's part, by hand: the serving Secret the operator keeps, copied into a directory.
echo "== webhook: certificate from the operator, called by the API server on https://127.0.0.1:8443"
TLS_DIR=$STATE/webhook-tls
mkdir -p "$TLS_DIR"
for _ in $(seq 1 150); do
  kubectl -n "$NS" get secret phylax-webhook-tls >/dev/null 2>&1 && break
  sleep 0.2
done
for key in tls.crt tls.key; do
  kubectl -n "$NS" get secret phylax-webhook-tls -o "jsonpath={.data.${key//./\\.}}" | base64 -d >"$TLS_DIR/$key.new"
  mv "$TLS_DIR/$key.new" "$TLS_DIR/$key"
done
chmod 600 "$TLS_DIR/tls.key"
kubectl patch validatingwebhookconfiguration phylax --type=json \
  -p '[{"op":"replace","path":"/webhooks/0/clientConfig","value":{"url":"https://127.0.0.1:8443/validate/secret-sync"}}]' >/dev/null
kubectl patch mutatingwebhookconfiguration phylax --type=json \
  -p '[{"op":"replace","path":"/webhooks/0/clientConfig","value":{"url":"https://127.0.0.1:8443/mutate/profiles"}}]' >/dev/null
start webhook webhook 9091 --kubeconfig "$KUBECONFIG_FILE" --namespace "$NS" --listen-addr 127.0.0.1:8443 --tls-dir "$TLS_DIR"
# The leading operator puts the caBundle back into the configuration at its next resync.
for _ in $(seq 1 150); do
  [ -n "$(kubectl get validatingwebhookconfiguration phylax -o 'jsonpath={.webhooks[0].clientConfig.caBundle}' 2>/dev/null)" ] && break
  sleep 0.2
done
# This control plane has no kubelet: a Node object stands for this machine, and the node agent
# installs profiles into a kubelet root under the state directory.
kubectl apply --server-side --field-manager=phylax-up -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata: {name: phylax-local, labels: {kubernetes.io/hostname: phylax-local}}
YAML
mkdir -p "$STATE/kubelet"
start node-agent node-agent 9093 --kubeconfig "$KUBECONFIG_FILE" --namespace "$NS" --node-name phylax-local \
  --kubelet-root "$STATE/kubelet" --audit-source none
start tokenizer tokenizer 9094

# Secret sync, end to end: a development-only `file` SecretProvider over a local directory, a
# namespace it allows, and a pod there asking for a secret; the leading operator writes the Secret.
# Security profiles, end to end: a SeccompProfile the node agent compiles with libseccomp and
# installs under the local kubelet root; the operator reports it Installed.
echo "== security profiles: SeccompProfile demo-deny-mkdir -> $STATE/kubelet/seccomp/phylax/"
kubectl apply --server-side --field-manager=phylax-up -f - >/dev/null <<YAML
apiVersion: profiles.phylax.dev/v1alpha1
kind: SeccompProfile
metadata: {name: demo-deny-mkdir}
spec:
  defaultAction: SCMP_ACT_ALLOW
  syscalls:
  - {names: [mkdir, mkdirat], action: SCMP_ACT_ERRNO, errnoRet: 13}
YAML
for _ in $(seq 1 150); do
  [ "$(kubectl get seccompprofile demo-deny-mkdir -o 'jsonpath={.status.state}' 2>/dev/null)" = Installed ] && break
  sleep 0.2
done
echo "   state: $(kubectl get seccompprofile demo-deny-mkdir -o 'jsonpath={.status.state}'), file: $(ls "$STATE/kubelet/seccomp/phylax/")"

echo "== secret sync: file store $STATE/demo-store, namespace demo"
mkdir -p "$STATE/demo-store/demo"
printf '{"DB_HOST":"db.demo.svc","DB_PASSWORD":"demo-only-password"}\n' > "$STATE/demo-store/demo/config.json"
kubectl apply --server-side --field-manager=phylax-up -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {team: demo}}
---
apiVersion: secrets.phylax.dev/v1alpha1
kind: SecretProvider
metadata: {name: demo-files}
spec:
  file: {directory: $STATE/demo-store}
  namespaces: {selector: {matchLabels: {team: demo}}}
  paths: ["{namespace}/*"]
YAML
for _ in $(seq 1 150); do
  kubectl -n demo get serviceaccount default >/dev/null 2>&1 && break
  sleep 0.2
done
kubectl -n demo delete pod app --ignore-not-found --wait=false >/dev/null 2>&1 || true
for _ in $(seq 1 150); do
  kubectl -n demo run app --image=registry.example/app:1 --restart=Never \
    --annotations='secrets.phylax.dev/sync={provider: demo-files, path: demo/config, secretName: app-config}' \
    >/dev/null 2>&1 && break
  sleep 0.2
done
for _ in $(seq 1 150); do
  [ -n "$(kubectl -n demo get secret app-config -o 'jsonpath={.data.DB_HOST}' 2>/dev/null)" ] && break
  sleep 0.2
done
if kubectl -n demo get secret app-config >/dev/null 2>&1; then
  echo "   Secret demo/app-config synced: keys $(kubectl -n demo get secret app-config -o 'jsonpath={.data}' | grep -o '"[A-Z_]*"' | tr '\n' ' ')"
else
  echo "   Secret demo/app-config NOT synced; see $STATE/logs/operator-*.log" >&2
fi

for entry in operator-a:9090 operator-b:19090 webhook:9091 kms-plugin:9092 node-agent:9093 tokenizer:9094; do
  name=${entry%%:*}; port=${entry##*:}
  wait_ready "$name" "$port" || true
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    printf '   %-11s ready   admin http://127.0.0.1:%s  log %s\n' "$name" "$port" "$STATE/logs/$name.log"
  else
    printf '   %-11s NOT READY: %s\n' "$name" "$(curl -sS "http://127.0.0.1:$port/readyz" 2>&1)"
  fi
done

cat <<TXT

Phylax is running against a real Kubernetes 1.20 control plane on 127.0.0.1.
The Deployments and DaemonSet it installed stay Pending (this control plane has no kubelet); the
roles run as the local processes above instead. The API server encrypts Secrets through the KMS
plugin; the operator keeps the webhook's certificates and caBundle and syncs secrets from the
demo file store into the pods that ask; the webhook validates the secrets.phylax.dev/sync annotation and binds security profiles to new
pods; the node agent installs SeccompProfiles on the stand-in Node phylax-local. The tokenizer
serves only its admin endpoints.

Try next:
  export KUBECONFIG=$KUBECONFIG_FILE
  kubectl create secret generic demo --from-literal=password=s3cret
  ETCDCTL_API=3 $PHYLAX_CONTROL_PLANE_DIR/etcd/usr/bin/etcdctl --endpoints=http://127.0.0.1:\${ETCD_PORT:-12379} \\
    get /registry/secrets/default/demo --print-value-only | head -c 40; echo   # k8s:enc:kms:v1:phylax:...
  kubectl -n demo get secret app-config -o yaml; kubectl -n demo get events   # synced, SecretSynced
  kubectl get secretproviders                              # Ready, store kind
  kubectl -n default run nope --image=x --annotations='secrets.phylax.dev/sync={provider: demo-files, path: demo/config, secretName: s}'
  kubectl -n default get events | grep SecretSyncRefused   # default is not allowed by the provider
  kubectl run bad --image=busybox --annotations='secrets.phylax.dev/sync=provider: p'   # refused by the webhook
  kubectl get seccompprofiles; kubectl get profilenodestatuses   # Installed on phylax-local
  cat $STATE/kubelet/seccomp/phylax/demo-deny-mkdir.json   # the compiled profile's OCI JSON
  kubectl -n $NS get lease phylax-operator -o yaml        # who leads
  curl -s 127.0.0.1:9090/metrics | grep leader_is_leader   # 1 on the leader, 0 on the other
  curl -s 127.0.0.1:19090/metrics | grep leader_is_leader
  kill \$(cat $STATE/run/operator-a.pid)                   # graceful stop: the lease is handed over at once
  curl -s 127.0.0.1:9091/readyz; tail -f $STATE/logs/*.log
  scripts/down.sh                                          # stop everything
TXT

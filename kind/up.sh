#!/bin/bash
# Phylax on a kind cluster, for machines with Docker:
#   1. builds the image (the flake's with Nix, else the static binary + kind/Dockerfile);
#   2. creates the kind cluster and loads the image; every kubectl call below uses the cluster's
#      own kubeconfig (kind/.state/kubeconfig), never whatever context is current;
#   3. starts swtpm on the host for the KMS plugin's TPM provider, listening only on the kind
#      network's gateway (Docker Desktop: on loopback, reached as host.docker.internal);
#   4. starts the KMS plugin as a static pod on the control-plane node, then re-renders the API
#      server with the versioned kubeadm patch in kind/patches (EncryptionConfiguration → the
#      plugin's socket; the patch directory named in a copy of kind's kubeadm configuration) and
#      rewrites existing Secrets;
#   5. deploys every role from `phylax manifests`;
#   6. smoke test: a Secret stored in etcd with the k8s:enc:kms:v2:phylax prefix, and a secret
#      synced from a SecretProvider into the pod that asked for it.
# Re-runnable; kind/down.sh removes the cluster and swtpm. Needs: docker, kind, kubectl, swtpm.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
CLUSTER=phylax
NS=phylax-system
IMAGE=phylax:dev
STATE=$REPO/kind/.state
NODE=$CLUSTER-control-plane
T0=$(date +%s)
step() { echo "== [+$(( $(date +%s) - T0 ))s] $*"; }
for tool in docker kind kubectl swtpm; do
  command -v "$tool" >/dev/null || { echo "kind/up.sh needs $tool on the PATH" >&2; exit 1; }
done
mkdir -p "$STATE/node" "$STATE/swtpm"

step "image $IMAGE (every role: the static binary in kind/Dockerfile)"
if command -v nix >/dev/null; then
  nix build .#phylax-static -o "$STATE/phylax-static"
  BIN=$STATE/phylax-static/bin/phylax
else
  scripts/build-static.sh
  BIN=${CARGO_TARGET_DIR:-/var/tmp/phylax/target}/x86_64-unknown-linux-musl/release/phylax
fi
# install, not cp: the Nix store's copy is read-only, and a re-run replaces the previous one.
install -m 0755 "$BIN" "$STATE/phylax"
docker build -q -t "$IMAGE" -f kind/Dockerfile "$STATE" >/dev/null

step "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  # kind wants the mount's host path absolute.
  sed "s|hostPath: kind/.state/node|hostPath: $STATE/node|" kind/cluster.yaml > "$STATE/cluster.yaml"
  kind create cluster --config "$STATE/cluster.yaml" --wait 120s
fi
# This cluster's own kubeconfig: a re-run never writes into another cluster that happens to be
# the current context.
(umask 077 && kind get kubeconfig --name "$CLUSTER" > "$STATE/kubeconfig")
export KUBECONFIG=$STATE/kubeconfig
kubectl config current-context | grep -qx "kind-$CLUSTER" \
  || { echo "kind/up.sh: $KUBECONFIG does not select kind-$CLUSTER" >&2; exit 1; }
kind load docker-image "$IMAGE" --name "$CLUSTER"

# swtpm's TPM and control ports have no authentication: listen only where the node connects from.
# Linux: the kind network's gateway (the host's address on that bridge). Docker Desktop runs the
# containers in a VM and forwards host.docker.internal to the host's loopback.
if docker info -f '{{.OperatingSystem}}' 2>/dev/null | grep -qi 'docker desktop'; then
  SWTPM_BIND=${PHYLAX_SWTPM_BIND:-127.0.0.1}
  SWTPM_HOST=${PHYLAX_SWTPM_HOST:-host.docker.internal}
else
  SWTPM_BIND=${PHYLAX_SWTPM_BIND:-$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')}
  SWTPM_HOST=${PHYLAX_SWTPM_HOST:-$SWTPM_BIND}
fi
[ -n "$SWTPM_BIND" ] || { echo "kind/up.sh: no IPv4 gateway on the docker network 'kind'; set PHYLAX_SWTPM_BIND" >&2; exit 1; }

step "swtpm on the host ($SWTPM_BIND, TCP 2321/2322), state in $STATE/swtpm"
if pgrep -f "swtpm socket.*$STATE/swtpm" >/dev/null \
  && ! pgrep -f "swtpm socket.*$STATE/swtpm.*bindaddr=$SWTPM_BIND," >/dev/null && [ -f "$STATE/swtpm.pid" ]; then
  echo "   the swtpm of an earlier run listens elsewhere; restarting it on $SWTPM_BIND"
  kill "$(cat "$STATE/swtpm.pid")"
  for _ in $(seq 1 50); do pgrep -f "swtpm socket.*$STATE/swtpm" >/dev/null || break; sleep 0.1; done
fi
if ! pgrep -f "swtpm socket.*$STATE/swtpm" >/dev/null; then
  swtpm socket --tpm2 --tpmstate "dir=$STATE/swtpm" --server "type=tcp,port=2321,bindaddr=$SWTPM_BIND" \
    --ctrl "type=tcp,port=2322,bindaddr=$SWTPM_BIND" --flags not-need-init,startup-clear --daemon \
    --pid "file=$STATE/swtpm.pid"
fi

step "KMS plugin: static pod on $NODE, then the API server wired to it (kubeadm patch)"
cp kind/encryption.yaml "$STATE/node/encryption.yaml"
mkdir -p "$STATE/node/patches"
cp kind/patches/*.yaml "$STATE/node/patches/"
sed "s/SWTPM_HOST/$SWTPM_HOST/" kind/kms-plugin.yaml > "$STATE/node/kms-plugin.yaml"
# The secret the sealed KEK needs (--tpm-auth-file), made once on the node and root's alone: the
# plugin runs as root without capabilities, so it must own the file to read it.
docker exec "$NODE" sh -c 'test -s /etc/phylax-kms-auth/tpm-auth || (umask 077 && mkdir -p /etc/phylax-kms-auth && head -c 32 /dev/urandom > /etc/phylax-kms-auth/tpm-auth)'
docker exec "$NODE" cp /etc/phylax/kms-plugin.yaml /etc/kubernetes/manifests/phylax-kms-plugin.yaml
for _ in $(seq 1 120); do
  docker exec "$NODE" test -S /var/run/phylax-kms/kms.sock && break
  sleep 1
done
docker exec "$NODE" test -S /var/run/phylax-kms/kms.sock \
  || { echo "the KMS plugin did not start; kubectl -n kube-system logs phylax-kms-plugin-$NODE" >&2; exit 1; }
if ! docker exec "$NODE" grep -q encryption-provider-config /etc/kubernetes/manifests/kube-apiserver.yaml; then
  # kubeadm refuses --patches beside --config: the patch directory goes into a copy of kind's
  # configuration (mounted on the node at /etc/phylax).
  docker exec "$NODE" cat /kind/kubeadm.conf | kind/kubeadm-patches.sh /etc/phylax/patches > "$STATE/node/kubeadm.conf"
  docker exec "$NODE" kubeadm init phase control-plane apiserver --config /etc/phylax/kubeadm.conf >/dev/null
fi
for _ in $(seq 1 120); do
  kubectl get --raw '/readyz?verbose' 2>/dev/null | grep -q 'kms-providers ok' && break
  sleep 1
done
kubectl get --raw '/readyz?verbose' | grep -q 'kms-providers ok' \
  || { echo "the API server does not report its KMS provider healthy" >&2; exit 1; }
# Secrets written before the API server used the plugin: rewrite them so they are encrypted too.
kubectl get secrets --all-namespaces -o json | kubectl replace -f - >/dev/null

step "Phylax: every role from phylax manifests (image $IMAGE)"
"$STATE/phylax" manifests --namespace "$NS" --image "$IMAGE" \
  | sed 's/imagePullPolicy: .*/imagePullPolicy: Never/' \
  | kubectl apply --server-side --field-manager=phylax-kind -f - >/dev/null
kubectl -n "$NS" rollout status deployment/phylax-operator --timeout=180s
kubectl -n "$NS" rollout status deployment/phylax-webhook --timeout=180s
kubectl -n "$NS" rollout status daemonset/phylax-node-agent --timeout=180s

step "smoke test: a Secret encrypted in etcd"
kubectl create secret generic phylax-smoke --from-literal=value=planted-kind-value \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
stored=$(kubectl -n kube-system exec "etcd-$NODE" -- etcdctl \
  --cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/etcd/server.crt \
  --key /etc/kubernetes/pki/etcd/server.key get /registry/secrets/default/phylax-smoke \
  --print-value-only | head -c 22)
[ "$stored" = "k8s:enc:kms:v2:phylax:" ] || { echo "etcd holds '$stored', not a KMS v2 envelope" >&2; exit 1; }
echo "   etcd: $stored..."

step "smoke test: a synced secret (file store from a ConfigMap mounted into the operator)"
kubectl -n "$NS" create configmap phylax-demo-store --from-literal=config.json='{"GREETING":"hello from phylax"}' \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" patch deployment phylax-operator --type=strategic -p '{"spec":{"template":{"spec":{
  "volumes":[{"name":"demo-store","configMap":{"name":"phylax-demo-store"}}],
  "containers":[{"name":"operator","volumeMounts":[{"name":"demo-store","mountPath":"/var/phylax-demo"}]}]}}}}' >/dev/null
kubectl -n "$NS" rollout status deployment/phylax-operator --timeout=180s
kubectl apply --server-side --field-manager=phylax-kind -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: phylax-demo, labels: {phylax.dev/demo: "true"}}
---
apiVersion: secrets.phylax.dev/v1alpha1
kind: SecretProvider
metadata: {name: demo-files}
spec:
  file: {directory: /var/phylax-demo}
  namespaces: {selector: {matchLabels: {phylax.dev/demo: "true"}}}
  paths: [config]
YAML
kubectl -n phylax-demo delete pod app --ignore-not-found >/dev/null
kubectl -n phylax-demo run app --image=registry.k8s.io/pause:3.9 --restart=Never \
  --annotations='secrets.phylax.dev/sync={provider: demo-files, path: config, secretName: app-config}' >/dev/null
for _ in $(seq 1 60); do
  kubectl -n phylax-demo get secret app-config >/dev/null 2>&1 && break
  sleep 1
done
value=$(kubectl -n phylax-demo get secret app-config -o 'jsonpath={.data.GREETING}' | base64 -d)
[ "$value" = "hello from phylax" ] || { echo "the synced Secret holds '$value'" >&2; exit 1; }
echo "   Secret phylax-demo/app-config synced"

# A SeccompProfile: compiled and installed by the node agent on both nodes, bound by the webhook to
# a new pod, which the container runtime starts under it.
kubectl apply --server-side --field-manager=phylax-kind -f - >/dev/null <<YAML
apiVersion: profiles.phylax.dev/v1alpha1
kind: SeccompProfile
metadata: {name: demo-deny-mkdir}
spec:
  defaultAction: SCMP_ACT_ALLOW
  syscalls:
  - {names: [mkdir, mkdirat], action: SCMP_ACT_ERRNO, errnoRet: 13}
---
apiVersion: profiles.phylax.dev/v1alpha1
kind: ProfileBinding
metadata: {name: pause, namespace: phylax-demo}
spec:
  profileRef: {kind: SeccompProfile, name: demo-deny-mkdir}
  image: "registry.k8s.io/pause:*"
YAML
for _ in $(seq 1 60); do
  [ "$(kubectl get seccompprofile demo-deny-mkdir -o 'jsonpath={.status.state}')" = Installed ] && break
  sleep 1
done
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" test -s /var/lib/kubelet/seccomp/phylax/demo-deny-mkdir.json \
    || { echo "the profile is not installed on $node" >&2; exit 1; }
done
kubectl -n phylax-demo delete pod bound --ignore-not-found >/dev/null
kubectl -n phylax-demo run bound --image=registry.k8s.io/pause:3.9 --restart=Never >/dev/null
kubectl -n phylax-demo wait pod/bound --for=condition=Ready --timeout=120s >/dev/null
bound=$(kubectl -n phylax-demo get pod bound -o 'jsonpath={.spec.containers[0].securityContext.seccompProfile.localhostProfile}')
[ "$bound" = phylax/demo-deny-mkdir.json ] || { echo "the pod runs with seccomp profile '$bound'" >&2; exit 1; }
echo "   SeccompProfile demo-deny-mkdir installed on every node and bound to pod phylax-demo/bound"

step "done: export KUBECONFIG=$STATE/kubeconfig (or kubectl config use-context kind-$CLUSTER); kind/down.sh removes it all"

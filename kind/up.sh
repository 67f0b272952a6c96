#!/bin/bash
# Phylax on a kind cluster, for machines with Docker:
#   1. builds the image (the flake's with Nix, else the static binary + kind/Dockerfile);
#   2. starts swtpm on the host (TCP) for the KMS plugin's TPM provider;
#   3. creates the kind cluster, loads the image, starts the KMS plugin as a static pod on the
#      control-plane node, then re-renders the API server with the versioned kubeadm patch in
#      kind/patches (EncryptionConfiguration → the plugin's socket) and rewrites existing Secrets;
#   4. deploys every role from `phylax manifests`;
#   5. smoke test: a Secret stored in etcd with the k8s:enc:kms:v2:phylax prefix, and a secret
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

step "image $IMAGE"
if command -v nix >/dev/null; then
  # The flake's distroless image with every role (entrypoint phylax, role as first argument).
  nix build .#phylax-static -o "$STATE/phylax-static"
  BIN=$STATE/phylax-static/bin/phylax
else
  scripts/build-static.sh
  BIN=${CARGO_TARGET_DIR:-/var/tmp/phylax/target}/x86_64-unknown-linux-musl/release/phylax
fi
cp "$BIN" "$STATE/phylax"
docker build -q -t "$IMAGE" -f kind/Dockerfile "$STATE" >/dev/null

step "swtpm on the host (TCP 2321/2322), state in $STATE/swtpm"
if ! pgrep -f "swtpm socket.*$STATE/swtpm" >/dev/null; then
  swtpm socket --tpm2 --tpmstate "dir=$STATE/swtpm" --server type=tcp,port=2321,bindaddr=0.0.0.0 \
    --ctrl type=tcp,port=2322,bindaddr=0.0.0.0 --flags not-need-init,startup-clear --daemon \
    --pid "file=$STATE/swtpm.pid"
fi

step "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  # kind wants the mount's host path absolute.
  sed "s|hostPath: kind/.state/node|hostPath: $STATE/node|" kind/cluster.yaml > "$STATE/cluster.yaml"
  kind create cluster --config "$STATE/cluster.yaml" --wait 120s
fi
kind load docker-image "$IMAGE" --name "$CLUSTER"
# The node reaches the host's swtpm through the kind network's gateway.
SWTPM_HOST=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')

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
  docker exec "$NODE" kubeadm init phase control-plane apiserver --config /kind/kubeadm.conf \
    --patches /etc/phylax/patches >/dev/null
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

step "done: kubectl config use-context kind-$CLUSTER; kind/down.sh removes it all"

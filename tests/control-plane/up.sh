#!/bin/bash
# Start a real Kubernetes control plane (etcd + kube-apiserver [+ kube-controller-manager])
# bound to 127.0.0.1 only. Idempotent: refuses to start if already running.
#
# Usage: $CONTROL_PLANE_ROOT/up.sh [--reset] [--random-ports]
#   --reset          wipe etcd data (and certs) before starting
#   --random-ports   pick free loopback ports instead of the fixed defaults
#
# Environment knobs (all optional):
#   APISERVER_PORT=16443  ETCD_PORT=12379  ETCD_PEER_PORT=12380  KCM_PORT=16444
#   ENCRYPTION_PROVIDER_CONFIG=/path/enc.yaml  -> --encryption-provider-config (KMS v1 / aescbc / secretbox / aesgcm)
#   FEATURE_GATES=Foo=true,Bar=false           -> --feature-gates
#   APISERVER_EXTRA_ARGS="--v=4 --audit-log-path=..."   extra kube-apiserver flags (word-split)
#   KCM_EXTRA_ARGS="..."                        extra kube-controller-manager flags
#   ADMISSION_PLUGINS=...                       override --enable-admission-plugins
#   NO_KCM=1                                    do not start kube-controller-manager
#   ETCD_FSYNC=1                                keep etcd fsync (default: --unsafe-no-fsync for speed)
#   READY_TIMEOUT=90                            seconds to wait for /readyz
set -euo pipefail

ROOT=${CONTROL_PLANE_ROOT:-${PHYLAX_CONTROL_PLANE_DIR:-/var/tmp/phylax/control-plane}}
BIN=$ROOT/bin
RUN=$ROOT/run
PKI=$RUN/pki
LOGS=$RUN/logs
ETCD_BIN=$ROOT/etcd/usr/bin/etcd
KUBECONFIG_OUT=$ROOT/kubeconfig

RESET=0; RANDOM_PORTS=0
for a in "$@"; do
  case "$a" in
    --reset) RESET=1 ;;
    --random-ports) RANDOM_PORTS=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

# Webhook / KMS calls from the apiserver must never go through a proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

alive() { # alive NAME -> 0 if pidfile points at a live process of that binary
  local pf=$RUN/$1.pid pid exe
  [ -f "$pf" ] || return 1
  pid=$(cat "$pf"); [ -n "$pid" ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ "$exe" == *"/$1" ]]
}

for c in etcd kube-apiserver kube-controller-manager; do
  if alive $c; then echo "$c already running (pid $(cat "$RUN/$c.pid")); run $ROOT/down.sh first" >&2; exit 1; fi
done

if [ "$RESET" = 1 ]; then rm -rf "$RUN"; fi
mkdir -p "$RUN" "$PKI" "$LOGS"

freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
if [ "$RANDOM_PORTS" = 1 ]; then
  APISERVER_PORT=$(freeport); ETCD_PORT=$(freeport); ETCD_PEER_PORT=$(freeport); KCM_PORT=$(freeport)
fi
APISERVER_PORT=${APISERVER_PORT:-16443}
ETCD_PORT=${ETCD_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
KCM_PORT=${KCM_PORT:-16444}
SERVICE_CIDR=${SERVICE_CIDR:-10.0.0.0/24}
SERVICE_IP=${SERVICE_IP:-10.0.0.1}

portbusy() { python3 -c 'import socket,sys;s=socket.socket();sys.exit(0 if s.connect_ex(("127.0.0.1",int(sys.argv[1])))==0 else 1)' "$1"; }
for p in $APISERVER_PORT $ETCD_PORT $ETCD_PEER_PORT; do
  if portbusy "$p"; then echo "port 127.0.0.1:$p is already in use (try --random-ports)" >&2; exit 1; fi
done

# ---------------------------------------------------------------- certificates
gen_cert() { # name CN O SANs(ext string or "") [serverAuth|clientAuth|both]
  local n=$1 cn=$2 o=$3 san=$4 eku=$5 subj
  [ -f "$PKI/$n.crt" ] && return 0
  subj="/CN=$cn"; [ -n "$o" ] && subj="/O=$o/CN=$cn"
  openssl genrsa -out "$PKI/$n.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$n.key" -subj "$subj" -out "$PKI/$n.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    case $eku in
      serverAuth) echo "extendedKeyUsage=serverAuth" ;;
      clientAuth) echo "extendedKeyUsage=clientAuth" ;;
      both) echo "extendedKeyUsage=serverAuth,clientAuth" ;;
    esac
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$PKI/$n.ext"
  openssl x509 -req -in "$PKI/$n.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$n.ext" -out "$PKI/$n.crt" 2>/dev/null
  rm -f "$PKI/$n.csr" "$PKI/$n.ext"
}
if [ ! -f "$PKI/ca.crt" ]; then
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -nodes -key "$PKI/ca.key" -subj "/CN=realk8s-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
fi
if [ ! -f "$PKI/front-proxy-ca.crt" ]; then
  openssl genrsa -out "$PKI/front-proxy-ca.key" 2048 2>/dev/null
  openssl req -x509 -new -nodes -key "$PKI/front-proxy-ca.key" -subj "/CN=realk8s-front-proxy-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/front-proxy-ca.crt" 2>/dev/null
fi
gen_cert apiserver kube-apiserver "" \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP" serverAuth
gen_cert admin admin system:masters "" clientAuth
gen_cert kube-controller-manager system:kube-controller-manager "" "" clientAuth
# front-proxy client cert (signed by its own CA) so aggregated API servers / requestheader auth work
if [ ! -f "$PKI/front-proxy-client.crt" ]; then
  openssl genrsa -out "$PKI/front-proxy-client.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/front-proxy-client.key" -subj "/CN=front-proxy-client" -out "$PKI/fpc.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$PKI/fpc.ext"
  openssl x509 -req -in "$PKI/fpc.csr" -CA "$PKI/front-proxy-ca.crt" -CAkey "$PKI/front-proxy-ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/fpc.ext" -out "$PKI/front-proxy-client.crt" 2>/dev/null
  rm -f "$PKI/fpc.csr" "$PKI/fpc.ext"
fi
# service-account signing key pair
if [ ! -f "$PKI/sa.key" ]; then
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
# static bearer token (also system:masters) for tools that prefer tokens
if [ ! -f "$PKI/tokens.csv" ]; then
  ADMIN_TOKEN=$(openssl rand -hex 24)
  echo "$ADMIN_TOKEN,admin-token,admin-token-uid,system:masters" > "$PKI/tokens.csv"
fi
ADMIN_TOKEN=$(cut -d, -f1 "$PKI/tokens.csv")
chmod 600 "$PKI"/*.key "$PKI/tokens.csv"

# ---------------------------------------------------------------- kubeconfigs
b64() { base64 -w0 < "$1"; }
write_kubeconfig() { # out user cert key
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: realk8s
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
contexts:
- name: $2@realk8s
  context: {cluster: realk8s, user: $2}
current-context: $2@realk8s
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
EOF
  chmod 600 "$1"
}
write_kubeconfig "$KUBECONFIG_OUT" admin "$PKI/admin.crt" "$PKI/admin.key"
write_kubeconfig "$RUN/kcm.kubeconfig" kube-controller-manager "$PKI/kube-controller-manager.crt" "$PKI/kube-controller-manager.key"
# token-based kubeconfig variant
cat > "$ROOT/kubeconfig-token" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: realk8s
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
contexts:
- name: admin-token@realk8s
  context: {cluster: realk8s, user: admin-token}
current-context: admin-token@realk8s
users:
- name: admin-token
  user:
    token: $ADMIN_TOKEN
EOF
chmod 600 "$ROOT/kubeconfig-token"

# if anything below fails, stop whatever this script already started
# shellcheck disable=SC2154 # rc is assigned inside the trap
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "up.sh failed (rc=$rc); stopping started components" >&2; "$ROOT/down.sh" >&2; fi' EXIT

start() { # name logfile cmd...
  local n=$1 log=$2; shift 2
  setsid nohup "$@" >>"$log" 2>&1 < /dev/null &
  echo $! > "$RUN/$n.pid"
}

# ---------------------------------------------------------------- etcd
ETCD_ARGS=(
  --name realk8s --data-dir "$RUN/etcd-data"
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT"
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT"
  --initial-cluster "realk8s=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new
  --quota-backend-bytes 2147483648 --log-level warn
)
[ "${ETCD_FSYNC:-0}" = 1 ] || ETCD_ARGS+=(--unsafe-no-fsync)
start etcd "$LOGS/etcd.log" "$ETCD_BIN" "${ETCD_ARGS[@]}"
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break
  alive etcd || { echo "etcd died; see $LOGS/etcd.log" >&2; tail -20 "$LOGS/etcd.log" >&2; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$ETCD_PORT/health" >/dev/null || { echo "etcd not healthy" >&2; exit 1; }

# ---------------------------------------------------------------- kube-apiserver
DEFAULT_ADMISSION="NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,Priority,RuntimeClass,StorageObjectInUseProtection,PersistentVolumeClaimResize,CertificateApproval,CertificateSigning,CertificateSubjectRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota"
START_KCM=1
{ [ "${NO_KCM:-0}" = 1 ] || [ ! -x "$BIN/kube-controller-manager" ]; } && START_KCM=0
DISABLE_ADMISSION=""
# Without kube-controller-manager nobody creates ServiceAccount "default" + its token Secret, so the
# ServiceAccount admission plugin would reject every Pod: drop it in that case.
if [ "$START_KCM" = 0 ]; then
  DEFAULT_ADMISSION=${DEFAULT_ADMISSION/,ServiceAccount,/,}; DISABLE_ADMISSION=ServiceAccount
fi
# Flag values hold commas (admission plugin lists), not array separators.
# shellcheck disable=SC2054
APISERVER_ARGS=(
  --advertise-address=127.0.0.1 --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --insecure-port=0
  --etcd-servers="http://127.0.0.1:$ETCD_PORT"
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key"
  --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv"
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key"
  --service-account-issuer=https://kubernetes.default.svc.cluster.local --api-audiences=https://kubernetes.default.svc.cluster.local
  --service-cluster-ip-range="$SERVICE_CIDR"
  --authorization-mode=Node,RBAC
  --enable-admission-plugins="${ADMISSION_PLUGINS:-$DEFAULT_ADMISSION}"
  --allow-privileged=true
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group --requestheader-extra-headers-prefix=X-Remote-Extra-
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key"
  --enable-aggregator-routing=true
  --cert-dir="$RUN/apiserver-certs"
  --profiling=false
)
[ -n "$DISABLE_ADMISSION" ] && [ -z "${ADMISSION_PLUGINS:-}" ] && APISERVER_ARGS+=(--disable-admission-plugins="$DISABLE_ADMISSION")
[ -n "${ENCRYPTION_PROVIDER_CONFIG:-}" ] && APISERVER_ARGS+=(--encryption-provider-config="$ENCRYPTION_PROVIDER_CONFIG")
[ -n "${FEATURE_GATES:-}" ] && APISERVER_ARGS+=(--feature-gates="$FEATURE_GATES")
# shellcheck disable=SC2206
[ -n "${APISERVER_EXTRA_ARGS:-}" ] && APISERVER_ARGS+=(${APISERVER_EXTRA_ARGS})
start kube-apiserver "$LOGS/kube-apiserver.log" "$BIN/kube-apiserver" "${APISERVER_ARGS[@]}"

READY_TIMEOUT=${READY_TIMEOUT:-90}
CURL=(curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
ok=0
for _ in $(seq 1 $((READY_TIMEOUT * 2))); do
  if "${CURL[@]}" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1; then ok=1; break; fi
  alive kube-apiserver || { echo "kube-apiserver died; see $LOGS/kube-apiserver.log" >&2; tail -30 "$LOGS/kube-apiserver.log" >&2; exit 1; }
  sleep 0.5
done
[ "$ok" = 1 ] || { echo "kube-apiserver not ready after ${READY_TIMEOUT}s; see $LOGS/kube-apiserver.log" >&2; exit 1; }

# ---------------------------------------------------------------- kube-controller-manager (optional)
if [ "$START_KCM" = 1 ]; then
  KCM_ARGS=(
    --kubeconfig="$RUN/kcm.kubeconfig"
    --authentication-kubeconfig="$RUN/kcm.kubeconfig" --authorization-kubeconfig="$RUN/kcm.kubeconfig"
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 --cert-dir="$RUN/kcm-certs"
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt"
    --use-service-account-credentials=true --leader-elect=false
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key"
    --service-cluster-ip-range="$SERVICE_CIDR"
    --controllers='*,bootstrapsigner,tokencleaner'
  )
  # shellcheck disable=SC2206
  [ -n "${KCM_EXTRA_ARGS:-}" ] && KCM_ARGS+=(${KCM_EXTRA_ARGS})
  start kube-controller-manager "$LOGS/kube-controller-manager.log" "$BIN/kube-controller-manager" "${KCM_ARGS[@]}"
  sleep 1
  alive kube-controller-manager || { echo "kube-controller-manager died; see $LOGS/kube-controller-manager.log" >&2; tail -20 "$LOGS/kube-controller-manager.log" >&2; }
fi

cat > "$RUN/env" <<EOF
export KUBECONFIG=$KUBECONFIG_OUT
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
ETCD_URL=http://127.0.0.1:$ETCD_PORT
CA_FILE=$PKI/ca.crt
ADMIN_TOKEN=$ADMIN_TOKEN
EOF
echo "control plane up:"
echo "  kube-apiserver  https://127.0.0.1:$APISERVER_PORT  (pid $(cat "$RUN/kube-apiserver.pid"), log $LOGS/kube-apiserver.log)"
echo "  etcd            http://127.0.0.1:$ETCD_PORT  (pid $(cat "$RUN/etcd.pid"), log $LOGS/etcd.log)"
[ "$START_KCM" = 1 ] && echo "  kube-controller-manager  (pid $(cat "$RUN/kube-controller-manager.pid"), log $LOGS/kube-controller-manager.log)"
echo "  kubeconfig      $KUBECONFIG_OUT  (client cert, system:masters); token variant: $ROOT/kubeconfig-token"
echo "  CA              $PKI/ca.crt   vars: $RUN/env"

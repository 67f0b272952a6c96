#!/bin/bash
# Builds the test control plane from Debian's packages only, into $PHYLAX_CONTROL_PLANE_DIR
# (default /var/tmp/phylax/control-plane, outside the clone so CI and later runs reuse it):
#   - kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's kubernetes source
#     package (it ships vendor/), built with Debian's Go 1.19 in GOPATH mode, static;
#   - etcd 3.5.16 from trixie's etcd-server/etcd-client .debs, unpacked with dpkg -x.
# The recipe and its pitfalls are in the comments below. ~4.5 min on 2 cores, ~2 GB of disk.
# Usage: tests/control-plane/build.sh [--force]     (root: installs build dependencies with apt-get)
set -euo pipefail
PREFIX=${PHYLAX_CONTROL_PLANE_DIR:-/var/tmp/phylax/control-plane}
JOBS=${JOBS:-2}
K8S_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
ETCD_VERSION=3.5.16-4
have_all() { [ -x "$PREFIX/bin/kube-apiserver" ] && [ -x "$PREFIX/bin/kube-controller-manager" ] && [ -x "$PREFIX/etcd/usr/bin/etcd" ]; }
if [ "${1:-}" != "--force" ] && have_all; then
  echo "control plane binaries present in $PREFIX (use --force to rebuild)"
  exit 0
fi
T0=$(date +%s)
step() { echo "== [+$(( $(date +%s) - T0 ))s] $*"; }

step "apt: build dependencies"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  golang-go golang-github-modern-go-reflect2-dev rsync make dpkg-dev ca-certificates debian-archive-keyring >/dev/null

step "apt: private deb-src (bookworm) and trixie index under $PREFIX/apt"
mkdir -p "$PREFIX"/apt/{lists/partial,cache/archives/partial,sources.d} "$PREFIX"/{src,bin,debs,etcd,cache}
cat > "$PREFIX/apt/sources.d/phylax-cp.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
APTB=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$PREFIX/apt/sources.d"
      -o Dir::State::Lists="$PREFIX/apt/lists" -o Dir::Cache="$PREFIX/apt/cache" -o APT::Architectures::=amd64)
apt-get "${APTB[@]}" update -qq

step "kubernetes $K8S_SRC_VERSION source (with vendor/)"
cd "$PREFIX/src"
[ -f "kubernetes_${K8S_SRC_VERSION}.dsc" ] || apt-get "${APTB[@]}" source --download-only "kubernetes=$K8S_SRC_VERSION" >/dev/null 2>&1
SRC=$PREFIX/src/k8s-1.20.2
[ -d "$SRC" ] || dpkg-source -x "kubernetes_${K8S_SRC_VERSION}.dsc" "$SRC" >/dev/null 2>&1

step "patch: vendored reflect2 1.0.1 -> Debian's 1.0.2 (1.0.1 crashes on map iteration with Go >= 1.18)"
R=$SRC/vendor/github.com/modern-go/reflect2
if [ ! -f "$R/go_above_118.go" ]; then
  rm -f "$R"/*.go "$R"/*.s
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$R/"
fi

step "generate pkg/generated/openapi (not in the tarball)"
cd "$SRC"
if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
  rm -f _output/bin/openapi-gen
  make gen_openapi >/dev/null
fi

step "go build kube-apiserver, kube-controller-manager (GOPATH mode, CGO_ENABLED=0)"
export GOPATH=$PREFIX/cache/gopath GOCACHE=$PREFIX/cache/go-build GO111MODULE=off GOFLAGS='' CGO_ENABLED=0 GOPROXY=off
mkdir -p "$GOPATH/src/k8s.io"
[ -L "$GOPATH/src/k8s.io/kubernetes" ] || ln -s "$SRC" "$GOPATH/src/k8s.io/kubernetes"
LD="-s -w"
for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LD="$LD -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56 -X $p.gitTreeState=archive"
done
cd "$GOPATH/src/k8s.io/kubernetes"
for cmd in kube-apiserver kube-controller-manager; do
  go build -p "$JOBS" -trimpath -ldflags "$LD" -o "$PREFIX/bin/$cmd" "./cmd/$cmd"
done

step "etcd $ETCD_VERSION from trixie .debs (dpkg -x, not installed)"
cd "$PREFIX/debs"
apt-get "${APTB[@]}" download "etcd-server=$ETCD_VERSION" "etcd-client=$ETCD_VERSION" >/dev/null 2>&1
for d in etcd-server_*.deb etcd-client_*.deb; do dpkg -x "$d" "$PREFIX/etcd"; done

have_all
step "done: $("$PREFIX/bin/kube-apiserver" --version), $("$PREFIX/etcd/usr/bin/etcd" --version | head -1)"

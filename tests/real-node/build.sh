#!/bin/bash
# Builds the test node's binaries into $PHYLAX_REAL_NODE_DIR (default /var/tmp/phylax/real-node,
# outside the clone so CI and later runs reuse it):
#   - kubelet, kube-scheduler and kube-proxy v1.20.2 from the same Debian source tree the control
#     plane is built from (tests/control-plane/build.sh, which must have run), reusing its GOPATH and
#     GOCACHE, so the shared packages are compiled once; `providerless` drops the cloud providers;
#   - pause from that tree's build/pause/linux/pause.c (static), the pod sandbox's only process.
# containerd, runc, the CNI plugins and busybox come from Debian packages (scripts/setup.sh).
# Usage: tests/real-node/build.sh [--force]
set -euo pipefail
CP=${PHYLAX_CONTROL_PLANE_DIR:-/var/tmp/phylax/control-plane}
PREFIX=${PHYLAX_REAL_NODE_DIR:-/var/tmp/phylax/real-node}
JOBS=${JOBS:-2}
CMDS=(kubelet kube-scheduler kube-proxy)
have_all() {
  for c in "${CMDS[@]}" pause; do [ -x "$PREFIX/bin/$c" ] || return 1; done
}
if [ "${1:-}" != "--force" ] && have_all; then
  echo "real-node binaries present in $PREFIX (use --force to rebuild)"
  exit 0
fi
T0=$(date +%s)
step() { echo "== [+$(( $(date +%s) - T0 ))s] $*"; }
[ -d "$CP/cache/gopath/src/k8s.io/kubernetes" ] || { echo "error: run tests/control-plane/build.sh first" >&2; exit 1; }
mkdir -p "$PREFIX/bin"

export GOPATH=$CP/cache/gopath GOCACHE=$CP/cache/go-build GO111MODULE=off GOFLAGS='' CGO_ENABLED=0 GOPROXY=off
# The same version stamps as the control plane (no build date: the same tree gives the same binary).
LD="-s -w"
for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LD="$LD -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56 -X $p.gitTreeState=archive"
done
cd "$GOPATH/src/k8s.io/kubernetes"
for cmd in "${CMDS[@]}"; do
  step "go build $cmd"
  go build -p "$JOBS" -trimpath -tags providerless -ldflags "$LD" -o "$PREFIX/bin/$cmd" "./cmd/$cmd"
done

step "pause (static, from build/pause/linux/pause.c)"
gcc -Os -Wall -Werror -static -DVERSION=v3.4-phylax -o "$PREFIX/bin/pause" build/pause/linux/pause.c

have_all
step "done: $("$PREFIX/bin/kubelet" --version)"

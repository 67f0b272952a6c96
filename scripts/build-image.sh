#!/bin/bash
# Builds Phylax's container image without Docker or Nix, as an OCI archive `ctr images import`
# (or `skopeo copy oci-archive:`) reads: the static musl binary as entrypoint, the CA bundle,
# /etc/passwd and /etc/group naming the non-root user 65532, a sticky /tmp — the contents of the
# flake's image. Deterministic: the same binary gives the same digest (printed last).
# Usage: scripts/build-image.sh OUT.tar [REF]     (REF default phylax:<version>)
#   PHYLAX_STATIC_BIN: the binary (default: what scripts/build-static.sh builds)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: scripts/build-image.sh OUT.tar [REF]}
BIN=${PHYLAX_STATIC_BIN:-${CARGO_TARGET_DIR:-/var/tmp/phylax/target}/x86_64-unknown-linux-musl/release/phylax}
[ -x "$BIN" ] || { echo "error: $BIN is missing: run scripts/build-static.sh" >&2; exit 1; }
VERSION=$("$BIN" version --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
REF=${2:-phylax:$VERSION}
CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] || { echo "error: $CA is missing (apt-get install ca-certificates)" >&2; exit 1; }
python3 "$REPO/tests/real-node/ociimage.py" "$OUT" "$REF" \
  --file "$BIN:usr/bin/phylax:0755" \
  --file "$CA:etc/ssl/certs/ca-certificates.crt:0644" \
  --text 'etc/passwd:0644:nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' \
  --text 'etc/group:0644:nonroot:x:65532:\n' \
  --dir tmp:1777 \
  --entrypoint '["/usr/bin/phylax"]' --user 65532:65532 \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --label org.opencontainers.image.title=phylax --label "org.opencontainers.image.version=$VERSION"

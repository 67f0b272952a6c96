#!/bin/bash
# Writes the real node's images as OCI archives into OUTDIR, each deterministic (ociimage.py):
#   pause.tar    localhost/pause:3.4-phylax    the pod sandbox (tests/real-node/build.sh builds pause)
#   busybox.tar  localhost/busybox:test        Debian's static busybox with a link per applet
#   phylax.tar   localhost/phylax:test         scripts/build-image.sh (needs the static binary)
# Usage: tests/real-node/images.sh OUTDIR
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: images.sh OUTDIR}
NODE=${PHYLAX_REAL_NODE_DIR:-/var/tmp/phylax/real-node}
mkdir -p "$OUT"
python3 "$HERE/ociimage.py" "$OUT/pause.tar" localhost/pause:3.4-phylax \
  --file "$NODE/bin/pause:pause:0755" --entrypoint '["/pause"]' >/dev/null
links=()
# The list names busybox itself, which a link would replace.
for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || links+=(--symlink "bin/$applet:busybox"); done
python3 "$HERE/ociimage.py" "$OUT/busybox.tar" localhost/busybox:test \
  --file /bin/busybox:bin/busybox:0755 "${links[@]}" --dir tmp:1777 --cmd '["sh"]' >/dev/null
"$HERE/../../scripts/build-image.sh" "$OUT/phylax.tar" localhost/phylax:test >/dev/null
ls "$OUT"/{pause,busybox,phylax}.tar

#!/bin/bash
# Builds the static musl `phylax` binary without Nix: the same binary the flake's `phylax-static`
# package builds, from Debian's source packages for the C libraries.
#   - rustup target x86_64-unknown-linux-musl, musl-gcc (musl-tools);
#   - mbedTLS 2.28 (bookworm source), static, as tpm2-tss's crypto backend;
#   - tpm2-tss 4.1 (trixie source) built with --enable-nodl: a static binary cannot dlopen() its
#     TCTI modules, so the device and swtpm TCTIs are linked in (the others are left out, as every
#     TCTI library defines the same Tss2_Tcti_Info symbol).
#   - libseccomp 2.5 (bookworm source), static, for the node agent's profile compiler.
# The C libraries go to $PHYLAX_STATIC_PREFIX (default /var/tmp/phylax/static, built once); the
# binary to $CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/phylax.
# Usage: scripts/build-static.sh [cargo feature arguments, default: all roles]
#   e.g. scripts/build-static.sh --no-default-features --features operator
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PHYLAX_STATIC_PREFIX:-/var/tmp/phylax/static}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/phylax/target}
TARGET=x86_64-unknown-linux-musl
JOBS=${JOBS:-2}
T0=$(date +%s)
step() { echo "== [+$(( $(date +%s) - T0 ))s] $*"; }

if [ ! -f "$PREFIX/lib/libtss2-esys.a" ] || [ ! -f "$PREFIX/lib/libseccomp.a" ]; then
  step "apt: musl-gcc and build tools"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      musl-tools pkg-config make autoconf automake libtool libltdl-dev autoconf-archive dpkg-dev gperf \
      ca-certificates debian-archive-keyring >/dev/null
  fi

  step "apt: private deb-src index (bookworm, trixie) under $PREFIX/apt"
  mkdir -p "$PREFIX"/apt/{lists/partial,cache/archives/partial,sources.d} "$PREFIX"/{src,include,lib}
  cat > "$PREFIX/apt/sources.d/phylax-static.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APTB=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$PREFIX/apt/sources.d"
        -o Dir::State::Lists="$PREFIX/apt/lists" -o Dir::Cache="$PREFIX/apt/cache")
  apt-get "${APTB[@]}" update -qq

  # musl-gcc sees only musl's headers; the kernel headers some C code wants come from the host.
  MUSL_KERNEL=$PREFIX/kernel-headers
  mkdir -p "$MUSL_KERNEL"
  for d in /usr/include/linux /usr/include/asm-generic /usr/include/x86_64-linux-gnu/asm; do
    ln -sfn "$d" "$MUSL_KERNEL/$(basename "$d")"
  done
  export CC=musl-gcc CFLAGS="-O2 -fPIC -I$PREFIX/include -idirafter $MUSL_KERNEL" LDFLAGS="-L$PREFIX/lib"

  if [ ! -f "$PREFIX/lib/libtss2-esys.a" ]; then
  step "mbedTLS (bookworm source), static"
  cd "$PREFIX/src"
  [ -d mbedtls-2.28.3 ] || apt-get "${APTB[@]}" source mbedtls=2.28.3-1 >/dev/null 2>&1
  cd "$PREFIX/src/mbedtls-2.28.3"
  make -s -j"$JOBS" -C library CC=musl-gcc CFLAGS="$CFLAGS" static >/dev/null
  cp library/libmbedcrypto.a library/libmbedtls.a library/libmbedx509.a "$PREFIX/lib/"
  cp -r include/mbedtls "$PREFIX/include/"

  step "tpm2-tss (trixie source), static, no dlopen, device + swtpm TCTIs"
  cd "$PREFIX/src"
  [ -d tpm2-tss-4.1.3 ] || apt-get "${APTB[@]}" source tpm2-tss=4.1.3-1.2 >/dev/null 2>&1
  cd "$PREFIX/src/tpm2-tss-4.1.3"
  # Debian's source is the git tree: its bootstrap generates the file lists and runs autoreconf.
  [ -f install-sh ] || ./bootstrap >/dev/null 2>&1
  ./configure -q --prefix="$PREFIX" --enable-static --disable-shared --enable-nodl --with-crypto=mbed \
    --disable-fapi --disable-policy --disable-doxygen-doc --disable-unit --disable-integration \
    --disable-tcti-mssim --disable-tcti-cmd --disable-tcti-pcap --disable-tcti-libtpms \
    --disable-tcti-spi-helper --disable-tcti-spi-ltt2go --disable-tcti-spidev --disable-tcti-spi-ftdi \
    --disable-tcti-i2c-helper --disable-tcti-i2c-ftdi \
    --with-udevrulesdir="$PREFIX/udev" --with-runstatedir="$PREFIX/run" --with-sysusersdir="$PREFIX/sysusers" \
    --with-tmpfilesdir="$PREFIX/tmpfiles"
  make -s -j"$JOBS" >/dev/null
  make -s install >/dev/null
  # With --enable-nodl the TCTI loader inside libtss2-esys calls the TCTIs directly: name them
  # so a static link (pkg-config --static) pulls them in after it. Each TCTI also exports
  # Tss2_Tcti_Info (the entry point dlopen() would look up): kept local, two TCTIs link together.
  grep -q tss2-tcti-swtpm "$PREFIX/lib/pkgconfig/tss2-esys.pc" \
    || sed -i 's/^Requires.private: \(.*\)$/Requires.private: \1 tss2-tcti-device tss2-tcti-swtpm/' \
      "$PREFIX/lib/pkgconfig/tss2-esys.pc"
  for tcti in device swtpm; do
    objcopy --localize-symbol=Tss2_Tcti_Info "$PREFIX/lib/libtss2-tcti-$tcti.a"
  done
  fi

  if [ ! -f "$PREFIX/lib/libseccomp.a" ]; then
    step "libseccomp (bookworm source), static"
    cd "$PREFIX/src"
    ls -d libseccomp-2.5.4 >/dev/null 2>&1 || apt-get "${APTB[@]}" source libseccomp/bookworm >/dev/null 2>&1
    cd "$PREFIX/src/libseccomp-2.5.4"
    ./configure -q --prefix="$PREFIX" --enable-static --disable-shared --disable-python
    make -s -j"$JOBS" -C src >/dev/null
    make -s -C src install >/dev/null
    make -s -C include install >/dev/null
  fi
  unset CC CFLAGS LDFLAGS
fi

step "rustup target $TARGET"
rustup target add "$TARGET" >/dev/null 2>&1 || true

step "cargo build --release --target $TARGET ${*:-(all roles)}"
cd "$REPO"
export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_ALL_STATIC=1 PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig PKG_CONFIG_LIBDIR=$PREFIX/lib/pkgconfig
export CC_x86_64_unknown_linux_musl=musl-gcc
# libseccomp-sys links the static library from here instead of asking pkg-config.
export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$PREFIX/lib
cargo build --release --locked --target "$TARGET" "$@"
BIN=$CARGO_TARGET_DIR/$TARGET/release/phylax
file "$BIN"
echo "   $(stat -c %s "$BIN") bytes"
step "done: $BIN"

#!/bin/bash
# Runs every fuzz target for a while (default 20 s each) with cargo-fuzz (libFuzzer + ASan).
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
# Each target starts from fuzz/corpus/<target>/, kept in the repository, so every run replays what
# earlier runs found; a crash is kept under fuzz/artifacts/<target>/ and fails the run: once fixed,
# copy the input into the target's corpus so every later run checks it again. New inputs a run finds
# land in the corpus; `cargo fuzz cmin <target>` before committing them keeps it small.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-20}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/phylax/target}-fuzz
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
for target in $(cargo fuzz list); do
  echo "== fuzz $target (${SECONDS_EACH}s)"
  cargo fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|thread)" || true
  # libFuzzer exits non-zero on a crash; pipefail is defeated by grep, so check artifacts.
  if compgen -G "fuzz/artifacts/$target/crash-*" >/dev/null; then
    echo "error: fuzz target $target crashed; inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done

#!/bin/bash
# The test command: formatting, lints, each role built alone, then unit tests and integration tests
# against a real kube-apiserver + etcd started by the harness (or the cluster in
# PHYLAX_TEST_KUBECONFIG). Cargo's target dir lives outside the clone so later runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/phylax/target}
export CARGO_TERM_COLOR=never
T0=$(date +%s)
step() { echo; echo "== [+$(( $(date +%s) - T0 ))s] $*"; }

step "setup"
scripts/setup.sh

step "packaging: every Nix file parses, every shell script passes shellcheck"
for f in flake.nix modules/*.nix nixos/*.nix; do
  nix-instantiate --parse "$f" >/dev/null 2>"${TMPDIR:-/tmp}/nix-parse.err" \
    || { cat "${TMPDIR:-/tmp}/nix-parse.err" >&2; echo "error: $f does not parse" >&2; exit 1; }
done
/var/tmp/phylax/venv/bin/shellcheck scripts/*.sh kind/*.sh tests/control-plane/*.sh tests/real-node/*.sh benches/*.sh
echo "   ok"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --all-features -D warnings"
cargo clippy --all-targets --all-features -- -D warnings

step "each role builds alone and contains only itself"
for role in operator webhook kms-plugin node-agent tokenizer; do
  cargo build -q --no-default-features --features "$role"
  roles=$("$CARGO_TARGET_DIR/debug/phylax" version --output json | python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["roles"]))')
  if [ "$roles" != "$role" ]; then
    echo "error: a build with only '$role' reports roles '$roles'" >&2
    exit 1
  fi
  other=$(for r in operator webhook kms-plugin node-agent tokenizer; do [ "$r" = "$role" ] || echo "$r"; done | head -1)
  if "$CARGO_TARGET_DIR/debug/phylax" "$other" --help >/dev/null 2>&1; then
    echo "error: a build with only '$role' still runs '$other'" >&2
    exit 1
  fi
  echo "   $role: ok"
done

step "each KMS provider builds alone with the kms-plugin role"
for provider in tpm vault aws; do
  cargo build -q --no-default-features --features "kms-plugin,$provider"
  "$CARGO_TARGET_DIR/debug/phylax" kms-plugin --help | grep -q -- "- $provider:" \
    || { echo "error: a kms-plugin,$provider build does not offer --provider $provider" >&2; exit 1; }
  echo "   kms-plugin,$provider: ok"
done

step "static musl binary (scripts/build-static.sh; C libraries cached in /var/tmp/phylax/static)"
scripts/build-static.sh
export PHYLAX_STATIC_BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/phylax

step "fuzz: each target replays its corpus (fuzz/corpus, kept in the repository) and runs ${PHYLAX_FUZZ_SECONDS:-10}s"
scripts/fuzz.sh "${PHYLAX_FUZZ_SECONDS:-10}"

step "cargo test (unit, CLI, real control plane)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-features --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
step "the static binary: static, every role starts, TPM through the linked-in TCTI"
cargo test --all-features --test kms static_binary -- --ignored 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
set -e
count() { grep -E '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
passed=$(count passed)
failed=$(count failed)

step "done in $(( $(date +%s) - T0 ))s"
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit "$rc"

# The Rust toolchain from rust-overlay at the locked revision, with the musl target for static
# builds, rustfmt and clippy for the checks: the same Rust as the project's CI machines (1.95.0;
# Phylax needs 1.89 or later). The locked rust-overlay (2026-07-24) knows it.
{ pkgs }:
pkgs.rust-bin.stable."1.95.0".default.override {
  extensions = [ "rustfmt" "clippy" ];
  targets = [ "x86_64-unknown-linux-musl" ];
}

# `nix develop`: the toolchain and what the tests and the kind cluster use.
{ pkgs }:
pkgs.mkShell {
  packages = [
    (import ./toolchain.nix { inherit pkgs; })
    pkgs.cargo-nextest
    pkgs.pkg-config
    pkgs.tpm2-tss
    pkgs.libseccomp
    pkgs.kind
    pkgs.kubectl
    pkgs.swtpm
    pkgs.tpm2-tools
    pkgs.etcd
    pkgs.grpcurl
    pkgs.shellcheck
  ];
}

{
  description = "Phylax: Kubernetes data protection (KMS plugin, secret sync, security profiles) in one static Rust binary";

  inputs = {
    # nixos-unstable as of 2026-07-23, pinned by revision (flake.lock holds its narHash).
    nixpkgs.url = "github:NixOS/nixpkgs/e2587caef70cea85dd97d7daab492899902dbf5d";
    crane.url = "github:ipetkov/crane";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, crane, rust-overlay }:
    let
      # Static musl builds are made for x86_64 Linux (the platform the project is tested on).
      systems = [ "x86_64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ rust-overlay.overlays.default ];
      }));
      # `src` must be a path: crane's lib.fileset functions refuse the string-like `self`. The
      # commit travels separately (only the final binaries see it, not the dependency builds).
      build = pkgs: import ./modules/packages.nix {
        inherit pkgs crane;
        src = ./.;
        commit = self.shortRev or self.dirtyShortRev or "unknown";
      };
    in
    {
      packages = forAllSystems (pkgs: (build pkgs).packages);
      checks = forAllSystems (pkgs: (build pkgs).checks // {
        nixos-kms = import ./nixos/test.nix { inherit pkgs; phylaxModule = self.nixosModules.default; phylax = (build pkgs).packages.phylax-static; };
      });
      devShells = forAllSystems (pkgs: { default = import ./modules/devshell.nix { inherit pkgs; }; });
      nixosModules.default = import ./nixos/module.nix { inherit self; };
      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}

# `import nixpkgs { system; overlays; }` for tests/nix/eval.nix: packages are records of what they
# were built from, so the test can read the arguments each output passes.
{ system ? "x86_64-linux", overlays ? [ ] }:
let
  lib = import ../stub-lib.nix;
  drv = name: extra: { outPath = "/nix/store/stub-${name}"; inherit name; } // extra;
  stdenv = { cc = drv "cc" { targetPrefix = ""; bintools.bintools = drv "bintools" { }; }; hostPlatform.system = system; };
  overridable = name: drv name { overrideAttrs = f: drv "${name}-overridden" { }; lib = drv "${name}-lib" { }; };
  pkgs = {
    inherit lib stdenv;
    pkgsStatic = { inherit stdenv; tpm2-tss = overridable "tpm2-tss-static"; openssl = drv "openssl-static" { }; libseccomp = overridable "libseccomp-static"; };
    rust-bin.stable."1.95.0".default.override = args: drv "rust-1.95.0" { inherit args; };
    dockerTools.streamLayeredImage = args: drv "image-${args.name}" { kind = "image"; inherit args; };
    runCommand = name: env: script: drv name { inherit script; };
    writeText = name: text: drv name { inherit text; };
    writeShellScript = name: text: drv name { inherit text; };
    testers.runNixOSTest = args: args;
    mkShell = args: drv "shell" { inherit args; };
    nixpkgs-fmt = drv "nixpkgs-fmt" { };
  } // lib.genAttrs [ "cacert" "coreutils" "curl" "apparmor-parser" "etcd" "kubectl" "tpm2-tools"
    "tpm2-tss" "libseccomp" "openssl" "pkg-config" "cargo-nextest" "kind" "swtpm" "grpcurl" "shellcheck" ]
    (n: drv n { });
in
pkgs

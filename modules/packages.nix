# Phylax's packages, images and checks, built with crane.
#
# - phylax-static: every role, a static musl binary (the C libraries from nixpkgs' static set);
# - phylax-<role>: one role each (`--no-default-features --features <role>`; the kms-plugin with
#   its tpm, vault and aws providers);
# - image: a distroless OCI image `phylax:<version>` with every role, the image `phylax manifests`
#   names by default (streamed: `nix build .#image && ./result | docker load`);
# - image-<role>: a distroless image `phylax-<role>:<version>` holding one role, for
#   `phylax manifests --<role>-image`;
# - manifests: `phylax manifests` and `phylax crd`, rendered by running the built binary.
# Each binary has its own dependency-only derivation (crane's buildDepsOnly), so a change to
# Phylax's code does not rebuild its dependencies; the git commit reaches only the final builds,
# so a new commit does not rebuild them either.
#
# `src` must be a path (crane's fileset functions refuse strings); `commit` is the flake's revision.
{ pkgs, crane, src, commit ? "unknown" }:
let
  lib = pkgs.lib;
  toolchain = import ./toolchain.nix { inherit pkgs; };
  craneLib = (crane.mkLib pkgs).overrideToolchain (_: toolchain);
  static = pkgs.pkgsStatic;
  version = (craneLib.crateNameFromCargoToml { cargoToml = src + "/Cargo.toml"; }).version;

  # tpm2-tss normally dlopen()s its TCTI modules; a static binary cannot, so they are linked in.
  # Only the device and swtpm TCTIs: every TCTI library defines the same Tss2_Tcti_Info symbol.
  tpm2-tss = static.tpm2-tss.overrideAttrs (old: {
    configureFlags = (old.configureFlags or [ ]) ++ [
      "--enable-nodl"
      "--disable-fapi"
      "--disable-policy"
      "--disable-tcti-mssim"
      "--disable-tcti-cmd"
      "--disable-tcti-pcap"
      "--disable-tcti-libtpms"
      "--disable-tcti-spi-helper"
      "--disable-tcti-spi-ltt2go"
      "--disable-tcti-spidev"
      "--disable-tcti-i2c-helper"
    ];
    # The TCTI loader inside libtss2-esys now calls the TCTIs directly: name them for static
    # links, and keep each TCTI's Tss2_Tcti_Info (dlopen's entry point) local so two link together.
    postInstall = (old.postInstall or "") + ''
      sed -i 's/^Requires.private: \(.*\)$/Requires.private: \1 tss2-tcti-device tss2-tcti-swtpm/' \
        ''${dev:-$out}/lib/pkgconfig/tss2-esys.pc
      for tcti in device swtpm; do
        ${static.stdenv.cc.bintools.bintools}/bin/${static.stdenv.cc.targetPrefix}objcopy \
          --localize-symbol=Tss2_Tcti_Info $out/lib/libtss2-tcti-$tcti.a
      done
    '';
    doCheck = false;
  });

  # Cargo sources plus what build.rs and the manifest's targets read.
  source = lib.fileset.toSource {
    root = src;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources src)
      (src + "/proto")
      (src + "/tests")
      (src + "/benches")
      (src + "/deploy")
    ];
  };

  muslCc = "${static.stdenv.cc}/bin/${static.stdenv.cc.targetPrefix}cc";
  staticArgs = {
    pname = "phylax";
    inherit version;
    src = source;
    strictDeps = true;
    doCheck = false;
    CARGO_BUILD_TARGET = "x86_64-unknown-linux-musl";
    CARGO_BUILD_RUSTFLAGS = "-C target-feature=+crt-static";
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER = muslCc;
    CC_x86_64_unknown_linux_musl = muslCc;
    HOST_CC = "${pkgs.stdenv.cc}/bin/cc";
    PKG_CONFIG_ALL_STATIC = "1";
    PKG_CONFIG_ALLOW_CROSS = "1";
    nativeBuildInputs = [ pkgs.pkg-config ];
    # libseccomp is for the node agent's profile compiler; libseccomp-sys links it statically
    # from here rather than through pkg-config.
    buildInputs = [ tpm2-tss static.openssl static.libseccomp ];
    LIBSECCOMP_LINK_TYPE = "static";
    LIBSECCOMP_LIB_PATH = "${lib.getLib static.libseccomp}/lib";
  };

  # build.rs embeds the commit; only builds of Phylax's own code get it (see the header).
  withCommit = args: args // { PHYLAX_GIT_COMMIT = commit; };

  roles = [ "operator" "webhook" "kms-plugin" "node-agent" "tokenizer" ];
  # A role's cargo features: the KMS plugin's providers are features of their own, and its image is
  # the one meant for TPMs, Vault and AWS KMS.
  roleFeatures = role: if role == "kms-plugin" then "kms-plugin,tpm,vault,aws" else role;

  binary = name: features:
    let
      args = staticArgs // {
        pname = name;
        cargoExtraArgs = "--locked --bin phylax ${features}";
      };
    in
    craneLib.buildPackage (withCommit args // {
      cargoArtifacts = craneLib.buildDepsOnly args;
      meta.mainProgram = "phylax";
    });

  phylax-static = binary "phylax" "";
  perRole = lib.genAttrs roles (role: binary "phylax-${role}" "--no-default-features --features ${roleFeatures role}");

  # Distroless: the binary, CA certificates, a passwd/group naming the non-root user, nothing else.
  # `role` null: the all-roles image `phylax`, whose containers name the role as first argument.
  image = role: bin: let name = if role == null then "phylax" else "phylax-${role}"; in
  pkgs.dockerTools.streamLayeredImage {
    inherit name;
    tag = version;
    contents = [ pkgs.cacert ];
    extraCommands = ''
      mkdir -p etc tmp
      chmod 1777 tmp
      echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > etc/passwd
      echo 'nonroot:x:65532:' > etc/group
    '';
    config = {
      # `phylax <role>` by default; the manifests' containers pass the role as their first
      # argument, which replaces Cmd.
      Entrypoint = [ "${bin}/bin/phylax" ];
      Cmd = if role == null then [ "--help" ] else [ role ];
      User = "65532:65532";
      Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ];
      Labels = {
        "org.opencontainers.image.title" = name;
        "org.opencontainers.image.version" = version;
        "org.opencontainers.image.revision" = commit;
      };
    };
  };

  manifests = pkgs.runCommand "phylax-manifests-${version}" { } ''
    mkdir -p $out
    ${phylax-static}/bin/phylax manifests > $out/phylax.yaml
    ${phylax-static}/bin/phylax crd > $out/crds.yaml
  '';

  # Checks run on the host target (glibc), with Debian-free system libraries from nixpkgs.
  hostArgs = {
    pname = "phylax";
    inherit version;
    src = source;
    strictDeps = true;
    nativeBuildInputs = [ pkgs.pkg-config ];
    buildInputs = [ pkgs.tpm2-tss pkgs.libseccomp pkgs.openssl ];
  };
  hostArtifacts = craneLib.buildDepsOnly hostArgs;
in
{
  packages = {
    default = phylax-static;
    inherit phylax-static manifests;
    image = image null phylax-static;
  }
  // lib.mapAttrs' (role: bin: lib.nameValuePair "phylax-${role}" bin) perRole
  // lib.mapAttrs' (role: bin: lib.nameValuePair "image-${role}" (image role bin)) perRole;

  checks = {
    inherit phylax-static;
    fmt = craneLib.cargoFmt { inherit (hostArgs) pname version src; };
    clippy = craneLib.cargoClippy (withCommit hostArgs // {
      cargoArtifacts = hostArtifacts;
      cargoClippyExtraArgs = "--all-targets --all-features -- -D warnings";
    });
    # Unit tests; the integration tests need a control plane and run in scripts/test.sh.
    unit-tests = craneLib.cargoTest (withCommit hostArgs // {
      cargoArtifacts = hostArtifacts;
      cargoTestExtraArgs = "--lib --bins";
    });
    manifest-drift = pkgs.runCommand "phylax-manifest-drift" { } ''
      diff -u ${source}/deploy/phylax.yaml ${manifests}/phylax.yaml
      diff -u ${source}/deploy/crds.yaml ${manifests}/crds.yaml
      touch $out
    '';
  };
}

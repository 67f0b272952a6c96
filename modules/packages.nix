# Phylax's packages, images and checks, built with crane.
#
# - phylax-static: every role, a static musl binary (the C libraries from nixpkgs' static set);
# - phylax-<role>: one role each (`--no-default-features --features <role>`);
# - image-<role>: a distroless OCI image per role (streamed: `nix build .#image-operator && ./result | docker load`);
# - manifests: `phylax manifests` and `phylax crd`, rendered by running the built binary.
# Each binary has its own dependency-only derivation (crane's buildDepsOnly), so a change to
# Phylax's code does not rebuild its dependencies.
{ pkgs, crane, src }:
let
  lib = pkgs.lib;
  toolchain = import ./toolchain.nix { inherit pkgs; };
  craneLib = (crane.mkLib pkgs).overrideToolchain (_: toolchain);
  static = pkgs.pkgsStatic;
  version = (craneLib.crateNameFromCargoToml { cargoToml = src + "/Cargo.toml"; }).version;
  commit = src.shortRev or src.dirtyShortRev or "unknown";

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
    PHYLAX_GIT_COMMIT = commit;
    nativeBuildInputs = [ pkgs.pkg-config ];
    # libseccomp is for the node agent's profile compiler; libseccomp-sys links it statically
    # from here rather than through pkg-config.
    buildInputs = [ tpm2-tss static.openssl static.libseccomp ];
    LIBSECCOMP_LINK_TYPE = "static";
    LIBSECCOMP_LIB_PATH = "${lib.getLib static.libseccomp}/lib";
  };

  roles = [ "operator" "webhook" "kms-plugin" "node-agent" "tokenizer" ];

  binary = name: features:
    let
      args = staticArgs // {
        pname = name;
        cargoExtraArgs = "--locked --bin phylax ${features}";
      };
    in
    craneLib.buildPackage (args // {
      cargoArtifacts = craneLib.buildDepsOnly args;
      meta.mainProgram = "phylax";
    });

  phylax-static = binary "phylax" "";
  perRole = lib.genAttrs roles (role: binary "phylax-${role}" "--no-default-features --features ${role}");

  # Distroless: the binary, CA certificates, a passwd/group naming the non-root user, nothing else.
  image = role: bin: pkgs.dockerTools.streamLayeredImage {
    name = "phylax-${role}";
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
      Cmd = [ role ];
      User = "65532:65532";
      Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ];
      Labels = {
        "org.opencontainers.image.title" = "phylax-${role}";
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
    PHYLAX_GIT_COMMIT = commit;
    nativeBuildInputs = [ pkgs.pkg-config ];
    buildInputs = [ pkgs.tpm2-tss pkgs.libseccomp pkgs.openssl ];
  };
  hostArtifacts = craneLib.buildDepsOnly hostArgs;
in
{
  packages = {
    default = phylax-static;
    inherit phylax-static manifests;
  }
  // lib.mapAttrs' (role: bin: lib.nameValuePair "phylax-${role}" bin) perRole
  // lib.mapAttrs' (role: bin: lib.nameValuePair "image-${role}" (image role bin)) perRole;

  checks = {
    inherit phylax-static;
    fmt = craneLib.cargoFmt { inherit (hostArgs) pname version src; };
    clippy = craneLib.cargoClippy (hostArgs // {
      cargoArtifacts = hostArtifacts;
      cargoClippyExtraArgs = "--all-targets --all-features -- -D warnings";
    });
    # Unit tests; the integration tests need a control plane and run in scripts/test.sh.
    unit-tests = craneLib.cargoTest (hostArgs // {
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

# Evaluates the flake's outputs function and the NixOS module with stub inputs and checks the
# values that once were wrong (issue 15). CI has Nix but no nixpkgs, crane or rust-overlay and no
# network, so those inputs are stand-ins (stub-lib.nix, stub-nixpkgs/, the crane record below):
# this checks what flake.nix, modules/ and nixos/ pass to them, not that nixpkgs builds it.
#
#   nix-instantiate --eval --strict tests/nix/eval.nix    # [ ] when every check passes
#
# The result is the list of failed checks, each with what was found.
let
  lib = import ./stub-lib.nix;
  inherit (builtins) elem filter length attrNames hasAttr typeOf isString isList;

  # crane: each builder returns a record of its arguments.
  crane.mkLib = pkgs:
    let
      craneLib = {
        overrideToolchain = f: craneLib;
        crateNameFromCargoToml = { cargoToml }:
          let toml = builtins.fromTOML (builtins.readFile cargoToml); in
          { pname = toml.package.name; version = toml.package.version; };
        fileset.commonCargoSources = src: { cargoSourcesOf = src; };
        buildDepsOnly = args: { outPath = "/nix/store/stub-deps-${args.pname}"; kind = "deps"; inherit args; };
        buildPackage = args: { outPath = "/nix/store/stub-${args.pname}"; kind = "package"; inherit args; };
        cargoFmt = args: { kind = "fmt"; inherit args; };
        cargoClippy = args: { kind = "clippy"; inherit args; };
        cargoTest = args: { kind = "test"; inherit args; };
      };
    in
    craneLib;
  nixpkgs = { outPath = ./stub-nixpkgs; inherit lib; };
  rust-overlay.overlays.default = final: prev: { };

  flake = import ../../flake.nix;
  # `self` as a flake sees it: its own outputs plus the source's revision.
  outputsWith = rev:
    let self = flake.outputs { inherit self nixpkgs crane rust-overlay; } // rev // { outPath = "/nix/store/stub-self"; };
    in self;
  outputs = outputsWith { shortRev = "abc1234"; };
  packages = outputs.packages.x86_64-linux;
  checks = outputs.checks.x86_64-linux;
  version = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).package.version;

  binaries = filter (n: (packages.${n}.kind or null) == "package") (attrNames packages);
  featuresOf = n: packages.${n}.args.cargoExtraArgs;

  # The NixOS module, with the option values the module system would give it: the options' own
  # defaults, overridden by `values` (one level per option group, as the tests set them).
  module = import ../../nixos/module.nix { self = outputs; };
  evalModule = { values, apiserver ? false, apparmor ? false }:
    let
      declared = (module { config = config; inherit lib; pkgs = import ./stub-nixpkgs { }; }).options.services.phylax;
      defaults = opts: builtins.mapAttrs (n: o: if (o._type or null) == "option" then o.default or null else defaults o) opts;
      merge = a: b: a // builtins.mapAttrs (n: v: if builtins.isAttrs v && !(v ? outPath) && builtins.isAttrs (a.${n} or null) then merge a.${n} v else v) b;
      config = {
        services.phylax = merge (defaults declared) values;
        services.kubernetes.apiserver.enable = apiserver;
        networking.hostName = "node-1";
        security.apparmor.enable = apparmor;
      };
    in
    resolve (module { inherit config lib; pkgs = import ./stub-nixpkgs { }; }).config;
  # mkIf / mkMerge, as the module system applies them: false conditions drop their content,
  # merged attribute sets combine, lists concatenate.
  resolve = v:
    if builtins.isAttrs v && (v._type or null) == "merge" then mergeAll (map resolve v.contents)
    else if builtins.isAttrs v && (v._type or null) == "if" then (if v.condition then resolve v.content else null)
    else if builtins.isAttrs v && !(v ? outPath) then
      builtins.removeAttrs (builtins.mapAttrs (_: resolve) v) (filter (n: resolve v.${n} == null) (attrNames v))
    else v;
  mergeAll = list: builtins.foldl' mergeTwo { } (filter (x: x != null) list);
  mergeTwo = a: b:
    if builtins.isAttrs a && builtins.isAttrs b && !(a ? outPath) then
      a // builtins.mapAttrs (n: v: if hasAttr n a then mergeTwo a.${n} v else v) b
    else if isList a && isList b then a ++ b
    else b;
  failedAssertions = cfg: map (a: a.message) (filter (a: !a.assertion) (cfg.assertions or [ ]));
  indexOf = x: list: let go = i: if i >= length list then -1 else if builtins.elemAt list i == x then i else go (i + 1); in go 0;
  contains = needle: s:
    let
      n = builtins.stringLength needle;
      go = i: i + n <= builtins.stringLength s && (builtins.substring i n s == needle || go (i + 1));
    in
    go 0;

  kmsTpm = evalModule {
    apiserver = true;
    values.kmsPlugin = {
      enable = true;
      wireApiserver = true;
      tpm.authFile = "/run/secrets/tpm-auth";
      socketDirectory = "/run/phylax/kms";
      extraArgs = [ "--audit-log=/var/log/100%-$HOME.log" ];
    };
  };
  kmsUnit = kmsTpm.systemd.services.phylax-kms-plugin.serviceConfig;
  kmsNoApiserver = evalModule { values.kmsPlugin = { enable = true; provider = "software"; wireApiserver = true; }; };
  kmsBadDir = evalModule { values.kmsPlugin = { enable = true; provider = "software"; socketDirectory = "/var/run/phylax"; }; };
  agent = args: (evalModule ({ values.nodeAgent = { enable = true; kubeconfig = "/etc/phylax/agent.kubeconfig"; } // (args.agent or { }); } // builtins.removeAttrs args [ "agent" ])).systemd.services.phylax-node-agent.serviceConfig;
  agentQuiet = agent { agent.auditSource = "none"; };
  agentKmsg = agent { };
  agentAppArmor = agent { apparmor = true; agent.auditSource = "none"; };
  vmTest = import ../../nixos/test.nix { pkgs = import ./stub-nixpkgs { }; phylaxModule = null; phylax = null; };

  check = name: ok: found: if ok then [ ] else [ "${name}: found ${builtins.toJSON found}" ];
in
builtins.concatLists [
  # Item 1: crane's fileset gets a path (the stub toSource throws otherwise, as the real one does).
  (check "source root is a path" (typeOf packages.default.args.src.root == "path") (typeOf packages.default.args.src.root))
  (check "version from Cargo.toml" (packages.default.args.version == version) packages.default.args.version)
  # Item 11: the commit reaches the final builds only, never the dependency-only ones.
  (check "commit in every final binary" (builtins.all (n: (packages.${n}.args.PHYLAX_GIT_COMMIT or null) == "abc1234") binaries) binaries)
  (check "no commit in deps-only builds" (builtins.all (n: !(packages.${n}.args.cargoArtifacts.args ? PHYLAX_GIT_COMMIT)) binaries) binaries)
  (check "no commit in the checks' deps" (!(checks.clippy.args.cargoArtifacts.args ? PHYLAX_GIT_COMMIT)) checks.clippy.args.cargoArtifacts.args)
  (check "commit in clippy/test builds" (checks.clippy.args.PHYLAX_GIT_COMMIT == "abc1234" && checks.unit-tests.args.PHYLAX_GIT_COMMIT == "abc1234") "")
  (check "dirty tree names its revision" (((outputsWith { dirtyShortRev = "abc1234-dirty"; }).packages.x86_64-linux.default.args.PHYLAX_GIT_COMMIT) == "abc1234-dirty") "")
  (check "no revision: unknown" (((outputsWith { }).packages.x86_64-linux.default.args.PHYLAX_GIT_COMMIT) == "unknown") "")
  # Item 12: the kms-plugin package and image carry the tpm, vault and aws providers.
  (check "kms-plugin features" (contains "--no-default-features --features kms-plugin,tpm,vault,aws" (featuresOf "phylax-kms-plugin")) (featuresOf "phylax-kms-plugin"))
  (check "one role per other package" (contains "--features operator" (featuresOf "phylax-operator") && !(contains "tpm" (featuresOf "phylax-operator"))) (featuresOf "phylax-operator"))
  (check "image-kms-plugin runs that binary" (packages.image-kms-plugin.args.config.Entrypoint == [ "${packages.phylax-kms-plugin}/bin/phylax" ]) packages.image-kms-plugin.args.config.Entrypoint)
  # Item 7: an all-roles image named as `phylax manifests` names it by default, and per-role ones.
  (check "all-roles image phylax:<version>" (packages.image.args.name == "phylax" && packages.image.args.tag == version && packages.image.args.config.Entrypoint == [ "${packages.phylax-static}/bin/phylax" ]) packages.image.args.name)
  (check "per-role images" (builtins.all (r: packages."image-${r}".args.name == "phylax-${r}" && packages."image-${r}".args.config.Cmd == [ r ]) [ "operator" "webhook" "kms-plugin" "node-agent" "tokenizer" ]) "")
  (check "the all-roles binary has every feature" (!(contains "--features" (featuresOf "phylax-static"))) (featuresOf "phylax-static"))

  # Item 3: @chown allowed again after ~@privileged removed it (systemd applies them in order).
  (check "kms unit allows @chown after ~@privileged" (indexOf "@chown" kmsUnit.SystemCallFilter > indexOf "~@privileged" kmsUnit.SystemCallFilter && indexOf "~@privileged" kmsUnit.SystemCallFilter >= 0) kmsUnit.SystemCallFilter)
  # Item 15: RuntimeDirectory below /run, readiness before the API server, % and $ escaped,
  # no kube-apiserver unit without an API server, the kubeconfig kept out of the store.
  (check "RuntimeDirectory relative to /run" (kmsUnit.RuntimeDirectory == "phylax/kms") kmsUnit.RuntimeDirectory)
  (check "socketDirectory outside /run refused" (builtins.any (m: contains "under /run" m) (failedAssertions kmsBadDir)) (failedAssertions kmsBadDir))
  (check "ExecStartPost waits for /readyz, then chgrp" (contains "readyz" (toString kmsUnit.ExecStartPost) || contains "phylax-kms-ready" (toString kmsUnit.ExecStartPost)) kmsUnit.ExecStartPost)
  (check "% and $ in arguments escaped" (contains "\"--audit-log=/var/log/100%%-$$HOME.log\"" kmsUnit.ExecStart) kmsUnit.ExecStart)
  (check "%d specifier kept for the TPM auth credential" (contains " --tpm-auth-file=%d/tpm-auth" kmsUnit.ExecStart && (kmsUnit.LoadCredential or null) == "tpm-auth:/run/secrets/tpm-auth") kmsUnit.ExecStart)
  (check "kube-apiserver ordered after the plugin" (kmsTpm.systemd.services.kube-apiserver.after == [ "phylax-kms-plugin.service" ]) kmsTpm.systemd.services)
  (check "no kube-apiserver unit without an API server" (!(kmsNoApiserver.systemd.services ? kube-apiserver)) (attrNames kmsNoApiserver.systemd.services))
  (check "wireApiserver without an API server refused" (builtins.any (m: contains "wireApiserver" m) (failedAssertions kmsNoApiserver)) (failedAssertions kmsNoApiserver))
  (check "valid configuration passes its assertions" (failedAssertions kmsTpm == [ ]) (failedAssertions kmsTpm))
  (check "node agent kubeconfig is a string option, not a store path" ((module { config = { }; inherit lib; pkgs = { }; }).options.services.phylax.nodeAgent.kubeconfig.type.name == "str") "")
  (check "node agent kubeconfig as a credential" ((agentQuiet.LoadCredential or null) == "kubeconfig:/etc/phylax/agent.kubeconfig" && contains " --kubeconfig=%d/kubeconfig" agentQuiet.ExecStart && !(contains "agent.kubeconfig" agentQuiet.ExecStart)) agentQuiet.ExecStart)
  # Item 10: an empty capability set is written "", which systemd reads as none.
  (check "no capabilities: \"\"" (agentQuiet.CapabilityBoundingSet == "" && agentQuiet.AmbientCapabilities == "") agentQuiet.CapabilityBoundingSet)
  (check "/dev/kmsg: CAP_SYSLOG only" (agentKmsg.CapabilityBoundingSet == [ "CAP_SYSLOG" ]) agentKmsg.CapabilityBoundingSet)
  # Item 5: AppArmor needs a writable /sys/kernel/security/apparmor.
  (check "AppArmor relaxes ProtectKernelTunables" (agentAppArmor.ProtectKernelTunables == false && agentQuiet.ProtectKernelTunables == true) agentAppArmor.ProtectKernelTunables)
  (check "AppArmor: CAP_MAC_ADMIN" (agentAppArmor.CapabilityBoundingSet == [ "CAP_MAC_ADMIN" ]) agentAppArmor.CapabilityBoundingSet)
  # Item 4: the VM test reads etcd under the name its certificate carries.
  (check "VM test reads etcd.local" (contains "https://etcd.local:2379" vmTest.testScript && !(contains "127.0.0.1:2379" vmTest.testScript)) "")
]

# NixOS module: the Phylax KMS plugin next to kube-apiserver, and the node agent.
#
#   services.phylax.kmsPlugin.enable = true;            # provider "tpm" by default: KEK sealed in /dev/tpmrm0
#   services.phylax.kmsPlugin.tpm.authFile = "/run/secrets/phylax-kms-tpm-auth";   # and/or tpm.pcrs
#   services.phylax.kmsPlugin.wireApiserver = true;     # EncryptionConfiguration for services.kubernetes.apiserver
#   services.phylax.nodeAgent = { enable = true; kubeconfig = "/etc/phylax/node-agent.kubeconfig"; };
#
# tests/nix/eval.nix evaluates this module with stub inputs (CI has no nixpkgs); nixos/test.nix runs it.
{ self }:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.phylax;
  kms = cfg.kmsPlugin;
  agent = cfg.nodeAgent;
  socket = "${kms.socketDirectory}/kms.sock";
  needsNetwork = builtins.elem kms.provider [ "vault" "aws" ];

  # ExecStart words: systemd expands `%` specifiers and `$` variables even inside quotes, so values
  # from options are escaped for both and double-quoted (systemd reads C-style escapes there).
  # Words that use a specifier on purpose (%d, the credentials directory) go in unescaped.
  execWord = s: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);
  execLine = words: specifierWords: lib.concatStringsSep " " (map execWord words ++ specifierWords);

  # systemd reads an empty list as "no setting" (every capability kept); "" is the empty set.
  capabilities = caps: if caps == [ ] then "" else caps;
  runtimeDirectory = lib.removePrefix "/run/" kms.socketDirectory;

  # Type=simple is started at exec: this holds the unit in "activating" until the plugin's
  # /readyz answers (socket up, one provider round trip), so `before = kube-apiserver` means ready.
  # Then the socket's directory is given to the API server's group.
  kmsReady = pkgs.writeShellScript "phylax-kms-ready" ''
    for _ in $(${pkgs.coreutils}/bin/seq 1 600); do
      if ${pkgs.curl}/bin/curl -fsS -o /dev/null http://127.0.0.1:9092/readyz; then
        exec ${pkgs.coreutils}/bin/chgrp ${lib.escapeShellArg kms.apiserverGroup} ${lib.escapeShellArg kms.socketDirectory}
      fi
      ${pkgs.coreutils}/bin/sleep 0.1
    done
    echo "phylax-kms-plugin: /readyz did not answer within 60 s" >&2
    exit 1
  '';

  providerArgs = {
    software = map (k: "--key-file=${k}") kms.keyFiles ++ lib.optional kms.createKey "--create-key-file";
    tpm = [ "--tpm-tcti=${kms.tpm.tcti}" ]
      ++ map (k: "--tpm-sealed-key=${k}") kms.keyFiles
      ++ lib.optional kms.createKey "--tpm-create-sealed-key"
      ++ lib.optional (kms.tpm.pcrs != [ ]) "--tpm-pcrs=${lib.concatMapStringsSep "," toString kms.tpm.pcrs}";
    vault = [ ];
    aws = [ ];
  }.${kms.provider};
  # %d: the unit's credentials directory (LoadCredential below).
  kmsSpecifierArgs = lib.optional (kms.provider == "tpm" && kms.tpm.authFile != null) "--tpm-auth-file=%d/tpm-auth";

  # JSON is YAML: the API server reads either.
  encryptionConfig = pkgs.writeText "phylax-encryption-config.yaml" (builtins.toJSON {
    apiVersion = "apiserver.config.k8s.io/v1";
    kind = "EncryptionConfiguration";
    resources = [{
      resources = kms.encryptedResources;
      providers = [
        { kms = { apiVersion = "v2"; name = "phylax"; endpoint = "unix://${socket}"; timeout = "3s"; }; }
        { identity = { }; }
      ];
    }];
  });

  agentCapabilities = lib.optional (agent.auditSource == "/dev/kmsg") "CAP_SYSLOG"
    ++ lib.optional agent.apparmor "CAP_MAC_ADMIN";

  hardening = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    UMask = "0077";
  };
in
{
  options.services.phylax = {
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.phylax-static;
      defaultText = lib.literalExpression "phylax.packages.\${system}.phylax-static";
      description = "The phylax binary (all roles).";
    };

    kmsPlugin = {
      enable = lib.mkEnableOption "the Phylax KMS v2/v1 plugin for etcd encryption at rest";
      provider = lib.mkOption {
        type = lib.types.enum [ "software" "tpm" "vault" "aws" ];
        default = "tpm";
        description = "Where the key-encryption key lives.";
      };
      keyFiles = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ "/var/lib/phylax-kms/kek.sealed" ];
        description = "Key files (software) or sealed-key files (tpm); the first encrypts, all decrypt (rotation).";
      };
      createKey = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = "Create the first key file when it does not exist (never overwrites one).";
      };
      tpm.tcti = lib.mkOption {
        type = lib.types.str;
        default = "device:/dev/tpmrm0";
        description = "TCTI of the TPM (the kernel's resource manager by default).";
      };
      tpm.pcrs = lib.mkOption {
        type = lib.types.listOf (lib.types.ints.between 0 23);
        default = [ ];
        description = "SHA-256 PCRs a new sealed key is bound to (empty: no PCR policy). A new key needs this, tpm.authFile, or both.";
      };
      tpm.authFile = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/run/secrets/phylax-kms-tpm-auth";
        description = "File with the secret (16 bytes to 4 KiB, e.g. from `head -c 32 /dev/urandom`) a new sealed key needs to be unsealed, read at every start. Passed as a systemd credential (LoadCredential), so only root needs to read it; keep it off the disk of the sealed key (a secrets manager's file). A new key needs this, tpm.pcrs, or both.";
      };
      extraArgs = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        example = [ "--vault-addr=https://vault.example:8200" "--vault-key=kube" "--vault-token-file=/run/secrets/vault-token" ];
        description = "More flags for `phylax kms-plugin` (the vault and aws providers are configured here).";
      };
      socketDirectory = lib.mkOption {
        type = lib.types.str;
        default = "/run/phylax-kms";
        description = "Directory of the plugin's unix socket, under /run (systemd creates it as the unit's RuntimeDirectory).";
      };
      apiserverGroup = lib.mkOption {
        type = lib.types.str;
        default = "kubernetes";
        description = "Group of the kube-apiserver process: it may open the socket, nobody else may.";
      };
      wireApiserver = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Point services.kubernetes.apiserver at an EncryptionConfiguration that uses the plugin (KMS v2, identity as read fallback) and start it after the plugin.";
      };
      encryptedResources = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ "secrets" ];
        description = "Resources the API server encrypts through the plugin.";
      };
    };

    nodeAgent = {
      enable = lib.mkEnableOption "the Phylax node agent (seccomp/AppArmor profiles on this node)";
      kubeletRoot = lib.mkOption {
        type = lib.types.str;
        default = "/var/lib/kubelet";
        description = "The kubelet's root directory: the only place the agent may write (<kubeletRoot>/seccomp).";
      };
      nodeName = lib.mkOption {
        type = lib.types.str;
        default = config.networking.hostName;
        defaultText = lib.literalExpression "config.networking.hostName";
        description = "This node's name as the cluster knows it (its Node object).";
      };
      kubeconfig = lib.mkOption {
        # A string, not a path: a path would copy the credential into the world-readable store.
        type = lib.types.str;
        example = "/etc/phylax/node-agent.kubeconfig";
        description = "Absolute path (read at start, never copied to the Nix store; passed to the unit as a systemd credential) of the kubeconfig of the agent's identity (RBAC: the ClusterRole phylax-node-agent from `phylax manifests`).";
      };
      auditSource = lib.mkOption {
        type = lib.types.str;
        default = "/dev/kmsg";
        description = "Where seccomp audit records appear (/dev/kmsg or auditd's log; syslog is not read, any process can write to it), or \"none\" to turn profile recording off.";
      };
      apparmor = lib.mkOption {
        type = lib.types.bool;
        default = config.security.apparmor.enable;
        defaultText = lib.literalExpression "config.security.apparmor.enable";
        description = "Load AppArmorProfiles with apparmor_parser (needs AppArmor enabled on the host).";
      };
      extraArgs = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "More flags for `phylax node-agent`.";
      };
    };
  };

  config = lib.mkMerge [
    (lib.mkIf kms.enable {
      # The plugin refuses this at runtime too; failing here says so before the first boot.
      assertions = [
        {
          assertion = kms.provider != "tpm" || !kms.createKey || kms.tpm.pcrs != [ ] || kms.tpm.authFile != null;
          message = "services.phylax.kmsPlugin: a key sealed to the TPM without PCRs or an auth value unseals for anyone who can read it and use the TPM; set tpm.authFile (a secret file), tpm.pcrs (e.g. [ 7 ]), or both (or createKey = false).";
        }
        {
          assertion = lib.hasPrefix "/run/" kms.socketDirectory && runtimeDirectory != "";
          message = "services.phylax.kmsPlugin.socketDirectory must be a directory under /run (it is the unit's RuntimeDirectory); got ${kms.socketDirectory}.";
        }
        {
          assertion = !kms.wireApiserver || config.services.kubernetes.apiserver.enable;
          message = "services.phylax.kmsPlugin.wireApiserver needs services.kubernetes.apiserver.enable (or a role \"master\"): there is no API server to wire.";
        }
      ];

      users.users.phylax-kms = {
        isSystemUser = true;
        group = "phylax-kms";
        extraGroups = lib.optional (kms.provider == "tpm") "tss";
        description = "Phylax KMS plugin";
      };
      users.groups.phylax-kms = { };
      users.groups.${kms.apiserverGroup} = { };
      users.groups.tss = lib.mkIf (kms.provider == "tpm") { };

      systemd.services.phylax-kms-plugin = {
        description = "Phylax KMS plugin (etcd encryption at rest)";
        wantedBy = [ "multi-user.target" ];
        before = [ "kube-apiserver.service" ];
        after = [ "network-online.target" ] ++ lib.optional (kms.provider == "tpm") "tpm2.target";
        wants = lib.optional needsNetwork "network-online.target";
        serviceConfig = hardening // {
          ExecStart = execLine ([
            "${cfg.package}/bin/phylax" "kms-plugin"
            "--listen=unix://${socket}"
            "--socket-mode=0660"
            "--socket-group=${kms.apiserverGroup}"
            "--provider=${kms.provider}"
            "--admin-addr=127.0.0.1:9092"
          ] ++ providerArgs ++ kms.extraArgs) kmsSpecifierArgs;
          # --socket-group and the chgrp below call fchown/chown (@chown, part of @privileged):
          # allowed again after the removal, which systemd applies in order.
          SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" "@chown" ];
          User = "phylax-kms";
          Group = "phylax-kms";
          # The socket's group is the API server's; the directory lets that group in.
          SupplementaryGroups = [ kms.apiserverGroup ] ++ lib.optional (kms.provider == "tpm") "tss";
          # Relative to /run (checked above), so /run/a/b is created as a/b, not as /run/b.
          RuntimeDirectory = runtimeDirectory;
          RuntimeDirectoryMode = "0750";
          StateDirectory = "phylax-kms";
          StateDirectoryMode = "0700";
          ExecStartPost = "${kmsReady}";
          DevicePolicy = "closed";
          DeviceAllow = lib.optional (kms.provider == "tpm") "/dev/tpmrm0 rw";
          LoadCredential = lib.mkIf (kms.provider == "tpm" && kms.tpm.authFile != null) "tpm-auth:${kms.tpm.authFile}";
          # The admin endpoint listens on loopback; only vault and aws reach further.
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
          IPAddressAllow = lib.mkIf (!needsNetwork) "localhost";
          IPAddressDeny = lib.mkIf (!needsNetwork) "any";
          Restart = "on-failure";
          RestartSec = "2s";
        };
      };

      security.tpm2 = lib.mkIf (kms.provider == "tpm") {
        enable = true;
        applyUdevRules = true;
      };

      # Only when the API server runs here: otherwise this would define an empty kube-apiserver unit.
      systemd.services.kube-apiserver = lib.mkIf (kms.wireApiserver && config.services.kubernetes.apiserver.enable) {
        after = [ "phylax-kms-plugin.service" ];
        wants = [ "phylax-kms-plugin.service" ];
      };
      services.kubernetes.apiserver.extraOpts = lib.mkIf kms.wireApiserver
        "--encryption-provider-config=${encryptionConfig}";
    })

    (lib.mkIf agent.enable {
      assertions = [{
        assertion = lib.hasPrefix "/" agent.kubeconfig;
        message = "services.phylax.nodeAgent.kubeconfig must be an absolute path (a string, so the credential stays out of the Nix store); got ${agent.kubeconfig}.";
      }];
      systemd.services.phylax-node-agent = {
        description = "Phylax node agent (seccomp/AppArmor profiles)";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" "kubelet.service" ];
        wants = [ "network-online.target" ];
        serviceConfig = hardening // {
          ExecStart = execLine ([
            "${cfg.package}/bin/phylax" "node-agent"
            "--admin-addr=127.0.0.1:9093"
            "--node-name=${agent.nodeName}"
            "--kubelet-root=${agent.kubeletRoot}"
            "--audit-source=${agent.auditSource}"
            "--apparmor-parser=${pkgs.apparmor-parser}/bin/apparmor_parser"
            "--apparmor-dir=/var/lib/phylax-apparmor"
          ] ++ agent.extraArgs) [ "--kubeconfig=%d/kubeconfig" ];
          LoadCredential = "kubeconfig:${agent.kubeconfig}";
          # Root only to write into the kubelet's directory, and only there (plus the AppArmor
          # policies it loads).
          ReadWritePaths = [ "${agent.kubeletRoot}/seccomp" ];
          StateDirectory = "phylax-apparmor";
          # /dev/kmsg for the recorder; every process's /proc/<pid>/cgroup to find its container.
          ProtectKernelLogs = agent.auditSource != "/dev/kmsg";
          ProtectProc = "default";
          ProcSubset = "all";
          # apparmor_parser loads policies through /sys/kernel/security/apparmor, which
          # ProtectKernelTunables makes read-only with the rest of /sys.
          ProtectKernelTunables = !agent.apparmor;
          CapabilityBoundingSet = capabilities agentCapabilities;
          AmbientCapabilities = capabilities agentCapabilities;
          SystemCallFilter = [ "@system-service" ] ++ lib.optional (!agent.apparmor) "~@privileged";
          ExecStartPre = "+${pkgs.coreutils}/bin/mkdir -p ${agent.kubeletRoot}/seccomp/phylax";
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
          Restart = "on-failure";
          RestartSec = "2s";
        };
      };
    })
  ];
}

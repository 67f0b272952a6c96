# NixOS VM test: a single-node Kubernetes control plane whose API server encrypts Secrets through
# the Phylax KMS plugin with its key sealed in the VM's TPM (swtpm behind virtualisation.tpm), and
# etcd holding the Secret encrypted. Run: nix build .#checks.x86_64-linux.nixos-kms
{ pkgs, phylaxModule, phylax }:
pkgs.testers.runNixOSTest {
  name = "phylax-kms-tpm";
  nodes.machine = { config, pkgs, ... }: {
    imports = [ phylaxModule ];
    virtualisation.tpm.enable = true;
    virtualisation.memorySize = 3072;
    virtualisation.cores = 2;
    networking.hostName = "machine";
    services.kubernetes = {
      roles = [ "master" ];
      masterAddress = "machine";
      easyCerts = true;
    };
    services.phylax.package = phylax;
    services.phylax.kmsPlugin = {
      enable = true;
      provider = "tpm";
      wireApiserver = true;
      # The secret the sealed KEK needs; made at boot below (a secrets manager's file in production).
      tpm.authFile = "/run/phylax-test/tpm-auth";
    };
    systemd.services.phylax-test-tpm-auth = {
      description = "A random TPM auth secret for the Phylax test";
      wantedBy = [ "phylax-kms-plugin.service" ];
      before = [ "phylax-kms-plugin.service" ];
      serviceConfig = { Type = "oneshot"; RemainAfterExit = true; UMask = "0077"; };
      script = ''
        mkdir -p /run/phylax-test
        test -s /run/phylax-test/tpm-auth || head -c 32 /dev/urandom > /run/phylax-test/tpm-auth
      '';
    };
    environment.systemPackages = [ pkgs.kubectl pkgs.etcd pkgs.tpm2-tools ];
  };

  testScript = ''
    machine.wait_for_unit("phylax-kms-plugin.service")
    machine.wait_until_succeeds("curl -fsS http://127.0.0.1:9092/readyz")
    # The KEK is sealed to this TPM and private to the plugin's user.
    machine.succeed("test -s /var/lib/phylax-kms/kek.sealed")
    machine.succeed("test $(stat -c %U /var/lib/phylax-kms/kek.sealed) = phylax-kms")
    # Sealed with the auth secret, and pinned to this TPM's storage primary key.
    machine.succeed("grep -q '\"authValue\": true' /var/lib/phylax-kms/kek.sealed")
    machine.succeed("grep -q '\"primaryPublic\"' /var/lib/phylax-kms/kek.sealed")
    # The socket: the API server's group may connect, others may not.
    machine.succeed("test $(stat -c %G /run/phylax-kms/kms.sock) = kubernetes")

    machine.wait_for_unit("kube-apiserver.service")
    machine.wait_until_succeeds(
        "kubectl --kubeconfig /etc/kubernetes/cluster-admin.kubeconfig get --raw /readyz"
    )
    machine.succeed(
        "kubectl --kubeconfig /etc/kubernetes/cluster-admin.kubeconfig "
        "create secret generic demo --from-literal=password=planted-nixos-value"
    )
    stored = machine.succeed(
        # The name nixpkgs' etcd certificate carries (it has no 127.0.0.1 SAN).
        "ETCDCTL_API=3 etcdctl --endpoints https://etcd.local:2379 "
        "--cacert /var/lib/kubernetes/secrets/ca.pem "
        "--cert /var/lib/kubernetes/secrets/etcd.pem "
        "--key /var/lib/kubernetes/secrets/etcd-key.pem "
        "get /registry/secrets/default/demo --print-value-only | head -c 64"
    )
    assert stored.startswith("k8s:enc:kms:v2:phylax"), stored
    assert "planted-nixos-value" not in stored

    # A restarted plugin unseals the same key: the Secret still reads back.
    machine.succeed("systemctl restart phylax-kms-plugin.service")
    machine.wait_until_succeeds("curl -fsS http://127.0.0.1:9092/readyz")
    machine.wait_until_succeeds(
        "kubectl --kubeconfig /etc/kubernetes/cluster-admin.kubeconfig "
        "get secret demo -o jsonpath={.data.password} | base64 -d | grep -q planted-nixos-value"
    )
  '';
}

//! A real single-node cluster whose pods run: the control plane of `control_plane.rs` plus
//! kube-scheduler, containerd (bookworm), runc, the CNI bridge, a kubelet and kube-proxy (iptables
//! mode), all inside a network namespace this harness creates. The node IP lives on that
//! namespace's loopback, the pod range on its CNI bridge, the Service range is routed there, and the
//! test reaches the API server through a loopback forwarder: nothing the cluster uses is an address
//! of the host's.
//!
//! Binaries: `tests/control-plane/build.sh` and `tests/real-node/build.sh` (cached under
//! /var/tmp/phylax); images: `tests/real-node/images.sh` (run here, into the node's directory).
//! Needs root. `stop` undoes every host change the node made: processes, mounts, cgroups, the
//! namespace, the sysctls the kubelet rewrites, and the host paths it created.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::Api;

use super::control_plane::{ControlPlane, Leaf, Options, command_in, write_kubeconfig};

pub const NODE_NAME: &str = "phylax-node";
pub const NODE_IP: &str = "10.245.0.1";
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
/// Created by the harness (so the Service route can name it before the first pod), then used by
/// the CNI bridge plugin as the pods' bridge.
const BRIDGE: &str = "phx0";
pub const PHYLAX_IMAGE: &str = "localhost/phylax:test";
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:test";
const PAUSE_IMAGE: &str = "localhost/pause:3.4-phylax";
/// Where the manifests' node agent writes profiles (its hostPath), so the kubelet's seccomp root.
pub const SECCOMP_ROOT: &str = "/var/lib/kubelet/seccomp";

/// Host sysctls the kubelet sets (protectKernelDefaults off): put back on stop.
const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Host paths the kubelet, containerd or CNI create outside the node's directory: removed on stop
/// when they did not exist at start.
const HOST_PATHS: &[&str] = &[
    "/run/containerd",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/var/lib/kubelet",
];

pub fn node_binaries_dir() -> PathBuf {
    std::env::var_os("PHYLAX_REAL_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/phylax/real-node"))
}

pub struct RealNode {
    pub cp: ControlPlane,
    pub netns: String,
    /// How long start() took, from nothing to the node Ready.
    pub ready_after: Duration,
    sysctls: Vec<(String, String)>,
    created_paths: Vec<PathBuf>,
    stopped: bool,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl RealNode {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }

    /// A command run inside the node's network namespace.
    pub fn command(&self, bin: impl AsRef<Path>) -> Command {
        command_in(Some(&self.netns_path()), bin.as_ref())
    }

    fn dir(&self) -> &Path {
        self.cp.dir.path()
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// `ctr` against the node's containerd, in the namespace the CRI uses.
    pub fn ctr(&self, args: &[&str]) -> String {
        let sock = self.containerd_socket();
        run(Command::new("ctr")
            .arg(format!("--address={}", sock.display()))
            .args(["-n", "k8s.io"])
            .args(args))
    }

    pub async fn start() -> RealNode {
        let t0 = Instant::now();
        let nodebin = node_binaries_dir().join("bin");
        for b in ["kubelet", "kube-scheduler", "kube-proxy", "pause"] {
            assert!(
                nodebin.join(b).exists(),
                "{}/{b} is missing: run tests/real-node/build.sh (after tests/control-plane/build.sh)",
                nodebin.display()
            );
        }
        sweep_stale_namespaces();
        let netns = format!("phylax-node-{}", std::process::id());
        let ns_path = PathBuf::from(format!("/var/run/netns/{netns}"));
        run(Command::new("ip").args(["netns", "add", &netns]));
        // From here on a failure must undo what was done: `guard` stops on drop.
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .filter_map(|k| {
                let v = fs::read_to_string(format!("/proc/sys/{k}")).ok()?;
                Some(((*k).to_owned(), v.trim().to_owned()))
            })
            .collect();
        let created_paths = HOST_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let ip = |args: &[&str]| {
            run(command_in(Some(&ns_path), Path::new("ip")).args(args));
        };
        ip(&["link", "set", "lo", "up"]);
        // The kubelet refuses a loopback node IP, but any other address on lo will do.
        ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
        ip(&["link", "add", BRIDGE, "type", "bridge"]);
        ip(&["link", "set", BRIDGE, "up"]);
        // Without a route the kernel refuses a Service IP ("Network is unreachable") before
        // kube-proxy's OUTPUT rules can rewrite it: the API server calls webhooks through here.
        ip(&["route", "add", SERVICE_CIDR, "dev", BRIDGE]);
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            // Pod -> Service -> pod on the same bridge: replies must pass iptables to be un-NATed.
            ("net/bridge/bridge-nf-call-iptables", "1"),
        ] {
            // Both are per network namespace: nothing on the host changes.
            let _ = Command::new("nsenter")
                .arg(format!("--net={}", ns_path.display()))
                .args(["--", "sh", "-c", &format!("echo {value} > /proc/sys/{key}")])
                .status();
        }

        let leaf = |name: &str, cn: &str, org: Option<&str>, sans: &[&str], server: bool| Leaf {
            name: name.to_owned(),
            cn: cn.to_owned(),
            org: org.map(str::to_owned),
            sans: sans.iter().map(|s| (*s).to_owned()).collect(),
            server,
        };
        let node_user = format!("system:node:{NODE_NAME}");
        let extra_certs = vec![
            leaf("kubelet", &node_user, Some("system:nodes"), &[], false),
            leaf(
                "kubelet-serving",
                &node_user,
                Some("system:nodes"),
                &[NODE_NAME, NODE_IP, "127.0.0.1"],
                true,
            ),
            leaf("scheduler", "system:kube-scheduler", None, &[], false),
            leaf("proxy", "system:kube-proxy", None, &[], false),
        ];
        let cp = ControlPlane::start(Options {
            netns: Some(ns_path.clone()),
            advertise_address: Some(NODE_IP.to_owned()),
            extra_certs,
            apiserver_args_from_pki: Some(|pki| {
                let p = |n: &str| pki.join(n).display().to_string();
                vec![
                    // logs and exec: the API server calls the kubelet by its InternalIP, as admin.
                    format!("--kubelet-client-certificate={}", p("admin.crt")),
                    format!("--kubelet-client-key={}", p("admin.key")),
                    format!("--kubelet-certificate-authority={}", p("ca.crt")),
                    "--kubelet-preferred-address-types=InternalIP".to_owned(),
                ]
            }),
            ..Options::default()
        })
        .await;
        let mut node = RealNode {
            cp,
            netns,
            ready_after: Duration::ZERO,
            sysctls,
            created_paths,
            stopped: false,
        };
        node.start_node().await;
        node.ready_after = t0.elapsed();
        node
    }

    async fn start_node(&mut self) {
        let dir = self.dir().to_path_buf();
        let pki = self.cp.pki();
        let inner = self.cp.inner_apiserver_url.clone();
        let nodebin = node_binaries_dir().join("bin");
        let ns = self.netns_path();
        for (user, file) in [
            ("kubelet", "kubelet.kubeconfig"),
            ("scheduler", "scheduler.kubeconfig"),
            ("proxy", "proxy.kubeconfig"),
        ] {
            write_kubeconfig(&dir.join(file), &inner, &pki, user);
        }
        let p = |n: &str| dir.join(n).display().to_string();

        let mut cmd = command_in(Some(&ns), &nodebin.join("kube-scheduler"));
        cmd.args([
            format!("--kubeconfig={}", p("scheduler.kubeconfig")),
            format!("--authentication-kubeconfig={}", p("scheduler.kubeconfig")),
            format!("--authorization-kubeconfig={}", p("scheduler.kubeconfig")),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            "--secure-port=0".to_owned(),
            "--port=0".to_owned(),
        ]);
        self.cp.spawn("kube-scheduler", cmd);

        // containerd: state, sockets and CNI files in the node's directory. runc's root and the
        // shims' sockets are fixed under /run/containerd by containerd 1.6 (removed on stop).
        fs::create_dir_all(dir.join("cni/net.d")).expect("cni dir");
        fs::write(
            dir.join("cni/net.d/10-phylax.conflist"),
            serde_json::to_string_pretty(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "phylax-node",
                "plugins": [{
                    "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": "10.244.0.1"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": p("cni/ipam"),
                    }
                }]
            }))
            .expect("json"),
        )
        .expect("write the CNI config");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # These machines withhold CAP_SYS_RESOURCE: runc cannot give the pause container its -998.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
            root = p("containerd/root"),
            state = p("containerd/state"),
            sock = self.containerd_socket().display(),
            cni = p("cni/net.d"),
        );
        fs::write(dir.join("containerd.toml"), config).expect("containerd config");
        let mut cmd = command_in(Some(&ns), Path::new("/usr/bin/containerd"));
        cmd.arg(format!("--config={}", p("containerd.toml")));
        self.cp.spawn("containerd", cmd);
        let sock = self.containerd_socket();
        super::wait::wait_for("containerd to answer", Duration::from_secs(30), || {
            let ok = sock.exists()
                && Command::new("ctr")
                    .arg(format!("--address={}", sock.display()))
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success());
            async move { ok.then_some(()) }
        })
        .await;

        // Images: built here each run (a second and a half), so they always hold this checkout's
        // static binary.
        let images = dir.join("images");
        run(Command::new(repo().join("tests/real-node/images.sh")).arg(&images));
        for tar in ["pause.tar", "busybox.tar", "phylax.tar"] {
            self.ctr(&[
                "images",
                "import",
                "--no-unpack",
                &images.join(tar).display().to_string(),
            ]);
        }

        // kubelet
        fs::create_dir_all(SECCOMP_ROOT).expect("seccomp root");
        fs::write(
            dir.join("kubelet-config.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzPort: 0
tlsCertFile: {pki}/kubelet-serving.crt
tlsPrivateKeyFile: {pki}/kubelet-serving.key
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki}/ca.crt}}
authorization: {{mode: Webhook}}
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# A shared test machine's disk is never this empty; do not evict for it.
evictionHard: {{memory.available: \"50Mi\", nodefs.available: \"1%\", imagefs.available: \"1%\"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
runtimeRequestTimeout: 2m
# Secret volumes follow their Secret within a few seconds (webhook certificate rotation).
syncFrequency: 10s
",
                pki = pki.display()
            ),
        )
        .expect("kubelet config");
        let mut cmd = command_in(Some(&ns), &nodebin.join("kubelet"));
        cmd.args([
            format!("--config={}", p("kubelet-config.yaml")),
            format!("--kubeconfig={}", p("kubelet.kubeconfig")),
            format!("--root-dir={}", p("kubelet")),
            format!("--cert-dir={}", p("kubelet/pki")),
            format!("--seccomp-profile-root={SECCOMP_ROOT}"),
            "--container-runtime=remote".to_owned(),
            format!("--container-runtime-endpoint=unix://{}", sock.display()),
            format!("--image-service-endpoint=unix://{}", sock.display()),
            format!("--pod-infra-container-image={PAUSE_IMAGE}"),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--v=2".to_owned(),
        ])
        // 1.20's in-tree ECR credential provider probes the EC2 metadata service otherwise.
        .env("AWS_EC2_METADATA_DISABLED", "true");
        self.cp.spawn("kubelet", cmd);

        let mut cmd = command_in(Some(&ns), &nodebin.join("kube-proxy"));
        cmd.args([
            format!("--kubeconfig={}", p("proxy.kubeconfig")),
            "--proxy-mode=iptables".to_owned(),
            format!("--cluster-cidr={POD_CIDR}"),
            format!("--hostname-override={NODE_NAME}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--healthz-bind-address=127.0.0.1:10256".to_owned(),
            "--metrics-bind-address=127.0.0.1:10249".to_owned(),
            // Leave the host's conntrack table size and timeouts as they are (0: do not set).
            "--conntrack-max-per-core=0".to_owned(),
            "--conntrack-min=0".to_owned(),
            "--conntrack-tcp-timeout-established=0".to_owned(),
            "--conntrack-tcp-timeout-close-wait=0".to_owned(),
        ]);
        self.cp.spawn("kube-proxy", cmd);

        let client = super::cluster::client_for(&self.cp.kubeconfig).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = nodes.get_opt(NODE_NAME).await.ok().flatten().is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                break;
            }
            if let Some(name) = self.cp.exited() {
                panic!(
                    "{name} exited before the node was Ready:\n{}",
                    tail(&self.cp.log(&name), 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "node not Ready after 120s; kubelet log:\n{}",
                tail(&self.cp.log("kubelet"), 40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Pods are admitted only once the controller manager made the namespace's ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        super::wait::wait_for("the default ServiceAccount", Duration::from_secs(60), || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten().map(|_| ()) }
        })
        .await;
    }

    /// Stops everything and puts the host back as it was (idempotent).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let dir = self.dir().to_path_buf();
        // Container processes first (they are not the harness's children): every task in the
        // kubelet's cgroups; then the shims, which the kill leaves with nothing to supervise.
        for _ in 0..20 {
            let pids = kubepods_pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2); the pid was read from the node's own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let sock = self.containerd_socket().display().to_string();
        for shim in pids_of("containerd-shim") {
            let cmdline = fs::read(format!("/proc/{shim}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&sock) {
                // SAFETY: kill(2) on a shim started by this node's containerd.
                unsafe {
                    libc::kill(shim, libc::SIGKILL);
                }
            }
        }
        self.cp.stop();
        // Mounts under the node's directory (rootfs overlays, Secret tmpfs, pod network
        // namespaces), deepest first.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|t| t.starts_with(&*dir.to_string_lossy()))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = Command::new("umount").args(["-l", t]).status();
        }
        remove_kubepods_cgroups();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        for (key, value) in &self.sysctls {
            let _ = fs::write(format!("/proc/sys/{key}"), value);
        }
        for p in &self.created_paths {
            let _ = fs::remove_dir_all(p);
        }
        if !self
            .created_paths
            .iter()
            .any(|p| p == Path::new("/var/lib/kubelet"))
        {
            let _ = fs::remove_dir_all(Path::new(SECCOMP_ROOT).join("phylax"));
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Processes by their `comm` (the kernel keeps 15 bytes of the name).
fn pids_of(comm: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
                .collect()
        })
        .unwrap_or_default()
}

/// The kubelet's cgroup tree in the v1 `pids` hierarchy (every container is in it).
fn kubepods_pids() -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup/pids/kubepods")];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out
}

/// `kubepods` in every cgroup hierarchy, leaves first (a cgroup with children cannot be removed).
fn remove_kubepods_cgroups() {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.filter_map(|e| e.ok()) {
        let root = h.path().join("kubepods");
        let mut dirs = Vec::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if !d.is_dir() {
                continue;
            }
            if let Ok(rd) = fs::read_dir(&d) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(&d);
        }
    }
}

/// Namespaces `phylax-node-<pid>` whose test process is gone (killed before it could stop).
fn sweep_stale_namespaces() {
    let Ok(rd) = fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("phylax-node-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

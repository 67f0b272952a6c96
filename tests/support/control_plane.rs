//! A real control plane on loopback: etcd, kube-apiserver and kube-controller-manager, started
//! from the binaries `tests/control-plane/build.sh` builds from Debian's Kubernetes source package
//! (cached outside the clone, in `$PHYLAX_CONTROL_PLANE_DIR`, default /var/tmp/phylax/control-plane).
//!
//! Each control plane has its own ports, certificates (rcgen) and etcd data in a temporary
//! directory, so tests that need special API server flags (an encryption config) get their own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub fn binaries_dir() -> PathBuf {
    std::env::var_os("PHYLAX_CONTROL_PLANE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/phylax/control-plane"))
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--encryption-provider-config` for the API server.
    pub encryption_config: Option<PathBuf>,
    /// Extra kube-apiserver flags.
    pub apiserver_args: Vec<String>,
    /// Skip kube-controller-manager (no service-account tokens, GC or namespace deletion).
    pub no_controller_manager: bool,
    /// Run every component inside this network namespace (a /var/run/netns path, entered with
    /// `nsenter --net`); the API server is then reached from the test through a loopback
    /// forwarder, and advertises `advertise_address` so pods reach it through the `kubernetes`
    /// Service.
    pub netns: Option<PathBuf>,
    pub advertise_address: Option<String>,
    /// More client/server certificates signed by the cluster CA (for a kubelet, a scheduler...).
    pub extra_certs: Vec<Leaf>,
    /// API server flags naming files of the control plane's PKI directory (known only at start).
    pub apiserver_args_from_pki: Option<fn(&Path) -> Vec<String>>,
}

/// A certificate `generate_pki` writes as `<name>.crt` / `<name>.key`.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub name: String,
    pub cn: String,
    pub org: Option<String>,
    pub sans: Vec<String>,
    pub server: bool,
}

/// `bin args...`, entered into `netns` first when there is one.
pub fn command_in(netns: Option<&Path>, bin: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", ns.display())).arg("--").arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub apiserver_url: String,
    pub etcd_url: String,
    /// The API server's URL for components inside the network namespace (the same as
    /// `apiserver_url` without one).
    pub inner_apiserver_url: String,
    children: Vec<(String, Child)>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and (unless told otherwise) kube-controller-manager, and waits
    /// until the API server's /readyz answers.
    pub async fn start(opts: Options) -> ControlPlane {
        let bin = binaries_dir();
        let apiserver = bin.join("bin/kube-apiserver");
        let kcm = bin.join("bin/kube-controller-manager");
        let etcd = bin.join("etcd/usr/bin/etcd");
        for b in [&apiserver, &kcm, &etcd] {
            assert!(
                b.exists(),
                "{} is missing: build the test control plane with tests/control-plane/build.sh \
                 (or point PHYLAX_TEST_KUBECONFIG at a cluster)",
                b.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("phylax-cp-")
            .tempdir()
            .expect("tempdir");
        let pki = dir.path().join("pki");
        fs::create_dir_all(&pki).expect("pki dir");
        generate_pki(&pki, &opts.extra_certs);
        let ns = opts.netns.as_deref();

        // A network namespace of our own has every port free.
        let (etcd_port, peer_port, api_port, kcm_port) = if ns.is_some() {
            (2379, 2380, 6443, 10257)
        } else {
            (
                super::free_port(),
                super::free_port(),
                super::free_port(),
                super::free_port(),
            )
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let inner_apiserver_url = format!("https://127.0.0.1:{api_port}");
        let apiserver_url = match ns {
            Some(ns) => format!(
                "https://127.0.0.1:{}",
                forward_into(ns, ([127, 0, 0, 1], api_port).into())
            ),
            None => inner_apiserver_url.clone(),
        };
        let logs = dir.path().join("logs");
        fs::create_dir_all(&logs).expect("logs dir");

        let mut children = Vec::new();
        let mut cmd = command_in(ns, &etcd);
        cmd.args([
            "--name=test",
            &format!("--data-dir={}", dir.path().join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            &format!("--initial-cluster=test=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        children.push(("etcd".to_owned(), spawn_logged(cmd, &logs.join("etcd.log"))));

        let p = |n: &str| pki.join(n).display().to_string();
        let mut cmd = command_in(ns, &apiserver);
        let (advertise, bind) = match &opts.advertise_address {
            // Pods reach the API server at the advertised address (the `kubernetes` Endpoints).
            Some(a) => (a.clone(), "0.0.0.0"),
            None => ("127.0.0.1".to_owned(), "127.0.0.1"),
        };
        cmd.args([
            format!("--advertise-address={advertise}"),
            format!("--bind-address={bind}"),
            format!("--secure-port={api_port}"),
            "--insecure-port=0".to_owned(),
            format!("--etcd-servers={etcd_url}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            "--api-audiences=https://kubernetes.default.svc.cluster.local".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--authorization-mode=Node,RBAC".to_owned(),
            "--allow-privileged=true".to_owned(),
            format!("--cert-dir={}", dir.path().join("apiserver-certs").display()),
            "--profiling=false".to_owned(),
        ]);
        let mut plugins = "NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,Priority,\
                           MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota"
            .to_owned();
        if opts.no_controller_manager {
            // Nobody creates the `default` ServiceAccount, so this plugin would refuse every Pod.
            plugins = plugins.replace("ServiceAccount,", "");
            cmd.arg("--disable-admission-plugins=ServiceAccount");
        }
        cmd.arg(format!("--enable-admission-plugins={plugins}"));
        if let Some(cfg) = &opts.encryption_config {
            cmd.arg(format!("--encryption-provider-config={}", cfg.display()));
        }
        cmd.args(&opts.apiserver_args);
        if let Some(args) = opts.apiserver_args_from_pki {
            cmd.args(args(&pki));
        }
        children.push((
            "kube-apiserver".to_owned(),
            spawn_logged(cmd, &logs.join("kube-apiserver.log")),
        ));

        let kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &apiserver_url, &pki, "admin");
        let mut cp = ControlPlane {
            dir,
            kubeconfig,
            apiserver_url,
            etcd_url,
            inner_apiserver_url,
            children,
        };
        cp.wait_ready().await;

        if !opts.no_controller_manager {
            let kcm_kubeconfig = cp.dir.path().join("kcm.kubeconfig");
            write_kubeconfig(&kcm_kubeconfig, &cp.inner_apiserver_url, &pki, "kcm");
            let mut cmd = command_in(ns, &kcm);
            cmd.args([
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kcm_kubeconfig.display()),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={kcm_port}"),
                "--port=0".to_owned(),
                format!("--cert-dir={}", cp.dir.path().join("kcm-certs").display()),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--use-service-account-credentials=true".to_owned(),
                "--leader-elect=false".to_owned(),
                "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                "--controllers=*,bootstrapsigner,tokencleaner".to_owned(),
            ]);
            cp.children.push((
                "kube-controller-manager".to_owned(),
                spawn_logged(cmd, &cp.dir.path().join("logs/kube-controller-manager.log")),
            ));
        }
        cp
    }

    async fn wait_ready(&mut self) {
        let client = super::cluster::client_for(&self.kubeconfig).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).expect("request");
            if client.request_text(req).await.is_ok() {
                return;
            }
            for (name, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = fs::read_to_string(self.dir.path().join(format!("logs/{name}.log")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    panic!(
                        "{name} exited ({status}) before the API server was ready:\n{}",
                        tail.join("\n")
                    );
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kube-apiserver not ready after 90s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Starts a process logged to `logs/<name>.log`, stopped with the control plane.
    pub fn spawn(&mut self, name: &str, cmd: Command) {
        let log = self.dir.path().join(format!("logs/{name}.log"));
        self.children.push((name.to_owned(), spawn_logged(cmd, &log)));
    }

    /// Whether every process is still running; the name of the first that exited otherwise.
    pub fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(n, c)| (!matches!(c.try_wait(), Ok(None))).then(|| n.clone()))
    }

    /// Stops the processes in reverse start order (also done on drop).
    pub fn stop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    pub fn log(&self, component: &str) -> String {
        fs::read_to_string(self.dir.path().join(format!("logs/{component}.log"))).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port on the host that forwards each connection to `target` inside the network
/// namespace `netns`: the test talks to loopback only, and the cluster's addresses stay inside.
pub fn forward_into(netns: &Path, target: std::net::SocketAddr) -> u16 {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a forwarder port");
    let port = listener.local_addr().expect("forwarder addr").port();
    let ns = fs::File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
    std::thread::Builder::new()
        .name(format!("fwd-{port}"))
        .spawn(move || {
            // The listener was bound in the host's namespace; sockets this thread creates from
            // here on (the outgoing connections) are in the node's.
            // SAFETY: setns(2) with a namespace fd changes only this thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return;
            }
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let Ok(server) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        })
        .expect("spawn the forwarder");
    port
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // Webhook and KMS calls from the API server must never go through a proxy.
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(v);
    }
    super::keeper::spawn(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", log.display()))
}

/// The certificates one control plane needs, written as PEM files into `dir`.
fn generate_pki(dir: &Path, extra: &[Leaf]) {
    {
        let write = |name: &str, pem: String| fs::write(dir.join(name), pem).expect("write pki file");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "phylax-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");
        write("ca.crt", ca.pem());

        let leaf =
            |name: &str, cn: &str, org: Option<&str>, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
                let key = KeyPair::generate().expect("key");
                let mut params = CertificateParams::new(sans).expect("params");
                params.distinguished_name.push(DnType::CommonName, cn);
                if let Some(o) = org {
                    params.distinguished_name.push(DnType::OrganizationName, o);
                }
                params.extended_key_usages = vec![usage];
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                let cert = params.signed_by(&key, &ca).expect("sign");
                write(&format!("{name}.crt"), cert.pem());
                write(&format!("{name}.key"), key.serialize_pem());
            };
        let sans = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "127.0.0.1",
            "10.0.0.1",
        ];
        leaf(
            "apiserver",
            "kube-apiserver",
            None,
            sans.iter().map(|s| (*s).to_owned()).collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf(
            "admin",
            "admin",
            Some("system:masters"),
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        leaf(
            "kcm",
            "system:kube-controller-manager",
            None,
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        for l in extra {
            leaf(
                &l.name,
                &l.cn,
                l.org.as_deref(),
                l.sans.clone(),
                if l.server {
                    ExtendedKeyUsagePurpose::ServerAuth
                } else {
                    ExtendedKeyUsagePurpose::ClientAuth
                },
            );
        }

        // Service-account token signing key (ECDSA P-256; the API server accepts PKCS#8 and PKIX).
        let sa = KeyPair::generate().expect("sa key");
        write("sa.key", sa.serialize_pem());
        write("sa.pub", sa.public_key_pem());
    }
}

pub fn write_kubeconfig(path: &Path, server: &str, pki: &Path, user: &str) {
    let p = |n: &str| pki.join(n).display().to_string();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         contexts:\n- name: {user}\n  context: {{cluster: test, user: {user}}}\ncurrent-context: {user}\n\
         users:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n",
        ca = p("ca.crt"),
        crt = p(&format!("{user}.crt")),
        key = p(&format!("{user}.key")),
    );
    fs::write(path, text).expect("write kubeconfig");
}

//! The cluster tests run against: `PHYLAX_TEST_KUBECONFIG` when set (kind, a real cluster),
//! otherwise one local control plane per test binary, started on first use.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::control_plane::{ControlPlane, Options};

pub struct TestCluster {
    pub kubeconfig: PathBuf,
    /// The local control plane, when the tests started one.
    pub local: Option<ControlPlane>,
}

impl TestCluster {
    /// A client bound to the calling test's runtime (a client must not outlive its runtime, and
    /// every `#[tokio::test]` has its own).
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }
}

/// The shared cluster of this test binary.
pub fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        if let Some(path) = std::env::var_os("PHYLAX_TEST_KUBECONFIG").filter(|p| !p.is_empty()) {
            return TestCluster {
                kubeconfig: PathBuf::from(path),
                local: None,
            };
        }
        // Started on a runtime of its own: the control plane's processes outlive any one test.
        let cp = std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(ControlPlane::start(Options {
                    // Ephemeral containers are alpha (off) in 1.20 and on by default from 1.23:
                    // on here, so what clusters serve today can be tested.
                    apiserver_args: vec!["--feature-gates=EphemeralContainers=true".into()],
                    ..Options::default()
                }))
        })
        .join()
        .unwrap_or_else(|_| panic!("the local control plane did not start (see the message above)"));
        TestCluster {
            kubeconfig: cp.kubeconfig.clone(),
            local: Some(cp),
        }
    })
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A namespace that exists for one test and is deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    pub async fn create(cluster: &TestCluster, prefix: &str) -> TestNamespace {
        Self::create_with(&cluster.client().await, &cluster.kubeconfig, prefix).await
    }

    /// In the cluster `client` talks to; `kubeconfig` reaches it again to delete the namespace.
    pub async fn create_with(client: &Client, kubeconfig: &Path, prefix: &str) -> TestNamespace {
        let name = format!("t-{prefix}-{}", super::random_suffix());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            // The API server labels every namespace with its name from 1.21 on; the test control
            // plane (1.20) does not, so the test sets what newer servers would.
            "metadata": {"name": name, "labels": {"phylax.dev/test": "true", "kubernetes.io/metadata.name": name}}
        }))
        .expect("namespace");
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace {
            name,
            kubeconfig: kubeconfig.to_owned(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down: delete from a thread.
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let api: Api<Namespace> = Api::all(client_for(&kubeconfig).await);
                api.delete(&name, &DeleteParams::background()).await.ok()
            })
        })
        .join();
    }
}

/// Applies the CRDs `phylax crd` prints and waits until the API server serves every one of them.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::ResourceExt;
    use kube::api::{DynamicObject, ListParams, Patch, PatchParams};

    let (code, out, err) = super::process::run(&super::process::binary(), &["crd"]);
    assert_eq!(code, 0, "{err}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut resources = Vec::new();
    for doc in out.split("\n---\n").skip(1) {
        let crd: CustomResourceDefinition = serde_yaml::from_str(doc).expect("CRD");
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("phylax-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        let version = crd.spec.versions[0].name.clone();
        resources.push(kube::api::ApiResource {
            group: crd.spec.group.clone(),
            version: version.clone(),
            api_version: format!("{}/{version}", crd.spec.group),
            kind: crd.spec.names.kind.clone(),
            plural: crd.spec.names.plural.clone(),
        });
    }
    for ar in resources {
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        super::wait::wait_for(
            &format!("the {} CRD to be served", ar.kind),
            std::time::Duration::from_secs(30),
            || async { api.list(&ListParams::default().limit(1)).await.ok().map(|_| ()) },
        )
        .await;
    }
}

//! Phylax's API: the CustomResourceDefinitions (one file per API group as they arrive) and the
//! other contracts with users and the API server (the sync annotation, the webhooks Phylax
//! registers). `crate::deploy` renders the install manifests from the same code, so what is
//! installed matches what runs.

pub mod images;
pub mod profiles;
pub mod secret_provider;
pub mod selectors;
pub mod sync_annotation;
pub mod webhooks;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Every CRD of this build, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![
        secret_provider::SecretProvider::crd(),
        profiles::SeccompProfile::crd(),
        profiles::AppArmorProfile::crd(),
        profiles::ProfileBinding::crd(),
        profiles::ProfileRecording::crd(),
        profiles::ProfileNodeStatus::crd(),
    ]
}

/// YAML documents, each starting with `---`, after a comment naming what they are.
pub fn to_yaml_stream<T: serde::Serialize>(title: &str, objects: &[T]) -> anyhow::Result<String> {
    let mut out = format!("# {title} (phylax {})\n", crate::version::VERSION);
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(out)
}

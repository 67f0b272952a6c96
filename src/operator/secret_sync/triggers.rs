//! What asks for a sync: pods (watched as metadata only, to keep memory small) and workloads whose
//! pod template carries the annotation (read as untyped JSON, so an object this build's types do not
//! know cannot break the watch).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;

use crate::api::sync_annotation::ANNOTATION;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
}

impl Kind {
    pub const WORKLOADS: [Kind; 4] = [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet, Kind::Job];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod => "v1",
            Kind::Job => "batch/v1",
            _ => "apps/v1",
        }
    }

    pub fn resource(self) -> ApiResource {
        match self {
            Kind::Pod => ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Kind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
            Kind::Job => ApiResource::erase::<Job>(&()),
        }
    }
}

/// An object that asks for secrets, with the annotation's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub annotation: String,
}

impl Trigger {
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.kind.api_version().into()),
            kind: Some(self.kind.name().into()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }

    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
    }
}

pub fn from_pod(pod: &PartialObjectMeta<k8s_openapi::api::core::v1::Pod>) -> Option<Trigger> {
    let annotation = pod.metadata.annotations.as_ref()?.get(ANNOTATION)?;
    Some(Trigger {
        kind: Kind::Pod,
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
        annotation: annotation.clone(),
    })
}

/// The annotation of a workload's pod template, if it is text.
pub fn workload_annotation(obj: &DynamicObject) -> Option<&str> {
    obj.data
        .pointer("/spec/template/metadata/annotations")?
        .get(ANNOTATION)?
        .as_str()
}

/// A workload whose pod template asks for secrets.
pub fn from_workload(kind: Kind, obj: &DynamicObject) -> Option<Trigger> {
    let annotation = workload_annotation(obj)?;
    Some(Trigger {
        kind,
        namespace: obj.metadata.namespace.clone()?,
        name: obj.metadata.name.clone()?,
        uid: obj.metadata.uid.clone()?,
        annotation: annotation.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_template_annotation() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"template": {"metadata": {"annotations": {ANNOTATION: "{provider: p, path: /a, secretName: s}"}}}}
        }))
        .unwrap();
        let t = from_workload(Kind::Deployment, &obj).unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.name.as_str(), t.kind),
            ("shop", "web", Kind::Deployment)
        );
        assert_eq!(t.reference().api_version.as_deref(), Some("apps/v1"));
        let plain: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"template": {"metadata": {"annotations": {ANNOTATION: 42}}}}
        }))
        .unwrap();
        assert!(from_workload(Kind::Deployment, &plain).is_none());
    }
}

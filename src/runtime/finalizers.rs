//! Adding and removing one finalizer among others' with JSON patches that cannot drop or
//! duplicate another writer's entry (several node agents share a profile's finalizer list).

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

/// Adds `finalizer` to the object unless present. Appending cannot drop another node's entry; an
/// object without finalizers gets the list under a resourceVersion test, and when another node
/// wins that race the latest metadata is read and the append retried at once.
pub async fn add<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name_any();
    let mut finalizers = obj.finalizers().to_vec();
    let mut version = obj.resource_version();
    for attempt in 0.. {
        if finalizers.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let ops = if finalizers.is_empty() {
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
            ])
        } else {
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}])
        };
        match api
            .patch_metadata(&name, &PatchParams::default(), &json_patch(ops)?)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if (e.code == 409 || e.code == 422) && attempt < 5 => {
                let latest = api.get_metadata(&name).await?;
                finalizers = latest.metadata.finalizers.unwrap_or_default();
                version = latest.metadata.resource_version;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes `finalizer` if present, checking the entry at its index is still it.
pub async fn remove<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(i) = obj.finalizers().iter().position(|f| f == finalizer) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let ops = json!([
        {"op": "test", "path": path, "value": finalizer},
        {"op": "remove", "path": path},
    ]);
    match api
        .patch_metadata(&obj.name_any(), &PatchParams::default(), &json_patch(ops)?)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

fn json_patch(ops: serde_json::Value) -> Result<Patch<()>, kube::Error> {
    serde_json::from_value(ops)
        .map(Patch::Json)
        .map_err(kube::Error::SerdeError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api_mock::{self, ApiServer};
    use http::Method;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use serde_json::{Value, json};

    const URL: &str = "/api/v1/namespaces/ns/configmaps/cm";

    fn object(finalizers: &[&str]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("cm".into()),
                namespace: Some("ns".into()),
                resource_version: Some("5".into()),
                finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn metadata(finalizers: &[&str], version: &str) -> Value {
        json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "cm", "namespace": "ns", "resourceVersion": version, "finalizers": finalizers},
        })
    }

    async fn run<F, Fut, T>(call: impl FnOnce(Api<ConfigMap>) -> T, script: F) -> <T as Future>::Output
    where
        T: Future,
        F: FnOnce(ApiServer) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (client, server) = api_mock::client();
        let server = tokio::spawn(script(server));
        let out = call(Api::namespaced(client, "ns")).await;
        server.await.expect("the scripted server panicked");
        out
    }

    #[tokio::test]
    async fn the_first_finalizer_is_added_under_a_version_test_and_a_lost_race_appends() {
        let result = run(
            |api| async move { add(&api, &object(&[]), "node.example/a").await },
            |mut server| async move {
                let patch = server.next().await;
                patch.expect(Method::PATCH, URL);
                assert_eq!(patch.content_type.as_deref(), Some("application/json-patch+json"));
                assert_eq!(
                    patch.body,
                    json!([
                        {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
                        {"op": "add", "path": "/metadata/finalizers", "value": ["node.example/a"]},
                    ])
                );
                // Another node added its finalizer first: the test fails.
                patch.fail(422, "Invalid");
                let get = server.next().await;
                get.expect(Method::GET, URL);
                get.ok(metadata(&["node.example/b"], "6"));
                let append = server.next().await;
                assert_eq!(
                    append.body,
                    json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "node.example/a"}])
                );
                append.ok(metadata(&["node.example/b", "node.example/a"], "7"));
                server.no_more_calls().await;
            },
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn a_present_finalizer_is_not_added_again() {
        let result = run(
            |api| async move { add(&api, &object(&["node.example/a"]), "node.example/a").await },
            |mut server| async move { server.no_more_calls().await },
        )
        .await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn removal_checks_the_entry_at_its_index_and_a_gone_object_is_fine() {
        let result = run(
            |api| async move { remove(&api, &object(&["x/other", "node.example/a"]), "node.example/a").await },
            |mut server| async move {
                let patch = server.next().await;
                patch.expect(Method::PATCH, URL);
                assert_eq!(
                    patch.body,
                    json!([
                        {"op": "test", "path": "/metadata/finalizers/1", "value": "node.example/a"},
                        {"op": "remove", "path": "/metadata/finalizers/1"},
                    ])
                );
                patch.fail(404, "NotFound");
            },
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        let result = run(
            |api| async move { remove(&api, &object(&["x/other"]), "node.example/a").await },
            |mut server| async move { server.no_more_calls().await },
        )
        .await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn other_errors_are_returned() {
        let result = run(
            |api| async move { remove(&api, &object(&["node.example/a"]), "node.example/a").await },
            |mut server| async move { server.next().await.fail(403, "Forbidden") },
        )
        .await;
        assert!(matches!(result, Err(kube::Error::Api(e)) if e.code == 403));
    }
}

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

//! Server-side apply with the operator's fixed field manager.

use crate::context::FIELD_MANAGER;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Apply parameters: the fixed field manager, and `force` because the operator is the sole
/// owner of what it generates (a human edit of a generated object is overwritten, which is
/// the contract of generated objects).
pub fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies `obj` (a complete intent: apiVersion, kind, metadata.name) through `api`.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    obj: &(impl Serialize + Debug),
) -> Result<K, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    api.patch(name, &params(), &Patch::Apply(obj)).await
}

/// Server-side applies the status subresource of `name` (`status` is the whole intent of the
/// status this manager owns, wrapped as `{apiVersion, kind, status}`).
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    obj: &(impl Serialize + Debug),
) -> Result<K, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    api.patch_status(name, &params(), &Patch::Apply(obj)).await
}

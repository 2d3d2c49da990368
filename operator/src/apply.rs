//! Server-side apply with the operator's fixed field manager, and the [`put`]/[`remove`] of
//! generated namespaced objects every reconciler uses (failures as [`Error`]).

use crate::context::FIELD_MANAGER;
use crate::error::Error;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
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

/// Server-side applies the namespaced `obj` into `ns` (its name from its metadata).
pub async fn put<K>(client: &kube::Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    apply(&api, &name, obj)
        .await
        .map_err(|source| Error::Apply {
            kind: static_kind::<K>(),
            namespace: ns.to_string(),
            name,
            source,
        })
}

fn static_kind<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Secret" => "Secret",
        "ConfigMap" => "ConfigMap",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "Deployment" => "Deployment",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "HorizontalPodAutoscaler" => "HorizontalPodAutoscaler",
        "StatefulSet" => "StatefulSet",
        "NetworkPolicy" => "NetworkPolicy",
        _ => "object",
    }
}

/// Deletes `name` if it exists (an object the current spec no longer wants).
pub async fn remove<K>(client: &kube::Client, ns: &str, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: static_kind::<K>(),
            namespace: ns.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

/// A write in flight: what [`all`] runs.
pub type Write<'a> = futures::future::BoxFuture<'a, Result<(), Error>>;

/// Writes in flight at once (the API server's default max-in-flight is 200 for mutations).
/// 48 rather than 16: while a bulk apply runs, the API server is the busiest process of a
/// small cluster, and status writes compete with the apply's own requests for it; at 16 the
/// statuses fell behind and settled 12 s after a 10,000-object apply ended, at 48 in 5.6-5.8
/// s (`make bench-operator`, docs/benchmarks.md, issue 17). The debug log line "status
/// pass" says how long each pass waited, computed and wrote.
pub const WRITES_IN_FLIGHT: usize = 48;

/// Runs every one of `writes`, [`WRITES_IN_FLIGHT`] at a time, and returns the first error:
/// one object that cannot be written never keeps the others from being written. The passes
/// write this way because after a bulk apply every object's status changes, and one round
/// trip at a time was most of the time to settle 10,000 objects (issue 17).
pub async fn all(writes: Vec<Write<'_>>) -> Result<(), Error> {
    each(writes, |w| w).await
}

/// Like [`all`], but makes each write from its item only when a slot is free: after a bulk
/// apply the status pass has 10,000 writes to make, and their futures made up front (boxed,
/// about 1 KB each) were 10-15 MB of the operator's peak heap (heaptrack at 10,000 objects,
/// issue 17). `make` returns a boxed [`Write`] so the pass's future stays `Send` whatever
/// lifetimes it borrows.
pub async fn each<'a, T>(
    items: impl IntoIterator<Item = T>,
    mut make: impl FnMut(T) -> Write<'a>,
) -> Result<(), Error> {
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    let mut items = items.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut first_error = None;
    loop {
        while in_flight.len() < WRITES_IN_FLIGHT {
            match items.next() {
                Some(item) => in_flight.push(make(item)),
                None => break,
            }
        }
        match in_flight.next().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn each_makes_writes_lazily_runs_them_all_and_returns_the_first_error() {
        let made = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let items = 0..(3 * WRITES_IN_FLIGHT + 5);
        let result = each(items, |i| {
            made.fetch_add(1, Ordering::SeqCst);
            // Never more made than running plus the one being made now.
            assert!(made.load(Ordering::SeqCst) <= done.load(Ordering::SeqCst) + WRITES_IN_FLIGHT);
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                match i {
                    7 | 60 => Err(Error::Random(format!("write {i} failed"))),
                    _ => Ok(()),
                }
            })
        })
        .await;
        // Every write ran, a failed one did not stop the others, and the first error is kept.
        assert_eq!(done.load(Ordering::SeqCst), 3 * WRITES_IN_FLIGHT + 5);
        assert_eq!(most.load(Ordering::SeqCst), WRITES_IN_FLIGHT);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("write 7 failed"), "{err}");
    }
}

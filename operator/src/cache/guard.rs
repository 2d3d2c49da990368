//! One object the operator's types cannot read never stalls a watch (issue 17).
//!
//! A typed watch fails on the first object that does not deserialize (a CRD and an operator
//! of different versions, a field edited around the schema), and a failing watch stops every
//! update of that kind: no new Policy, no revocation, for every tenant. So the four
//! rustronaut.io kinds are watched through `kube::core::DeserializeGuard`, which hands over
//! an unreadable object as its metadata and the error, and [`guarded`] turns each event into
//! what the caches should hold:
//!
//! ```text
//!  readable object            -> as it is
//!  unreadable Tenant,         -> absent (its namespaces are then nobody's: their Resources are
//!  Resource, Gateway             not served; an unreadable Gateway is not reconciled, its pods
//!                                keep their last snapshot)
//!  unreadable Policy          -> a Deny of everything in its namespace (fail closed: what it
//!                                would have denied cannot be known)
//! ```
//!
//! Each unreadable object is reported once per error: a Warning Event `Unreadable` on it (what
//! `kubectl describe` shows) and a log line. Not in its status: the API server refuses every
//! write to an object that no longer matches its schema, status included (its CEL rules are
//! evaluated on the whole object). The stand-in Policy is marked ([`STAND_IN`]) so the status
//! pass leaves it alone.

use crate::context::Context;
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::discovery::ApiResource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use rustronaut_crds::{Gateway, Policy, Resource as RtnResource, Tenant};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

/// Annotation on a stand-in object (in the caches only, never written): the read error.
pub const STAND_IN: &str = "rustronaut.io/unreadable";

/// Whether `meta` is a stand-in's: the status pass writes nothing for it.
pub fn is_stand_in(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STAND_IN))
}

/// What an unreadable object of a kind becomes in the caches.
pub trait Unreadable: Resource<DynamicType = ()> + Sized {
    /// The stand-in for an unreadable object with `meta`: None to leave it out.
    fn stand_in(meta: &ObjectMeta) -> Option<Self>;

    /// An object with `meta` whose only use is to be removed from a cache (a store finds an
    /// object by name and namespace).
    fn tombstone(meta: &ObjectMeta) -> Self;
}

fn from_json<K: DeserializeOwned>(meta: &ObjectMeta, spec: serde_json::Value) -> K {
    serde_json::from_value(json!({"metadata": meta, "spec": spec}))
        .expect("a constant spec of the kind")
}

impl Unreadable for Tenant {
    fn stand_in(_: &ObjectMeta) -> Option<Self> {
        None
    }
    fn tombstone(meta: &ObjectMeta) -> Self {
        from_json(meta, json!({"namespaces": []}))
    }
}

impl Unreadable for RtnResource {
    fn stand_in(_: &ObjectMeta) -> Option<Self> {
        None
    }
    fn tombstone(meta: &ObjectMeta) -> Self {
        from_json(meta, json!({"gatewayRefs": [], "protocol": "HTTP"}))
    }
}

impl Unreadable for Gateway {
    fn stand_in(_: &ObjectMeta) -> Option<Self> {
        None
    }
    fn tombstone(meta: &ObjectMeta) -> Self {
        from_json(meta, json!({"listeners": []}))
    }
}

impl Unreadable for Policy {
    /// A Deny of every Resource in the Policy's namespace, from any address.
    fn stand_in(meta: &ObjectMeta) -> Option<Self> {
        let mut meta = meta.clone();
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(STAND_IN.to_string(), "true".to_string());
        Some(from_json(
            &meta,
            json!({
                "targetSelector": {},
                "action": "Deny",
                "rules": [{"name": "unreadable-policy-fails-closed",
                           "from": [{"sourceCIDRs": {"cidrs": ["0.0.0.0/0", "::/0"]}}]}],
            }),
        ))
    }
    fn tombstone(meta: &ObjectMeta) -> Self {
        from_json(meta, json!({"action": "Deny", "rules": []}))
    }
}

/// Unreadable objects seen and the error each was reported with (so each is reported once).
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<BTreeMap<SeenKey, Entry>>>);

/// One unreadable object: its error, and whether a re-list in progress has not met it yet.
#[derive(Clone)]
struct Entry {
    error: String,
    stale: bool,
}

/// `(kind, namespace, name)` of an unreadable object.
type SeenKey = (String, String, String);

impl Seen {
    /// Records `error` for `kind` `ns/name`; true when it is new (or changed).
    fn record(&self, kind: &str, meta: &ObjectMeta, error: &str) -> bool {
        let key = (
            kind.to_string(),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Entry {
            error: error.to_string(),
            stale: false,
        };
        m.insert(key, entry).map(|e| e.error).as_deref() != Some(error)
    }

    /// A re-list of `kind` starts: what it does not list again has gone while the watch was
    /// down (deleted without a Delete event), and is forgotten at [`Self::relisted`].
    fn relisting(&self, kind: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (_, e) in m.iter_mut().filter(|(k, _)| k.0 == kind) {
            e.stale = true;
        }
    }

    /// A re-list of `kind` is complete.
    fn relisted(&self, kind: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, e| k.0 != kind || !e.stale);
    }

    /// Forgets `kind` `ns/name` (readable again, or deleted).
    fn forget(&self, kind: &str, meta: &ObjectMeta) {
        let key = (
            kind.to_string(),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// How many unreadable objects there are now.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What one guarded event becomes (pure: tested without a cluster).
fn translate<K: Unreadable>(
    event: watcher::Event<DeserializeGuard<K>>,
) -> (Option<watcher::Event<K>>, Option<InvalidObject>) {
    use watcher::Event as E;
    match event {
        E::Init => (Some(E::Init), None),
        E::InitDone => (Some(E::InitDone), None),
        E::InitApply(DeserializeGuard(Ok(k))) => (Some(E::InitApply(k)), None),
        E::Apply(DeserializeGuard(Ok(k))) => (Some(E::Apply(k)), None),
        E::Delete(DeserializeGuard(Ok(k))) => (Some(E::Delete(k)), None),
        E::InitApply(DeserializeGuard(Err(bad))) => {
            (K::stand_in(&bad.metadata).map(E::InitApply), Some(bad))
        }
        E::Apply(DeserializeGuard(Err(bad))) => {
            let e = match K::stand_in(&bad.metadata) {
                Some(k) => E::Apply(k),
                None => E::Delete(K::tombstone(&bad.metadata)),
            };
            (Some(e), Some(bad))
        }
        E::Delete(DeserializeGuard(Err(bad))) => {
            (Some(E::Delete(K::tombstone(&bad.metadata))), None)
        }
    }
}

/// A watch of every `K` in the cluster that reads unreadable objects as [`Unreadable`] says,
/// reporting each through `ctx`.
pub fn guarded<K>(
    ctx: Context,
    seen: Seen,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Unreadable + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<DeserializeGuard<K>> = Api::all(ctx.client.clone());
    watcher(api, watcher::Config::default()).filter_map(move |r| {
        let out = match r {
            Err(e) => Some(Err(e)),
            Ok(event) => {
                let readable_meta = match &event {
                    watcher::Event::Apply(DeserializeGuard(Ok(k)))
                    | watcher::Event::InitApply(DeserializeGuard(Ok(k)))
                    | watcher::Event::Delete(DeserializeGuard(Ok(k))) => Some(k.meta().clone()),
                    watcher::Event::Delete(DeserializeGuard(Err(bad))) => Some(bad.metadata.clone()),
                    _ => None,
                };
                if let Some(meta) = readable_meta {
                    seen.forget(&K::kind(&()), &meta);
                }
                match &event {
                    watcher::Event::Init => seen.relisting(&K::kind(&())),
                    watcher::Event::InitDone => seen.relisted(&K::kind(&())),
                    _ => {}
                }
                let (event, bad) = translate(event);
                if let Some(bad) = bad
                    && seen.record(&K::kind(&()), &bad.metadata, &bad.error)
                {
                    tracing::warn!(
                        kind = K::kind(&()).as_ref(),
                        object = %format!("{}/{}", bad.metadata.namespace.clone().unwrap_or_default(), bad.metadata.name.clone().unwrap_or_default()),
                        error = %bad.error,
                        "cannot read this object; the others are served"
                    );
                    tokio::spawn(report::<K>(ctx.clone(), bad));
                }
                event.map(|e| Ok(e.modify(slim)))
            }
        };
        std::future::ready(out)
    })
}

/// Drops what no reader of the caches looks at and what can be as large as the object itself:
/// `managedFields` (an entry per field manager: the person, GitOps, the operator's status
/// writes) and `kubectl apply`'s last-applied copy. Measured in issue 17: every cached
/// object and every world view carried them. Also applied to the cluster-wide caches of
/// Services, EndpointSlices and Namespaces ([`crate::cache`]).
pub(crate) fn slim<K: Resource>(k: &mut K) {
    let meta = k.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// `kubectl apply`'s copy of the applied object, in an annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Warning Event and the status of an unreadable object (best effort: logged on failure).
async fn report<K: Resource<DynamicType = ()>>(ctx: Context, bad: InvalidObject) {
    let ar = ApiResource::erase::<K>(&());
    let name = bad.metadata.name.clone().unwrap_or_default();
    let ns = bad.metadata.namespace.clone();
    let message = format!(
        "the operator cannot read this object ({}); it is {}. Fix or re-apply it.",
        bad.error,
        if K::kind(&()) == "Policy" {
            "replaced by a Deny of every Resource in its namespace until then (fail closed)"
        } else {
            "left out until then"
        }
    );
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        name: Some(name.clone()),
        namespace: ns,
        uid: bad.metadata.uid.clone(),
        ..Default::default()
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let event = Event {
        type_: EventType::Warning,
        reason: "Unreadable".into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Read".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(object = %name, error = %e, "could not publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use kube::core::error_boundary::InvalidObject;

    fn bad(name: &str) -> DeserializeGuard<Policy> {
        DeserializeGuard(Err(InvalidObject {
            error: "spec.rules: invalid type".into(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
        }))
    }

    #[test]
    fn cached_objects_lose_managed_fields_and_the_last_applied_copy_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut p: Policy = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "p", "namespace": "apps",
                "annotations": {LAST_APPLIED: "{\"big\": true}", STAND_IN: "kept"}},
            "spec": {"targetRefs": [{"kind": "Resource", "name": "app"}], "action": "Allow",
                "rules": [{"name": "dev", "from": [{"user": {"idp": "i", "groups": ["dev"]}}]}]},
        }))
        .unwrap();
        p.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            ..Default::default()
        }]);
        let before = p.spec.clone();
        let p = watcher::Event::Apply(p).modify(slim);
        let watcher::Event::Apply(p) = p else {
            unreachable!()
        };
        assert_eq!(p.metadata.managed_fields, None);
        let annotations = p.metadata.annotations.unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        assert_eq!(annotations[STAND_IN], "kept");
        assert_eq!(p.spec, before);

        let mut r: Policy = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "q", "namespace": "apps",
                "annotations": {LAST_APPLIED: "{}"}},
            "spec": {"targetRefs": [{"kind": "Resource", "name": "app"}], "action": "Allow",
                "rules": [{"name": "dev", "from": [{"user": {"idp": "i", "groups": ["dev"]}}]}]},
        }))
        .unwrap();
        slim(&mut r);
        assert_eq!(r.metadata.annotations, None);
    }

    #[test]
    fn an_unreadable_policy_becomes_a_deny_of_its_namespace_and_other_kinds_are_left_out() {
        let (e, reported) = translate(watcher::Event::InitApply(bad("p")));
        let Some(watcher::Event::InitApply(p)) = e else {
            panic!("a stand-in")
        };
        assert!(reported.is_some());
        assert_eq!(p.name_any(), "p");
        assert!(
            is_stand_in(p.meta()),
            "marked, so no status is written for it"
        );
        assert_eq!(p.spec.action, rustronaut_crds::policy::PolicyAction::Deny);
        assert_eq!(
            p.spec.target_selector,
            Some(Default::default()),
            "every Resource of the namespace"
        );

        let r: DeserializeGuard<RtnResource> = DeserializeGuard(Err(InvalidObject {
            error: "x".into(),
            metadata: ObjectMeta {
                name: Some("r".into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
        }));
        let (e, _) = translate(watcher::Event::InitApply(r.clone()));
        assert!(e.is_none(), "left out of the initial list");
        let (e, _) = translate(watcher::Event::Apply(r));
        let Some(watcher::Event::Delete(gone)) = e else {
            panic!("an update to unreadable removes the cached version")
        };
        assert_eq!(gone.name_any(), "r");
    }

    #[test]
    fn every_tombstone_deserializes() {
        let m = ObjectMeta {
            name: Some("x".into()),
            namespace: Some("n".into()),
            ..Default::default()
        };
        let _ = Tenant::tombstone(&m);
        let _ = RtnResource::tombstone(&m);
        let _ = Gateway::tombstone(&m);
        let _ = Policy::tombstone(&m);
        assert!(Tenant::stand_in(&m).is_none());
    }

    #[test]
    fn a_relist_forgets_the_unreadable_objects_it_no_longer_lists() {
        let seen = Seen::default();
        let meta = |n: &str| ObjectMeta {
            name: Some(n.into()),
            namespace: Some("apps".into()),
            ..Default::default()
        };
        assert!(seen.record("Policy", &meta("a"), "e"));
        assert!(seen.record("Policy", &meta("b"), "e"));
        assert!(seen.record("Resource", &meta("r"), "e"));
        assert!(!seen.record("Policy", &meta("a"), "e"), "reported once");
        // The watch was down while "b" was deleted; the re-list lists "a" only.
        seen.relisting("Policy");
        assert!(
            !seen.record("Policy", &meta("a"), "e"),
            "still reported once"
        );
        seen.relisted("Policy");
        assert_eq!(seen.count(), 2, "a (still unreadable) and the Resource");
        assert!(seen.record("Policy", &meta("b"), "e"), "b is news again");
    }
}

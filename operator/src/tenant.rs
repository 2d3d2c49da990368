//! The Tenant controller: claims, status, and what a Tenant puts into the namespaces it holds.
//!
//! ```text
//!  read    the caches -> World + Claims (crds::tenancy::resolve_claims: the oldest claim wins)
//!  status  conditions::tenant_status: Accepted (False/NamespaceClaimed|DomainClaimed naming the
//!          holder, or Invalid), ResolvedRefs (identity-provider Secrets), Ready,
//!          observedGeneration, usage
//!  apply   per held namespace that exists:
//!            Namespace      label rustronaut.io/tenant=<tenant> (only that field is applied)
//!            NetworkPolicy  rustronaut-tenant-isolation: default-deny ingress except from
//!                           the admitting gateways' pods; owned by the Tenant
//!            NetworkPolicy  rustronaut-tenant-isolation-sidecars: default-deny ingress for
//!                           pods with an injected sidecar (their sidecar Resource's own
//!                           policy opens the sidecar ports); owned by the Tenant
//!            RoleBinding    rustronaut-tenant-admins: spec.admins -> ClusterRole
//!                           rustronaut-tenant-admin; owned by the Tenant
//!  prune   labels, NetworkPolicies and RoleBindings in namespaces the Tenant no longer holds
//! ```
//!
//! A pass over all Tenants (see [`crate::pass`]), because a claim is decided among all of
//! them: deleting the older Tenant hands its namespaces to the younger one. Tenants are
//! cluster-scoped, so they may own namespaced objects: deleting a Tenant lets the garbage
//! collector remove its NetworkPolicies and RoleBindings; the next pass removes its labels.
//!
//! The admins' RoleBinding refers to a ClusterRole instead of a Role per namespace so the
//! operator never needs the permissions it hands out (it holds only `bind` on that one
//! ClusterRole, see [`crate::rbac`]).

use crate::apply::{apply, apply_status};
use crate::cache::Stores;
use crate::conditions::{newly_failed, tenant_status};
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::meta::labels;
use crate::status::publish_warning;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::Recorder;
use kube::{Resource, ResourceExt};
use rustronaut_compile::snapshot::{admits, missing_idp_secrets};
use rustronaut_crds::Tenant;
use rustronaut_crds::conditions::types;
use rustronaut_crds::resource::sidecar_names;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// The kind label of this controller's metrics.
pub const KIND: &str = "Tenant";
/// The label naming the Tenant that holds a namespace (and that owns generated objects).
pub const TENANT_LABEL: &str = "rustronaut.io/tenant";
/// Name of the NetworkPolicy in every held namespace.
pub const NETWORK_POLICY: &str = "rustronaut-tenant-isolation";
/// Name of the NetworkPolicy for the sidecar-protected pods of every held namespace.
pub const SIDECAR_NETWORK_POLICY: &str = "rustronaut-tenant-isolation-sidecars";
/// Name of the admins' RoleBinding in every held namespace.
pub const ADMIN_BINDING: &str = "rustronaut-tenant-admins";

/// What the controller remembers between passes: a digest of the intent last applied per
/// object, so an unchanged intent is not re-sent on every pass. Dropped on each resync, which
/// repairs drift (someone deleting or editing a generated object). A digest, not the body:
/// the bodies of 200 Tenants' NetworkPolicies and RoleBindings were 3 MB of the operator's
/// live heap (heaptrack at 10,000 objects, issue 17).
#[derive(Default)]
pub struct State {
    applied: Mutex<BTreeMap<String, Digest>>,
}

/// SHA-256 of an applied body's JSON text.
type Digest = [u8; 32];

/// The [`Digest`] of `body`.
fn digest(body: &Value) -> Digest {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &text);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Labels of every object the Tenant controller generates.
fn object_labels(tenant: &str) -> Value {
    json!({
        labels::MANAGED_BY: labels::OPERATOR,
        TENANT_LABEL: tenant,
    })
}

/// The label intent for a held namespace: only this label, so other labels and fields stay
/// with whoever set them.
pub fn namespace_label(namespace: &str, tenant: Option<&str>) -> Value {
    let mut meta = json!({"name": namespace});
    if let Some(t) = tenant {
        meta["labels"] = json!({TENANT_LABEL: t});
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
}

/// Default-deny ingress for every pod of `namespace` except the gateway pods, admitting only
/// the pods of the Gateways that admit this tenant (`gateways`: namespace and name of each),
/// each peer pinned to its Gateway's namespace by name (`kubernetes.io/metadata.name`, which
/// the apiserver sets and nobody can change) and to the labels the operator gives that
/// Gateway's pods: a tenant's workloads are reachable only through a gateway that serves the
/// tenant, which enforces the policies. A pod elsewhere that copies the gateway labels is not
/// admitted (it would have been when the peer was "those labels in any namespace": see
/// docs/security.md). No admitting Gateway: no ingress at all.
///
/// Gateway pods and tunnel hub pods in the namespace are not selected, so their own
/// listeners stay reachable (a hub's WireGuard port must take UDP from sites outside the
/// cluster; its stream port authenticates gateways with a token).
///
/// Pods with an injected sidecar (label [`sidecar_names::INJECTED_LABEL`]) are not selected
/// either: NetworkPolicies add up, so admitting the gateways here would admit them to those
/// pods' application ports too, past the sidecar. [`sidecar_network_policy`] closes them
/// instead.
pub fn network_policy(t: &Tenant, namespace: &str, gateways: &BTreeSet<(String, String)>) -> Value {
    let from: Vec<Value> = gateways
        .iter()
        .map(|(gw_ns, gw)| {
            json!({
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": gw_ns}},
                "podSelector": {"matchLabels": {labels::NAME: labels::GATEWAY, labels::INSTANCE: gw}},
            })
        })
        .collect();
    let ingress = if from.is_empty() {
        json!([])
    } else {
        json!([{"from": from}])
    };
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY, "namespace": namespace,
            "labels": object_labels(&t.name_any()),
            "ownerReferences": t.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "podSelector": {"matchExpressions": [
                {"key": labels::NAME, "operator": "NotIn", "values": [labels::GATEWAY, labels::HUB]},
                {"key": sidecar_names::INJECTED_LABEL, "operator": "DoesNotExist"},
            ]},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    })
}

/// Default-deny ingress for the pods of `namespace` that carry an injected sidecar: nothing
/// from here; their sidecar Resource's NetworkPolicy (`crate::sidecar::objects`) opens the
/// sidecar ports to every caller, since the sidecar judges each request. The application
/// ports stay reachable from inside the pod only, edge gateways included.
///
/// Why a policy of its own rather than leaving these pods to the Resource's: when that
/// Resource is deleted or its selector stops matching a pod, the pod still runs with its
/// label and must stay closed (fail closed) instead of falling out of every policy, which
/// would open it to the whole cluster. A tenant that puts the label on a pod by hand only
/// closes its own pod.
pub fn sidecar_network_policy(t: &Tenant, namespace: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {
            "name": SIDECAR_NETWORK_POLICY, "namespace": namespace,
            "labels": object_labels(&t.name_any()),
            "ownerReferences": t.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "podSelector": {"matchExpressions": [
                {"key": sidecar_names::INJECTED_LABEL, "operator": "Exists"},
            ]},
            "policyTypes": ["Ingress"],
            "ingress": [],
        },
    })
}

/// The admins' RoleBinding in `namespace`, or None when the Tenant names no admins.
pub fn admin_binding(t: &Tenant, namespace: &str) -> Option<Value> {
    let admins = t.spec.admins.as_ref()?;
    let subjects: Vec<Value> =
        admins
            .groups
            .iter()
            .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
            .chain(admins.users.iter().map(
                |u| json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u}),
            ))
            .collect();
    if subjects.is_empty() {
        return None;
    }
    Some(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {
            "name": ADMIN_BINDING, "namespace": namespace,
            "labels": object_labels(&t.name_any()),
            "ownerReferences": t.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": crate::rbac::TENANT_ADMIN},
        "subjects": subjects,
    }))
}

/// A Tenant's status to write: name, body, reference, Events (reason, message).
type StatusWrite = (String, Value, ObjectReference, Vec<(String, String)>);

/// Everything one pass wants, computed from the caches.
#[derive(Default)]
struct Plan {
    /// Tenant name -> new status (only where it differs), its reference and the
    /// (reason, message) of conditions that just failed (Warning Events).
    statuses: Vec<StatusWrite>,
    /// Namespace label intents to apply (namespace -> intent).
    labels: BTreeMap<String, Value>,
    /// Generated objects: (kind, namespace, name) -> intent.
    objects: BTreeMap<(&'static str, String, String), Value>,
}

/// A namespace being deleted.
fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

fn plan(stores: &Stores, now: &Time) -> Plan {
    let world = stores.world_all();
    let claims = world.claims();
    let usage = crate::conditions::Usage::of(&world);
    let mut plan = Plan::default();
    for t in &world.tenants {
        if t.meta().deletion_timestamp.is_some() {
            continue;
        }
        let name = t.name_any();
        let missing = missing_idp_secrets(t, stores);
        let status = tenant_status(&usage, &claims, t, &missing, now);
        if t.status.as_ref() != Some(&status) {
            let previous = t.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
            let events = newly_failed(
                previous,
                &status.conditions,
                &[types::ACCEPTED, types::RESOLVED_REFS],
            )
            .into_iter()
            .map(|c| (c.reason.clone(), c.message.clone()))
            .collect();
            plan.statuses.push((
                name.clone(),
                json!({"apiVersion": Tenant::api_version(&()), "kind": Tenant::kind(&()),
                       "status": status}),
                t.object_ref(&()),
                events,
            ));
        }
    }
    for (ns, holder) in &claims.namespaces {
        let Some(t) = world.tenant(holder) else {
            continue;
        };
        if t.meta().deletion_timestamp.is_some() {
            continue;
        }
        let Some(namespace) = stores
            .namespaces
            .get(&kube::runtime::reflector::ObjectRef::new(ns))
        else {
            // Not created yet: the Namespace watch runs another pass when it is.
            continue;
        };
        if terminating(&namespace) {
            // Nothing new can be created in it, and everything in it is going anyway.
            continue;
        }
        if namespace.labels().get(TENANT_LABEL) != Some(holder) {
            plan.labels
                .insert(ns.clone(), namespace_label(ns, Some(holder)));
        }
        let admitting: BTreeSet<(String, String)> = world
            .gateways
            .iter()
            .filter(|g| g.meta().deletion_timestamp.is_none() && admits(g, t, &claims))
            .map(|g| (g.namespace().unwrap_or_default(), g.name_any()))
            .collect();
        plan.objects.insert(
            ("NetworkPolicy", ns.clone(), NETWORK_POLICY.into()),
            network_policy(t, ns, &admitting),
        );
        plan.objects.insert(
            ("NetworkPolicy", ns.clone(), SIDECAR_NETWORK_POLICY.into()),
            sidecar_network_policy(t, ns),
        );
        if let Some(rb) = admin_binding(t, ns) {
            plan.objects
                .insert(("RoleBinding", ns.clone(), ADMIN_BINDING.into()), rb);
        }
    }
    // Labels this operator set on namespaces that are no longer held by that tenant.
    for namespace in stores.namespaces.state() {
        let ns = namespace.name_any();
        let Some(label) = namespace.labels().get(TENANT_LABEL) else {
            continue;
        };
        if terminating(&namespace) {
            continue;
        }
        let ours = namespace
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER));
        if ours && claims.tenant_of(&ns) != Some(label.as_str()) {
            let holder = claims.tenant_of(&ns).filter(|h| {
                world
                    .tenant(h)
                    .is_some_and(|t| t.meta().deletion_timestamp.is_none())
            });
            plan.labels.insert(ns.clone(), namespace_label(&ns, holder));
        }
    }
    plan
}

/// One pass over every Tenant: status, namespace labels, generated objects, pruning.
pub async fn pass(
    ctx: &Context,
    stores: &Stores,
    state: &State,
    resync: bool,
) -> Result<(), Error> {
    stores.ready().await?;
    stores.refresh_secrets(&ctx.client).await?;
    if resync && let Ok(mut a) = state.applied.lock() {
        a.clear();
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let plan = plan(stores, &now);
    let client = &ctx.client;
    let mut first_error: Option<Error> = None;

    let tenants: Api<Tenant> = Api::all(client.clone());
    let recorder = Recorder::new(client.clone(), ctx.reporter.clone());
    let mut statuses: Vec<crate::apply::Write<'_>> = Vec::new();
    for (name, body, reference, events) in &plan.statuses {
        let (tenants, recorder) = (&tenants, &recorder);
        statuses.push(Box::pin(async move {
            match apply_status(tenants, name, body).await {
                Ok(_) => {
                    ctx.metrics.status_written("Tenant");
                    for (reason, message) in events {
                        publish_warning(recorder, reference, reason.clone(), message.clone()).await;
                    }
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(source) => Err(Error::ObjectStatus {
                    kind: "Tenant",
                    namespace: String::new(),
                    name: name.clone(),
                    source,
                }),
            }
        }));
    }
    if let Err(e) = crate::apply::all(statuses).await {
        first_error.get_or_insert(e);
    }
    // Labels and generated objects: several requests in flight (a pass after a bulk apply
    // of 200 Tenants wrote 600 objects, one round trip at a time: 17 s, issue 17).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // A Vec of boxed futures, not a lazy iterator: the pass's future must stay Send for any
    // lifetime, which iterator adaptors over borrowed closures cannot promise.
    let mut writes: Vec<crate::apply::Write<'_>> = Vec::new();
    for (ns, body) in &plan.labels {
        let namespaces = namespaces.clone();
        writes.push(Box::pin(async move {
            apply(&namespaces, ns, body)
                .await
                .map(drop)
                .map_err(|source| Error::Apply {
                    kind: "Namespace",
                    namespace: String::new(),
                    name: ns.clone(),
                    source,
                })
        }));
    }
    for ((kind, ns, name), body) in &plan.objects {
        let key = format!("{kind}/{ns}/{name}");
        let body_digest = digest(body);
        let unchanged = state
            .applied
            .lock()
            .is_ok_and(|a| a.get(&key) == Some(&body_digest));
        if unchanged {
            continue;
        }
        writes.push(Box::pin(async move {
            let result = match *kind {
                "NetworkPolicy" => {
                    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
                    apply(&api, name, body).await.map(drop)
                }
                _ => {
                    let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
                    apply(&api, name, body).await.map(drop)
                }
            };
            match result {
                Ok(()) => {
                    if let Ok(mut a) = state.applied.lock() {
                        a.insert(key, body_digest);
                    }
                    Ok(())
                }
                Err(source) => Err(Error::Apply {
                    kind,
                    namespace: ns.clone(),
                    name: name.clone(),
                    source,
                }),
            }
        }));
    }
    if let Err(e) = crate::apply::all(writes).await {
        first_error.get_or_insert(e);
    }
    if let Err(e) = prune::<NetworkPolicy>(ctx, "NetworkPolicy", &plan, state).await {
        first_error.get_or_insert(e);
    }
    if let Err(e) = prune::<RoleBinding>(ctx, "RoleBinding", &plan, state).await {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// Deletes the generated objects of `kind` that the plan no longer wants (a namespace the
/// Tenant lost or dropped, admins removed). Objects of deleted Tenants go by garbage
/// collection; those still present are deleted here too.
async fn prune<K>(
    ctx: &Context,
    kind: &'static str,
    plan: &Plan,
    state: &State,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let all: Api<K> = Api::all(ctx.client.clone());
    let selector = format!("{},{TENANT_LABEL}", labels::MANAGED_SELECTOR);
    let list = all
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::List { kind, source })?;
    let wanted: BTreeSet<(String, String)> = plan
        .objects
        .keys()
        .filter(|(k, _, _)| *k == kind)
        .map(|(_, ns, name)| (ns.clone(), name.clone()))
        .collect();
    for obj in list.items {
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        if wanted.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind,
                    namespace: ns,
                    name,
                    source,
                });
            }
        }
        if let Ok(mut a) = state.applied.lock() {
            a.remove(&format!("{kind}/{ns}/{name}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(admins: Value) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "uid": "u-1"},
            "spec": {"namespaces": ["apps"], "admins": admins}
        }))
        .unwrap()
    }

    #[test]
    fn the_network_policy_admits_only_the_admitting_gateways_pods_and_is_owned_by_the_tenant() {
        let gateways: BTreeSet<(String, String)> =
            [("edge".to_string(), "public".to_string())].into();
        let np: NetworkPolicy =
            serde_json::from_value(network_policy(&tenant(json!({})), "apps", &gateways)).unwrap();
        let owner = &np.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Tenant", "u-1"));
        assert_eq!(np.metadata.labels.as_ref().unwrap()[TENANT_LABEL], "acme");
        let spec = np.spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let ingress = spec.ingress.unwrap();
        assert_eq!(
            ingress.len(),
            1,
            "one rule: from the admitting gateways' pods"
        );
        let peers = ingress[0].from.as_ref().unwrap();
        assert_eq!(peers.len(), 1, "one peer per admitting Gateway");
        let peer = &peers[0];
        assert_eq!(
            peer.namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "edge",
            "only the Gateway's own namespace, never any namespace"
        );
        let pods = peer
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(pods[labels::NAME], labels::GATEWAY);
        assert_eq!(pods[labels::INSTANCE], "public", "only that Gateway's pods");
        assert!(ingress[0].ports.is_none());
        // No Gateway admits the tenant: nothing may come in.
        let closed: NetworkPolicy =
            serde_json::from_value(network_policy(&tenant(json!({})), "apps", &BTreeSet::new()))
                .unwrap();
        assert_eq!(closed.spec.unwrap().ingress.unwrap().len(), 0);
        let selected = spec.pod_selector.unwrap().match_expressions.unwrap();
        assert_eq!(selected[0].operator, "NotIn", "gateway pods stay reachable");
        assert_eq!(
            selected[0].values.as_deref().unwrap(),
            [labels::GATEWAY, labels::HUB],
            "and so do tunnel hub pods"
        );
        assert_eq!(
            (selected[1].key.as_str(), selected[1].operator.as_str()),
            (sidecar_names::INJECTED_LABEL, "DoesNotExist"),
            "pods with a sidecar are left out: admitting the gateways would open their app ports"
        );
    }

    #[test]
    fn pods_with_an_injected_sidecar_are_closed_by_a_policy_of_their_own() {
        let np: NetworkPolicy =
            serde_json::from_value(sidecar_network_policy(&tenant(json!({})), "apps")).unwrap();
        assert_eq!(np.metadata.name.as_deref(), Some(SIDECAR_NETWORK_POLICY));
        assert_eq!(np.metadata.namespace.as_deref(), Some("apps"));
        let owner = &np.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Tenant", "u-1"));
        assert_eq!(np.metadata.labels.as_ref().unwrap()[TENANT_LABEL], "acme");
        let spec = np.spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        assert_eq!(
            spec.ingress.unwrap().len(),
            0,
            "nothing comes in through this one"
        );
        let selected = spec.pod_selector.unwrap().match_expressions.unwrap();
        assert_eq!(selected.len(), 1);
        assert_eq!(
            (selected[0].key.as_str(), selected[0].operator.as_str()),
            (sidecar_names::INJECTED_LABEL, "Exists")
        );
    }

    #[test]
    fn admins_are_bound_to_the_tenant_admin_cluster_role() {
        assert!(admin_binding(&tenant(json!({})), "apps").is_none());
        let rb: RoleBinding = serde_json::from_value(
            admin_binding(
                &tenant(json!({"groups": ["acme-admins"], "users": ["ann"]})),
                "apps",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(rb.role_ref.kind, "ClusterRole");
        assert_eq!(rb.role_ref.name, crate::rbac::TENANT_ADMIN);
        let subjects = rb.subjects.unwrap();
        assert_eq!(
            subjects
                .iter()
                .map(|s| (s.kind.as_str(), s.name.as_str()))
                .collect::<Vec<_>>(),
            [("Group", "acme-admins"), ("User", "ann")]
        );
    }

    #[test]
    fn the_namespace_intent_is_just_the_label() {
        assert_eq!(
            namespace_label("apps", Some("acme")),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "apps", "labels": {TENANT_LABEL: "acme"}}})
        );
        assert_eq!(
            namespace_label("apps", None)["metadata"],
            json!({"name": "apps"}),
            "an empty intent releases the label"
        );
    }
}

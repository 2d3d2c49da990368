//! The `build` step of the sidecar reconciler: pure functions from a sidecar Resource (and
//! its compiled snapshot) to the one [`Desired`] value the reconciler applies. No client, no
//! I/O: each object is tested as "Resource in, whole JSON out".
//!
//! Every object lives in the Resource's namespace, is named
//! [`sidecar_names::snapshot`]`(<resource>)` (one name for the four kinds: they never
//! collide, and the Secret's name is the contract with the injected sidecar), carries a
//! controller ownerReference to the Resource (so the garbage collector removes it with the
//! Resource) and the labels of [`labels`].

use crate::context::Settings;
use crate::gateway::objects::{
    CONFIG_VERSION_ANNOTATION, SNAPSHOT_KEY, admin_peers, ingress_rule, typed,
};
use crate::meta::labels as gw;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::{Resource as _, ResourceExt};
use rustronaut_contract::snapshot::Snapshot;
use rustronaut_crds::Resource;
use rustronaut_crds::resource::{SIDECAR_ADMIN_PORT, SIDECAR_CONTAINER, Workload, sidecar_names};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Label values of the objects the sidecar reconciler generates.
pub mod labels {
    /// Value of `app.kubernetes.io/name` on every generated object (the sidecar container's
    /// name): with `app.kubernetes.io/instance` = the Resource's name, what prune selects.
    pub const NAME: &str = super::SIDECAR_CONTAINER;
}

/// Everything one sidecar Resource wants, applied whole by the reconciler (destructured
/// without `..`, so a new field breaks the build until it is applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The snapshot Secret; None when no snapshot could be built, so the last good one
    /// keeps serving the sidecars (never pruned for that reason).
    pub secret: Option<Secret>,
    /// Read access to exactly that Secret.
    pub role: Role,
    /// The Role, for every ServiceAccount of the namespace.
    pub role_binding: RoleBinding,
    /// Ingress to the selected pods only on the sidecar ports (and the admin port).
    pub network_policy: NetworkPolicy,
}

/// The name of every generated object of Resource `res`.
pub fn name(res: &Resource) -> String {
    sidecar_names::snapshot(&res.name_any())
}

fn metadata(res: &Resource) -> Value {
    json!({
        "name": name(res),
        "namespace": res.namespace().unwrap_or_default(),
        "labels": {
            gw::NAME: labels::NAME,
            gw::INSTANCE: res.name_any(),
            gw::MANAGED_BY: gw::OPERATOR,
        },
        "ownerReferences": res.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
    })
}

/// Builds the whole desired state of sidecar Resource `res` (whose `workload` is
/// `workload`); `snapshot` None keeps the current Secret as it is.
pub fn build(
    res: &Resource,
    workload: &Workload,
    snapshot: Option<&Snapshot>,
    settings: &Settings,
) -> Desired {
    Desired {
        secret: snapshot.map(|s| snapshot_secret(res, s)),
        role: role(res),
        role_binding: role_binding(res),
        network_policy: network_policy(res, workload, settings),
    }
}

/// The Secret the injected sidecars load (`--config-from <ns>/<name>`): the snapshot under
/// the same key, with the same version annotation, as an edge Gateway's.
pub fn snapshot_secret(res: &Resource, snapshot: &Snapshot) -> Secret {
    let mut s: Secret = typed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": metadata(res),
        "type": "Opaque",
    }));
    s.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_VERSION_ANNOTATION.into(), snapshot.content_hash());
    s.data = Some(BTreeMap::from([(
        SNAPSHOT_KEY.to_string(),
        ByteString(snapshot.to_json()),
    )]));
    s
}

/// Read access to the snapshot Secret and nothing else. `list`/`watch` with resourceNames
/// are honoured only for requests with a `metadata.name` field selector, which is how the
/// gateway watches its Secret.
pub fn role(res: &Resource) -> Role {
    typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": metadata(res),
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"],
             "resourceNames": [name(res)]},
        ],
    }))
}

/// Binds [`role`] to every ServiceAccount of the Resource's namespace (the Group
/// `system:serviceaccounts:<ns>`).
///
/// Why a whole namespace and not the workload's ServiceAccount: the sidecar runs with the
/// pod's own credentials, and which ServiceAccount a future pod runs as is the pod's choice
/// (any account of its namespace), which neither the webhook nor this reconciler can know
/// in advance. What this grants is small: reading the sidecar configuration of this
/// namespace, which holds this namespace's Policies and its tenant's identity-provider
/// material (API-key hashes, CA bundles, JWKS, OIDC client secrets), material that anyone
/// able to create pods in the namespace could read through a sidecar anyway. Nothing else is
/// granted: no other Secret, no write.
pub fn role_binding(res: &Resource) -> RoleBinding {
    let ns = res.namespace().unwrap_or_default();
    typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": metadata(res),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name(res)},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": format!("system:serviceaccounts:{ns}")}],
    }))
}

/// The NetworkPolicy of the protected pods: ingress only on the sidecar ports (from anywhere:
/// every request is judged by the sidecar's Policies) and on the sidecar's admin port from
/// the namespaces allowed to scrape (`--admin-from-namespaces`). The application ports are
/// left out, so only the pod itself (the sidecar, over loopback) reaches them. The kubelet's
/// probes come from the node, which NetworkPolicies do not block.
///
/// NetworkPolicies add up: another policy that selects the same pods and admits more (a
/// namespace-wide "allow from my namespace") admits it to the application ports too. The
/// Tenant's own isolation policy therefore leaves injected pods out and closes them with a
/// deny-all policy of their own (`crate::tenant::sidecar_network_policy`), so not even the
/// edge gateways reach the application ports.
pub fn network_policy(res: &Resource, workload: &Workload, settings: &Settings) -> NetworkPolicy {
    let ports: Vec<Value> = workload
        .ports
        .iter()
        .map(|p| json!({"port": p.sidecar_port, "protocol": "TCP"}))
        .collect();
    let admin = vec![json!({"port": SIDECAR_ADMIN_PORT, "protocol": "TCP"})];
    let ingress: Vec<Value> = [
        ingress_rule(ports, None),
        ingress_rule(admin, Some(admin_peers(settings, Vec::new()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    typed(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(res),
        "spec": {
            "podSelector": workload.selector,
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }))
}

/// The name of `res`'s session key Secret for `tenant`
/// (`<resource>-sidecar-session-<tenant>`), or Err with it when it is longer than a Secret
/// name may be (that tenant's OIDC login then stays off at this Resource's sidecars).
pub fn session_secret_name(res: &Resource, tenant: &str) -> Result<String, String> {
    let name = rustronaut_compile::session::secret_name(
        &rustronaut_compile::sidecar::session_owner(&res.name_any()),
        tenant,
    );
    if name.len() <= crate::gateway::session::MAX_NAME_LEN {
        Ok(name)
    } else {
        Err(name)
    }
}

/// The session key Secret `name` of `tenant` for `res`, holding one key `id`: created once,
/// never applied (people add newer keys to rotate, as for a Gateway's; see
/// `crate::gateway::session`), owned by the Resource.
pub fn session_secret(res: &Resource, tenant: &str, name: &str, id: &str, key: &str) -> Secret {
    use crate::gateway::session::TENANT_ANNOTATION;
    use crate::meta::labels::{COMPONENT, SESSION_KEYS};
    let mut meta = metadata(res);
    meta["name"] = json!(name);
    meta["labels"][COMPONENT] = json!(SESSION_KEYS);
    meta["annotations"] = json!({TENANT_ANNOTATION: tenant});
    let mut s: Secret = typed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
    }));
    s.data = Some(BTreeMap::from([(
        rustronaut_compile::session::entry_name(id),
        ByteString(key.as_bytes().to_vec()),
    )]));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource() -> Resource {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "res-uid"},
            "spec": {
                "protocol": "HTTP",
                "workload": {
                    "selector": {"matchLabels": {"app": "orders"}},
                    "ports": [{"port": 8080, "sidecarPort": 15080},
                              {"port": 9090, "sidecarPort": 15090, "name": "grpc"}]
                }
            }
        }))
        .unwrap()
    }

    fn meta() -> Value {
        json!({
            "name": "orders-sidecar", "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "rustronaut-sidecar",
                       "app.kubernetes.io/instance": "orders",
                       "app.kubernetes.io/managed-by": "rustronaut-operator"},
            "ownerReferences": [{"apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
                                 "name": "orders", "uid": "res-uid", "controller": true}],
        })
    }

    #[test]
    fn the_desired_state_is_whole() {
        let res = resource();
        let workload = res.spec.workload.clone().unwrap();
        let mut snapshot = Snapshot::new(rustronaut_contract::snapshot::ObjectRef::new(
            "shop", "orders",
        ));
        snapshot.sidecar = true;
        let settings = Settings {
            admin_from_namespaces: BTreeMap::from([("team".into(), "monitoring".into())]),
            ..Settings::default()
        };
        let Desired {
            secret,
            role,
            role_binding,
            network_policy,
        } = build(&res, &workload, Some(&snapshot), &settings);
        let secret = serde_json::to_value(secret.unwrap()).unwrap();
        let mut m = meta();
        m["annotations"] = json!({"rustronaut.io/config-version": snapshot.content_hash()});
        assert_eq!(
            secret,
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": m, "type": "Opaque",
                "data": {"snapshot.json": ByteString(snapshot.to_json())},
            })
        );
        assert_eq!(
            serde_json::to_value(role).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(),
                "rules": [{"apiGroups": [""], "resources": ["secrets"],
                           "verbs": ["get", "list", "watch"],
                           "resourceNames": ["orders-sidecar"]}],
            })
        );
        assert_eq!(
            serde_json::to_value(role_binding).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": meta(),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": "orders-sidecar"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                              "name": "system:serviceaccounts:shop"}],
            })
        );
        assert_eq!(
            serde_json::to_value(network_policy).unwrap(),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": meta(),
                "spec": {
                    "podSelector": {"matchLabels": {"app": "orders"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {"ports": [{"port": 15080, "protocol": "TCP"},
                                   {"port": 15090, "protocol": "TCP"}]},
                        {"ports": [{"port": 15020, "protocol": "TCP"}],
                         "from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]},
                    ],
                },
            })
        );
    }

    #[test]
    fn a_session_key_secret_is_the_resources_and_marked_for_people_to_rotate() {
        let res = resource();
        let name = session_secret_name(&res, "acme").unwrap();
        assert_eq!(name, "orders-sidecar-session-acme");
        let s = session_secret(&res, "acme", &name, "20261203000000", "a2V5");
        let mut m = meta();
        m["name"] = json!("orders-sidecar-session-acme");
        m["labels"]["app.kubernetes.io/component"] = json!("session-keys");
        m["annotations"] = json!({"rustronaut.io/tenant": "acme"});
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": m, "type": "Opaque",
                   "data": {"key-20261203000000": ByteString(b"a2V5".to_vec())}})
        );
        assert!(session_secret_name(&res, &"t".repeat(240)).is_err());
    }

    #[test]
    fn without_a_snapshot_the_secret_is_left_alone_and_without_scrapers_the_admin_port_is_closed() {
        let res = resource();
        let workload = res.spec.workload.clone().unwrap();
        let d = build(&res, &workload, None, &Settings::default());
        assert!(d.secret.is_none());
        let ingress = d.network_policy.spec.unwrap().ingress.unwrap();
        assert_eq!(ingress.len(), 1, "{ingress:?}");
        let ports: Vec<_> = ingress[0]
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone())
            .collect();
        assert!(
            !ports.contains(&Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)
            )),
            "the application port stays closed"
        );
        assert_eq!(ports.len(), 2);
    }
}

//! Session signing keys: one Secret per Gateway and admitted tenant with an OIDC identity
//! provider, created once by the operator and then the user's to rotate. Pure builders (the
//! `build` step); the I/O is in the Gateway reconcile (`ensure_session_keys`,
//! `prune_sessions`).
//!
//! ```text
//!  <gw>-session-<tenant>   Secret   key-<YYYYMMDDhhmmss UTC>: base64 of 32 random bytes
//!       | created once (never applied, never overwritten); people add newer key-<id> entries
//!       v
//!  GatewayInputs.session_keys[tenant] = its data
//!       | rustronaut_compile::session: newest id first, bad entries skipped with a problem
//!       v
//!  snapshot tenants[].session.signingKeys  (the gateway pods already read <gw>-snapshot)
//! ```
//!
//! **Why a Secret per Gateway and tenant**, not one per tenant: the Secret lives in the
//! Gateway's namespace, which the tenant's own admins may not be able to read, and the
//! Gateway owns it, so it goes when the Gateway goes; a tenant's sessions at one Gateway
//! never open at another, and rotating at one Gateway logs nobody out elsewhere.
//!
//! **Why created, not applied** (as the tunnel keys): server-side apply with `force` would
//! replace the keys with new ones whenever the cache lagged, logging everyone out, and would
//! remove the entries people add to rotate. A deleted Secret is made anew at once (all
//! sessions of that tenant at that Gateway end): that is the emergency rotation.
//!
//! **Why the gateway pods need nothing new**: the keys travel inside the snapshot Secret the
//! pods can already read; they are never given read access to the key Secrets.

use super::objects::typed;
use crate::meta::labels;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};
use rustronaut_compile::World;
use rustronaut_compile::session::{entry_name, secret_name, wants_session_keys};
use rustronaut_compile::snapshot::admitted_tenants;
use rustronaut_crds::Gateway;
use serde_json::json;
use std::collections::BTreeMap;

/// Annotation naming the tenant (a label value could not hold every tenant name).
pub const TENANT_ANNOTATION: &str = "rustronaut.io/tenant";
/// Longest Secret name the API server accepts (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Random bytes in a generated key (what AES-256 and HKDF-SHA256 want; the contract's
/// minimum).
pub const KEY_BYTES: usize = 32;

/// The tenants that get a session key Secret at `gw`, with its name: those `gw` admits that
/// have an OIDC identity provider. A name too long for the API server is `Err` with the
/// name (reported, and that tenant's login stays off), so one odd tenant cannot make every
/// reconcile of the Gateway fail.
pub fn wanted(world: &World, gw: &Gateway) -> BTreeMap<String, Result<String, String>> {
    let claims = world.claims();
    let admitted = admitted_tenants(world, gw, &claims);
    world
        .tenants
        .iter()
        .filter(|t| admitted.contains(&t.name_any()) && wants_session_keys(t))
        .map(|t| {
            let name = secret_name(&gw.name_any(), &t.name_any());
            let name = if name.len() <= MAX_NAME_LEN {
                Ok(name)
            } else {
                Err(name)
            };
            (t.name_any(), name)
        })
        .collect()
}

/// Whether `obj` is one of `gw`'s session key Secrets (controller ownerReference and the
/// component label), so pruning never touches anything else.
pub fn is_session_secret(gw: &Gateway, obj: &impl Resource) -> bool {
    let m = obj.meta();
    let label = |k: &str| m.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
    let owned = m
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == gw.meta().uid.as_ref());
    owned
        && m.namespace == gw.namespace()
        && label(labels::COMPONENT) == Some(labels::SESSION_KEYS)
        && label(labels::INSTANCE) == Some(gw.name_any().as_str())
        && label(labels::MANAGED_BY) == Some(labels::OPERATOR)
}

/// A new key id: the UTC time `YYYYMMDDhhmmss`, so ids sort by age as text and as numbers,
/// and a person rotating writes the same form.
pub fn new_id(now: k8s_openapi::jiff::Timestamp) -> String {
    now.strftime("%Y%m%d%H%M%S").to_string()
}

/// A new key: [`KEY_BYTES`] bytes from the operating system's random number generator,
/// base64 (standard, padded: what `openssl rand -base64 32` prints).
pub fn new_key() -> Result<String, ring::error::Unspecified> {
    use base64::Engine;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; KEY_BYTES];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The session key Secret `name` of `tenant` at `gw`, holding one key `id`.
pub fn key_secret(gw: &Gateway, tenant: &str, name: &str, id: &str, key: &str) -> Secret {
    let mut s: Secret = typed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": gw.namespace().unwrap_or_default(),
            "labels": {
                labels::NAME: labels::GATEWAY,
                labels::INSTANCE: gw.name_any(),
                labels::MANAGED_BY: labels::OPERATOR,
                labels::COMPONENT: labels::SESSION_KEYS,
            },
            "annotations": {TENANT_ANNOTATION: tenant},
            "ownerReferences": gw.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
        },
        "type": "Opaque",
    }));
    s.data = Some(BTreeMap::from([(
        entry_name(id),
        ByteString(key.as_bytes().to_vec()),
    )]));
    s
}

/// A Secret's data as the build takes it (entry -> raw bytes).
pub fn data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::edited_by_people;
    use rustronaut_crds::Tenant;
    use std::sync::Arc;

    fn gateway(tenants: serde_json::Value) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "rtn", "uid": "gw-uid"},
            "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}],
                     "tenants": tenants}
        }))
        .unwrap()
    }

    fn tenant(name: &str, ns: &str, oidc: bool) -> Tenant {
        let idp = if oidc {
            json!({"name": "okta", "oidc": {"issuer": "https://idp.example", "clientID": "c",
                                            "clientSecretRef": {"name": "okta"}}})
        } else {
            json!({"name": "ci", "jwt": {"issuer": "https://ci.example", "audiences": ["a"],
                                         "remoteJWKS": {"uri": "https://ci.example/jwks"}}})
        };
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {"namespaces": [ns], "domains": [format!("*.{name}.example")],
                     "identityProviders": [idp]}
        }))
        .unwrap()
    }

    fn world(gw: &Gateway, tenants: Vec<Tenant>) -> World {
        World {
            tenants: tenants.into_iter().map(Arc::new).collect(),
            gateways: vec![Arc::new(gw.clone())],
            resources: Vec::new(),
            policies: Vec::new(),
            namespaces: Default::default(),
        }
    }

    #[test]
    fn admitted_tenants_with_oidc_get_a_secret() {
        let gw = gateway(json!({"from": "All"}));
        let long = "t".repeat(250);
        let w = world(
            &gw,
            vec![
                tenant("acme", "acme", true),
                tenant("globex", "globex", false),
                tenant(&long, "long", true),
            ],
        );
        let got = wanted(&w, &gw);
        assert_eq!(
            got,
            BTreeMap::from([
                ("acme".to_string(), Ok("edge-session-acme".to_string())),
                (long.clone(), Err(format!("edge-session-{long}"))),
            ]),
            "globex has no OIDC provider; a name over 253 characters is refused"
        );
        // Same: only the tenant holding the Gateway's namespace.
        let gw = gateway(json!({"from": "Same"}));
        let w = world(
            &gw,
            vec![tenant("acme", "acme", true), tenant("ops", "rtn", true)],
        );
        assert_eq!(
            wanted(&w, &gw).into_keys().collect::<Vec<_>>(),
            ["ops"],
            "acme is not admitted"
        );
    }

    #[test]
    fn key_secret_whole_object() {
        let gw = gateway(json!({"from": "All"}));
        let s = key_secret(&gw, "acme", "edge-session-acme", "20261201022800", "a2V5");
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {
                    "name": "edge-session-acme", "namespace": "rtn",
                    "labels": {"app.kubernetes.io/name": "rustronaut-gateway",
                               "app.kubernetes.io/instance": "edge",
                               "app.kubernetes.io/managed-by": "rustronaut-operator",
                               "app.kubernetes.io/component": "session-keys"},
                    "annotations": {"rustronaut.io/tenant": "acme"},
                    "ownerReferences": [{"apiVersion": "rustronaut.io/v1alpha1",
                        "kind": "Gateway", "name": "edge", "uid": "gw-uid",
                        "controller": true}],
                },
                "type": "Opaque",
                "data": {"key-20261201022800": "YTJWNQ=="},
            })
        );
        assert!(is_session_secret(&gw, &s));
        assert!(edited_by_people(&s));
        assert_eq!(
            data(&s),
            BTreeMap::from([("key-20261201022800".to_string(), b"a2V5".to_vec())])
        );
        let mut other = gateway(json!({"from": "All"}));
        other.metadata.uid = Some("another".into());
        assert!(!is_session_secret(&other, &s), "another owner");
        let snapshot = super::super::objects::snapshot_secret(
            &gw,
            &rustronaut_contract::snapshot::Snapshot::new(
                rustronaut_contract::snapshot::ObjectRef::new("rtn", "edge"),
            ),
        );
        assert!(!is_session_secret(&gw, &snapshot) && !edited_by_people(&snapshot));
    }

    #[test]
    fn new_keys_are_32_random_bytes_and_ids_are_utc_seconds() {
        use base64::Engine;
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(bytes.len(), KEY_BYTES);
        let (keys, skipped) = rustronaut_compile::session::session_keys(&BTreeMap::from([(
            entry_name("1"),
            a.into_bytes(),
        )]));
        assert!(skipped.is_empty() && keys.len() == 1, "compile accepts it");
        let t: k8s_openapi::jiff::Timestamp = "2026-12-01T02:28:00.5Z".parse().unwrap();
        assert_eq!(new_id(t), "20261201022800");
    }
}

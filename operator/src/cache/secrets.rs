//! Which Secrets the operator holds in memory, and how it gets the data of the ones users
//! name (issue 14, last item: it used to cache every Secret of the cluster, data included).
//!
//! ```text
//!  every Secret, metadata only (no data, no managedFields)  -> which exist, at which
//!     (metadata_watcher, cluster-wide)                         resourceVersion; a change
//!                                                              wakes what it can affect
//!  the operator's own Secrets, whole                        -> snapshots, session and
//!     (label app.kubernetes.io/managed-by=rustronaut-operator)  tunnel keys, hub config
//!  Secrets named by a Tenant or a Gateway listener, whole   -> fetched with GET by
//!     ([`referenced`])                                         [`SecretCache::refresh`] when
//!                                                              their resourceVersion moved
//! ```
//!
//! Why not a watch per referenced Secret or per namespace: which Secrets are named changes
//! with every Tenant and Gateway edit, and restarting watches as it does would lose events
//! between two watches. The metadata watch costs a few hundred bytes per Secret and carries
//! no secret material; the data held is exactly what the snapshots need. What the operator
//! may read is unchanged by this (a metadata watch needs `list`/`watch`, which in Kubernetes
//! RBAC also allow reading data): docs/security.md says so.
//!
//! Every reader of Secret data (a Gateway reconcile, the Tenant pass, the status pass) calls
//! [`SecretCache::refresh`] first, so it sees what the metadata watch has seen.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use rustronaut_crds::{Gateway, Tenant};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// `(namespace, name)` of a Secret.
pub type SecretKey = (String, String);

/// Data of the Secrets users name: key -> (resourceVersion read at, the Secret).
type Held = BTreeMap<SecretKey, (String, Arc<Secret>)>;

/// GETs in flight at once while refreshing.
const CONCURRENCY: usize = 8;

/// The Secrets the operator holds.
#[derive(Clone)]
pub struct SecretCache {
    /// Metadata of every Secret (data, managedFields dropped).
    pub meta: Store<PartialObjectMeta<Secret>>,
    /// The operator's own Secrets, whole.
    pub own: Store<Secret>,
    /// Data of the Secrets users name, with the resourceVersion it was read at.
    referenced: Arc<Mutex<Held>>,
}

/// Every Secret named by `tenants` (identity-provider material, in the Tenant's admin
/// namespace) and by the listeners of `gateways` (TLS certificates, in the Gateway's
/// namespace).
pub fn referenced<'a>(
    tenants: impl IntoIterator<Item = &'a Tenant>,
    gateways: impl IntoIterator<Item = &'a Gateway>,
) -> BTreeSet<SecretKey> {
    let mut out = BTreeSet::new();
    for t in tenants {
        let Some(ns) = t.spec.admin_namespace() else {
            continue;
        };
        let mut add = |name: &str| {
            out.insert((ns.to_string(), name.to_string()));
        };
        for idp in &t.spec.identity_providers {
            if let Some(o) = &idp.oidc {
                add(&o.client_secret_ref.name);
            }
            if let Some(r) = idp.jwt.as_ref().and_then(|j| j.jwks_secret_ref.as_ref()) {
                add(&r.name);
            }
            for r in idp
                .client_certificate
                .iter()
                .flat_map(|c| &c.ca_certificate_refs)
            {
                add(&r.name);
            }
            for r in idp.api_key.iter().flat_map(|a| &a.secret_refs) {
                add(&r.name);
            }
        }
    }
    for g in gateways {
        let ns = kube::ResourceExt::namespace(g).unwrap_or_default();
        for l in &g.spec.listeners {
            for r in l.tls.iter().flat_map(|t| &t.certificate_refs) {
                out.insert((ns.clone(), r.name.clone()));
            }
        }
    }
    out
}

fn meta_ref(namespace: &str, name: &str) -> ObjectRef<PartialObjectMeta<Secret>> {
    ObjectRef::new(name).within(namespace)
}

impl SecretCache {
    /// A cache over the two stores (filled by their reflectors).
    pub fn new(meta: Store<PartialObjectMeta<Secret>>, own: Store<Secret>) -> Self {
        Self {
            meta,
            own,
            referenced: Arc::default(),
        }
    }

    /// Secret `namespace/name`: the operator's own from its store, else a referenced one as
    /// last fetched, if it still exists. None for a Secret nobody names (its data is never
    /// held) or that does not exist.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        if let Some(s) = self.own.get(&ObjectRef::new(name).within(namespace)) {
            return Some(s);
        }
        self.meta.get(&meta_ref(namespace, name))?;
        let held = self.referenced.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&(namespace.to_string(), name.to_string()))
            .map(|(_, s)| s.clone())
    }

    /// Makes the data of every Secret in `wanted` current: GETs those whose resourceVersion
    /// in the metadata store differs from the one held (or that are not held), forgets those
    /// no longer wanted or gone. Secrets that do not exist are skipped (their readers report
    /// them missing).
    pub async fn refresh(
        &self,
        client: &kube::Client,
        wanted: &BTreeSet<SecretKey>,
    ) -> Result<(), kube::Error> {
        let stale: Vec<SecretKey> = {
            let held = self.referenced.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .filter(|(ns, name)| {
                    let Some(m) = self.meta.get(&meta_ref(ns, name)) else {
                        return false;
                    };
                    let now = m.metadata.resource_version.clone().unwrap_or_default();
                    held.get(&(ns.clone(), name.clone()))
                        .is_none_or(|(rv, _)| *rv != now)
                })
                .cloned()
                .collect()
        };
        let fetched: Vec<(SecretKey, Option<Secret>)> = futures::stream::iter(stale)
            .map(|(ns, name)| {
                let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                async move {
                    let s = api.get_opt(&name).await?;
                    Ok::<_, kube::Error>(((ns, name), s))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut held = self.referenced.lock().unwrap_or_else(|p| p.into_inner());
        for (key, secret) in fetched {
            match secret {
                Some(s) => {
                    let rv = s.metadata.resource_version.clone().unwrap_or_default();
                    held.insert(key, (rv, Arc::new(s)));
                }
                None => {
                    held.remove(&key);
                }
            }
        }
        held.retain(|(ns, name), _| {
            wanted.contains(&(ns.clone(), name.clone()))
                && self.meta.get(&meta_ref(ns, name)).is_some()
        });
        Ok(())
    }

    /// How many referenced Secrets' data is held (for tests and metrics).
    pub fn held(&self) -> usize {
        self.referenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_secrets_are_the_tenants_identity_material_and_the_listeners_certificates() {
        let t: Tenant = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {"namespaces": ["acme", "acme-admin"], "adminNamespace": "acme-admin",
                     "identityProviders": [
                         {"name": "okta", "oidc": {"issuer": "https://okta.example",
                          "clientID": "c", "clientSecretRef": {"name": "okta"}}},
                         {"name": "ci", "jwt": {"issuer": "https://ci.example",
                          "audiences": ["a"], "jwksSecretRef": {"name": "ci-jwks"}}},
                         {"name": "mtls", "clientCertificate": {
                          "caCertificateRefs": [{"name": "ca-1"}, {"name": "ca-2"}]}},
                         {"name": "keys", "apiKey": {"secretRefs": [{"name": "keys"}]}}]}
        }))
        .unwrap();
        let g: Gateway = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "edge"},
            "spec": {"listeners": [
                {"name": "https", "port": 443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "edge-tls"}]}},
                {"name": "http", "port": 80, "protocol": "HTTP"}]}
        }))
        .unwrap();
        let got: Vec<(String, String)> = referenced([&t], [&g]).into_iter().collect();
        let want: Vec<(String, String)> = [
            ("acme-admin", "ca-1"),
            ("acme-admin", "ca-2"),
            ("acme-admin", "ci-jwks"),
            ("acme-admin", "keys"),
            ("acme-admin", "okta"),
            ("edge", "edge-tls"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}

//! Which Gateways a change can affect: the index that lets one edit reconcile the Gateways of
//! its tenant instead of every Gateway (`make bench-operator`: 5 Gateways x 50 edits made 244
//! reconciles where ~50 would do).
//!
//! The mapping is by **namespace and tenant**, never by an object's spec, so it is right for
//! edits and deletions alike without remembering an object's previous version: a Resource that
//! moves from Gateway A to Gateway B is in a namespace of tenant T, and both A and B are among
//! the Gateways that admit T (a Gateway that does not admit T never serves T's objects). What
//! a namespaced object (Resource, Policy, Secret, Service, EndpointSlice) in namespace `ns`
//! can change:
//! - the Gateways in `ns` itself (their TLS Secrets live there);
//! - if a Tenant holds `ns`, every Gateway that admits that tenant (its Resources, Policies,
//!   identity-provider Secrets, backends);
//! - if no Tenant holds `ns`, every Gateway: rare, and the safe answer.
//!
//! Tenant and Gateway changes still wake every Gateway (claims, admission and quotas are
//! decided across all of them), and the periodic resync remains the backstop.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use rustronaut_compile::snapshot::admits;
use rustronaut_crds::Gateway;
use rustronaut_crds::Tenant;
use rustronaut_crds::tenancy::resolve_claims;

/// The Gateways to reconcile after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// Every Gateway.
    All,
    /// Only these (possibly none), each once.
    These(Vec<ObjectRef<Gateway>>),
}

/// The Gateways a change of a namespaced object in `ns` can affect, given the cached Tenants
/// and Gateways.
pub fn by_namespace<'a>(
    ns: &str,
    tenants: &[Tenant],
    gateways: impl IntoIterator<Item = &'a Gateway>,
) -> Affected {
    let claims = resolve_claims(tenants);
    let Some(holder) = claims.tenant_of(ns) else {
        return Affected::All;
    };
    let Some(tenant) = tenants.iter().find(|t| t.name_any() == holder) else {
        return Affected::All;
    };
    Affected::These(
        gateways
            .into_iter()
            .filter(|g| g.namespace().as_deref() == Some(ns) || admits(g, tenant, &claims))
            .map(ObjectRef::from_obj)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant(name: &str, namespaces: &[&str], team: &str) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "labels": {"team": team}},
            "spec": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    fn gateway(ns: &str, name: &str, tenants: serde_json::Value) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"tenants": tenants,
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
        }))
        .unwrap()
    }

    fn names(a: &Affected) -> Vec<String> {
        match a {
            Affected::All => vec!["*".into()],
            Affected::These(list) => list
                .iter()
                .map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name))
                .collect(),
        }
    }

    #[test]
    fn a_change_reaches_the_gateways_that_admit_its_tenant_and_those_in_its_namespace() {
        let tenants = vec![
            tenant("acme", &["acme-apps", "acme-edge"], "a"),
            tenant("globex", &["globex-apps"], "b"),
        ];
        let gateways = vec![
            gateway("acme-edge", "own", json!({"from": "Same"})),
            gateway("globex-apps", "theirs", json!({"from": "Same"})),
            gateway("platform", "shared", json!({"from": "All"})),
            gateway(
                "platform",
                "team-a",
                json!({"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}),
            ),
            gateway(
                "platform",
                "team-b",
                json!({"from": "Selector", "selector": {"matchLabels": {"team": "b"}}}),
            ),
        ];
        assert_eq!(
            names(&by_namespace("acme-apps", &tenants, &gateways)),
            ["acme-edge/own", "platform/shared", "platform/team-a"]
        );
        assert_eq!(
            names(&by_namespace("globex-apps", &tenants, &gateways)),
            ["globex-apps/theirs", "platform/shared", "platform/team-b"]
        );
    }

    #[test]
    fn an_unclaimed_namespace_wakes_everyone() {
        let tenants = vec![tenant("acme", &["acme-apps"], "a")];
        let gateways = vec![gateway("platform", "shared", json!({"from": "All"}))];
        assert_eq!(
            by_namespace("platform", &tenants, &gateways),
            Affected::All,
            "a Gateway's own namespace may hold no tenant: its TLS Secrets must still wake it"
        );
    }

    #[test]
    fn a_gateway_that_admits_nobody_still_hears_of_its_own_namespace() {
        let tenants = vec![tenant("acme", &["acme-apps", "edge"], "a")];
        let gateways = vec![gateway(
            "edge",
            "locked",
            json!({"from": "Selector", "selector": {"matchLabels": {"team": "z"}}}),
        )];
        assert_eq!(
            names(&by_namespace("edge", &tenants, &gateways)),
            ["edge/locked"]
        );
        assert_eq!(
            names(&by_namespace("acme-apps", &tenants, &gateways)),
            Vec::<String>::new()
        );
    }
}

//! Tenant quotas (`Tenant.spec.quotas`), checked at attach time.
//!
//! Objects over quota are decided the way claims are: the oldest win (by
//! `creationTimestamp`, then namespace and name), so the answer is the same on every replica
//! and a new object can never push out one that already works. What happens to the rest:
//! - a Resource over quota is left out of every snapshot (not served);
//! - a Policy over quota stays in the snapshot and fails closed (an Allow allows nothing, a
//!   Deny denies everything it targets): dropping it could widen access;
//! - a Gateway over quota (`gateways`: Gateways in the tenant's namespaces) gets no snapshot
//!   and no workload, only a status saying why;
//! - a tunnel site over quota (`sites`: sites naming the tenant, across every Gateway, ordered
//!   by their Gateway's age and then their place in its list) is left out of its Gateway's
//!   tunnel, and Resources reaching through it are not served.

use crate::world::World;
use kube::ResourceExt;
use rustronaut_contract::snapshot::ObjectRef;
use rustronaut_crds::tenancy::Claims;
use std::collections::BTreeMap;

/// Objects beyond their tenant's quota, each with the message for its condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverQuota {
    /// Resources left out.
    pub resources: BTreeMap<ObjectRef, String>,
    /// Policies that fail closed.
    pub policies: BTreeMap<ObjectRef, String>,
    /// Gateways that get no snapshot and no workload.
    pub gateways: BTreeMap<ObjectRef, String>,
    /// Tunnel sites left out, by (Gateway, site name).
    pub sites: BTreeMap<(ObjectRef, String), String>,
}

/// Which Resources and Policies are beyond their tenant's quota.
pub fn over_quota(world: &World, claims: &Claims) -> OverQuota {
    let mut out = OverQuota::default();
    for t in &world.tenants {
        let Some(q) = &t.spec.quotas else { continue };
        let name = t.name_any();
        if let Some(max) = q.resources {
            let mine = world.resources.iter().map(|r| &r.metadata);
            out.resources
                .extend(beyond(mine, claims, &name, max, "Resources", "resources"));
        }
        if let Some(max) = q.policies {
            let mine = world.policies.iter().map(|p| &p.metadata);
            out.policies
                .extend(beyond(mine, claims, &name, max, "Policies", "policies"));
        }
        if let Some(max) = q.gateways {
            let mine = world.gateways.iter().map(|g| &g.metadata);
            out.gateways
                .extend(beyond(mine, claims, &name, max, "Gateways", "gateways"));
        }
        if let Some(max) = q.sites {
            out.sites.extend(sites_beyond(world, &name, max));
        }
    }
    out
}

/// The tunnel sites naming `tenant`, on Gateways not being deleted, oldest Gateway first and
/// in list order within one, past the first `max`.
fn sites_beyond(world: &World, tenant: &str, max: i32) -> Vec<((ObjectRef, String), String)> {
    let mut gateways: Vec<&rustronaut_crds::Gateway> = world
        .gateways
        .iter()
        .filter(|g| g.metadata.deletion_timestamp.is_none())
        .map(|g| &**g)
        .collect();
    gateways.sort_by_key(|g| {
        let ts = g.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (
            ts.is_none(),
            ts,
            g.metadata.namespace.clone(),
            g.metadata.name.clone(),
        )
    });
    let mine: Vec<(ObjectRef, String)> = gateways
        .iter()
        .flat_map(|g| {
            let gw = ObjectRef::new(g.namespace().unwrap_or_default(), g.name_any());
            g.spec
                .tunnel
                .iter()
                .flat_map(|t| &t.sites)
                .filter(|s| s.tenant == tenant)
                .map(move |s| (gw.clone(), s.name.clone()))
        })
        .collect();
    let max = usize::try_from(max).unwrap_or(0);
    let total = mine.len();
    mine.into_iter()
        .skip(max)
        .map(|key| {
            let message = format!(
                "tenant {tenant} may have {max} tunnel sites (spec.quotas.sites) and has {total}; \
                 the first {max} (oldest Gateway first) are in effect"
            );
            (key, message)
        })
        .collect()
}

/// The objects of `tenant` among `all`, oldest first, past the first `max`.
fn beyond<'a>(
    all: impl Iterator<Item = &'a kube::api::ObjectMeta>,
    claims: &Claims,
    tenant: &str,
    max: i32,
    kinds: &str,
    field: &str,
) -> Vec<(ObjectRef, String)> {
    let mut mine: Vec<&kube::api::ObjectMeta> = all
        .filter(|m| m.deletion_timestamp.is_none())
        .filter(|m| claims.tenant_of(m.namespace.as_deref().unwrap_or_default()) == Some(tenant))
        .collect();
    let max = usize::try_from(max).unwrap_or(0);
    if mine.len() <= max {
        return Vec::new();
    }
    mine.sort_by_key(|m| {
        let ts = m.creation_timestamp.as_ref().map(|t| t.0);
        (ts.is_none(), ts, m.namespace.clone(), m.name.clone())
    });
    let total = mine.len();
    mine.into_iter()
        .skip(max)
        .map(|m| {
            (
                ObjectRef::new(
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                ),
                format!(
                    "tenant {tenant} may have {max} {kinds} (spec.quotas.{field}) and has {total}; \
                     the oldest {max} are in effect"
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(ns: &str, name: &str, created: &str) -> serde_json::Value {
        json!({"name": name, "namespace": ns, "creationTimestamp": created})
    }

    #[test]
    fn the_oldest_fit_and_the_rest_are_over() {
        let tenant = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {"namespaces": ["apps"], "quotas": {"resources": 1, "policies": 0}}
        }))
        .unwrap();
        let resource = |name: &str, created: &str| {
            serde_json::from_value(json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
                "metadata": meta("apps", name, created),
                "spec": {"gatewayRefs": [{"name": "edge"}], "protocol": "TCP",
                         "upstreams": [{"service": {"name": "db", "port": 5432}}]}
            }))
            .unwrap()
        };
        let policy = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": meta("apps", "p", "2025-01-01T00:00:00Z"),
            "spec": {"targetRefs": [{"kind": "Resource", "name": "old"}], "action": "Deny",
                     "rules": [{"name": "r", "from": [{"sourceCIDRs": {"cidrs": ["0.0.0.0/0"]}}]}]}
        }))
        .unwrap();
        let other = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": meta("elsewhere", "x", "2024-01-01T00:00:00Z"),
            "spec": {"gatewayRefs": [{"name": "edge"}], "protocol": "TCP",
                     "upstreams": [{"service": {"name": "db", "port": 5432}}]}
        }))
        .unwrap();
        let world = World {
            tenants: vec![tenant],
            gateways: Vec::new(),
            resources: vec![
                resource("young", "2025-02-01T00:00:00Z"),
                resource("old", "2025-01-01T00:00:00Z"),
                other,
            ],
            policies: vec![policy],
            namespaces: Default::default(),
        };
        let over = over_quota(&world, &world.claims());
        let keys: Vec<String> = over.resources.keys().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            ["apps/young"],
            "the oldest is kept; other tenants do not count"
        );
        let msg = &over.resources[&ObjectRef::new("apps", "young")];
        assert!(
            msg.contains("may have 1 Resources") && msg.contains("has 2"),
            "{msg}"
        );
        assert!(over.policies.contains_key(&ObjectRef::new("apps", "p")));
    }

    #[test]
    fn gateways_and_sites_beyond_quota_are_the_youngest() {
        let tenant = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {"namespaces": ["apps"], "quotas": {"gateways": 1, "sites": 2}}
        }))
        .unwrap();
        let key = "xTIB0vTdtu3xl8ri7MVi/cZuEBZ5uwOaXvMIsN58gX0=";
        let gateway = |ns: &str, name: &str, created: &str, sites: &[(&str, &str)]| {
            let sites: Vec<serde_json::Value> = sites
                .iter()
                .map(|(n, t)| json!({"name": n, "tenant": t, "publicKey": key}))
                .collect();
            serde_json::from_value(json!({
                "apiVersion": "rustronaut.io/v1alpha1", "kind": "Gateway",
                "metadata": meta(ns, name, created),
                "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                         "tunnel": {"sites": sites}}
            }))
            .unwrap()
        };
        let world = World {
            tenants: vec![tenant],
            gateways: vec![
                // Listed young first: order comes from creationTimestamp, not the list.
                gateway("apps", "young", "2025-03-01T00:00:00Z", &[("c", "acme")]),
                gateway(
                    "platform",
                    "shared",
                    "2025-01-01T00:00:00Z",
                    &[("a", "acme"), ("other", "globex"), ("b", "acme")],
                ),
                gateway("apps", "old", "2025-02-01T00:00:00Z", &[]),
            ],
            resources: Vec::new(),
            policies: Vec::new(),
            namespaces: Default::default(),
        };
        let over = over_quota(&world, &world.claims());
        let gws: Vec<String> = over.gateways.keys().map(ToString::to_string).collect();
        assert_eq!(
            gws,
            ["apps/young"],
            "only Gateways in the tenant's namespaces count, oldest kept"
        );
        let sites: Vec<(String, String)> = over
            .sites
            .keys()
            .map(|(g, s)| (g.to_string(), s.clone()))
            .collect();
        assert_eq!(
            sites,
            [("apps/young".to_string(), "c".to_string())],
            "a and b on the oldest Gateway fit; another tenant's site does not count"
        );
        let msg = over.sites.values().next().unwrap();
        assert!(
            msg.contains("may have 2 tunnel sites") && msg.contains("has 3"),
            "{msg}"
        );
    }
}

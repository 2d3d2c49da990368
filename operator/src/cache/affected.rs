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
//!
//! The answer depends only on the Tenants and Gateways, which change rarely, while the
//! question is asked once per watch event of every namespaced object: [`Memo`] keeps the
//! answers (and the resolved claims) until a Tenant or Gateway changes. Before it, each event
//! resolved every claim again (quadratic in the domains) over a copy of every Tenant: at
//! 10,000 objects that was half of the operator's CPU while a bulk apply converged
//! (`make bench-operator`, perf, issue 17).

use kube::runtime::reflector::ObjectRef;
use rustronaut_compile::snapshot::admits;
use rustronaut_crds::Gateway;
use rustronaut_crds::Tenant;
use rustronaut_crds::tenancy::{Claims, resolve_claims};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

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
pub fn by_namespace<'a, T: Borrow<Tenant>>(
    ns: &str,
    tenants: &[T],
    gateways: impl IntoIterator<Item = &'a Gateway>,
) -> Affected {
    by_namespace_with(ns, tenants, &resolve_claims(tenants), gateways)
}

/// [`by_namespace`] with the `claims` of `tenants` already resolved.
fn by_namespace_with<'a, T: Borrow<Tenant>>(
    ns: &str,
    tenants: &[T],
    claims: &Claims,
    gateways: impl IntoIterator<Item = &'a Gateway>,
) -> Affected {
    let Some(holder) = claims.tenant_of(ns) else {
        return Affected::All;
    };
    let Some(tenant) = tenants
        .iter()
        .map(Borrow::borrow)
        .find(|t| t.metadata.name.as_deref() == Some(holder))
    else {
        return Affected::All;
    };
    Affected::These(
        gateways
            .into_iter()
            .filter(|g| g.metadata.namespace.as_deref() == Some(ns) || admits(g, tenant, claims))
            .map(ObjectRef::from_obj)
            .collect(),
    )
}

/// [`by_namespace`]'s answers for one version of the Tenants and Gateways: asked again with
/// the same objects (same uids and resourceVersions, in any order), it answers from memory;
/// any change of either forgets everything. Holds at most one answer per namespace asked
/// about.
#[derive(Debug, Default)]
pub struct Memo {
    /// Keyed and random per process: the version is a sum of per-object hashes, and
    /// nobody can choose objects whose sum collides with another set's.
    hasher: RandomState,
    version: Option<u64>,
    claims: Option<Claims>,
    answers: HashMap<String, Affected>,
}

impl Memo {
    /// [`by_namespace`], remembered while `tenants` and `gateways` stay the same.
    pub fn by_namespace(
        &mut self,
        ns: &str,
        tenants: &[Arc<Tenant>],
        gateways: &[Arc<Gateway>],
    ) -> Affected {
        let version = self.version_of(tenants, gateways);
        if self.version != Some(version) {
            self.version = Some(version);
            self.claims = None;
            self.answers.clear();
        }
        if let Some(answer) = self.answers.get(ns) {
            return answer.clone();
        }
        let claims = self.claims.get_or_insert_with(|| resolve_claims(tenants));
        let answer = by_namespace_with(ns, tenants, claims, gateways.iter().map(|g| &**g));
        self.answers.insert(ns.to_string(), answer.clone());
        answer
    }

    /// A digest of which Tenants and Gateways exist, at which resourceVersion: independent
    /// of the stores' order.
    fn version_of(&self, tenants: &[Arc<Tenant>], gateways: &[Arc<Gateway>]) -> u64 {
        let one = |kind: u8, m: &kube::api::ObjectMeta| {
            self.hasher.hash_one((
                kind,
                m.namespace.as_deref(),
                m.name.as_deref(),
                m.uid.as_deref(),
                m.resource_version.as_deref(),
            ))
        };
        let sum = tenants
            .iter()
            .map(|t| one(0, &t.metadata))
            .chain(gateways.iter().map(|g| one(1, &g.metadata)))
            .fold(0u64, u64::wrapping_add);
        // The counts too: a sum alone cannot tell a set from one with an object more whose
        // hash happens to be zero.
        self.hasher.hash_one((sum, tenants.len(), gateways.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
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
    fn the_memo_answers_as_by_namespace_and_forgets_when_a_tenant_or_gateway_changes() {
        let versioned = |mut t: Tenant, rv: &str| {
            t.metadata.uid = Some(format!("uid-{}", t.name_any()));
            t.metadata.resource_version = Some(rv.into());
            Arc::new(t)
        };
        let mut tenants = vec![
            versioned(tenant("acme", &["acme-apps"], "a"), "1"),
            versioned(tenant("globex", &["globex-apps"], "b"), "2"),
        ];
        let mut team_a = gateway(
            "platform",
            "team-a",
            json!({"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}),
        );
        team_a.metadata.resource_version = Some("3".into());
        let gateways = vec![Arc::new(team_a)];
        let mut memo = Memo::default();
        for ns in ["acme-apps", "globex-apps", "platform", "acme-apps"] {
            assert_eq!(
                memo.by_namespace(ns, &tenants, &gateways),
                by_namespace(ns, &tenants, gateways.iter().map(|g| &**g)),
                "{ns}"
            );
        }
        assert_eq!(
            names(&memo.by_namespace("globex-apps", &tenants, &gateways)),
            Vec::<String>::new()
        );
        // globex moves to team a (a new resourceVersion): the remembered answer is dropped.
        tenants[1] = versioned(tenant("globex", &["globex-apps"], "a"), "4");
        assert_eq!(
            names(&memo.by_namespace("globex-apps", &tenants, &gateways)),
            ["platform/team-a"]
        );
        // The same objects in another order are the same version.
        tenants.reverse();
        assert_eq!(
            names(&memo.by_namespace("globex-apps", &tenants, &gateways)),
            ["platform/team-a"]
        );
        // A Gateway deleted: forgotten too.
        assert_eq!(
            names(&memo.by_namespace("globex-apps", &tenants, &[])),
            Vec::<String>::new()
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

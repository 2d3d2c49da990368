//! Tenancy: which Tenant owns which namespace and domain, and which Resources a Policy selects.
//!
//! Claims are exclusive and the oldest claim wins (by `creationTimestamp`, then name, so the
//! answer is the same on every replica and in every order of listing). A Tenant that loses a
//! claim keeps everything else it owns and gets `Accepted=False` with a reason naming the
//! holder. Nothing here crosses a tenant: a Policy selects only Resources of its own tenant.

use crate::conditions::reasons;
use crate::validate::domains_overlap;
use crate::{Policy, Resource, Tenant};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use std::borrow::Borrow;
use std::collections::BTreeMap;

/// A claim one Tenant lost to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostClaim {
    /// The namespace or domain.
    pub claim: String,
    /// The Tenant holding it.
    pub holder: String,
    /// `NamespaceClaimed` or `DomainClaimed`.
    pub reason: &'static str,
}

impl LostClaim {
    /// A message for a condition.
    pub fn message(&self) -> String {
        let what = if self.reason == reasons::NAMESPACE_CLAIMED {
            "namespace"
        } else {
            "domain"
        };
        format!(
            "{what} {} is already claimed by tenant {} (the oldest claim wins)",
            self.claim, self.holder
        )
    }
}

/// Who owns what, after resolving conflicting claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Namespace -> owning Tenant.
    pub namespaces: BTreeMap<String, String>,
    /// Domain -> owning Tenant.
    pub domains: BTreeMap<String, String>,
    /// Tenant -> claims it lost.
    pub lost: BTreeMap<String, Vec<LostClaim>>,
    /// Tenant -> the domains it holds (what `domains` says, by holder): asked once per
    /// Resource, where a scan of every domain was 5,000 x 200 comparisons per status pass.
    held_domains: BTreeMap<String, Vec<String>>,
}

impl Claims {
    /// The Tenant owning `namespace`, if any.
    pub fn tenant_of(&self, namespace: &str) -> Option<&str> {
        self.namespaces.get(namespace).map(String::as_str)
    }

    /// The domains `tenant` holds.
    pub fn domains_of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.held_domains
            .get(tenant)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

/// Resolves every namespace and domain claim: oldest Tenant first.
pub fn resolve_claims<T: Borrow<Tenant>>(tenants: &[T]) -> Claims {
    let mut ordered: Vec<&Tenant> = tenants.iter().map(Borrow::borrow).collect();
    ordered.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        // Objects without a timestamp (not yet created: a GitOps dry run) sort last.
        (ta.is_none(), ta, a.name_any()).cmp(&(tb.is_none(), tb, b.name_any()))
    });
    let mut claims = Claims::default();
    for t in ordered {
        let name = t.name_any();
        for ns in &t.spec.namespaces {
            match claims.namespaces.get(ns) {
                Some(holder) if holder != &name => claims
                    .lost
                    .entry(name.clone())
                    .or_default()
                    .push(LostClaim {
                        claim: ns.clone(),
                        holder: holder.clone(),
                        reason: reasons::NAMESPACE_CLAIMED,
                    }),
                Some(_) => {}
                None => {
                    claims.namespaces.insert(ns.clone(), name.clone());
                }
            }
        }
        for d in &t.spec.domains {
            let holder = claims
                .domains
                .iter()
                .find(|(held, holder)| *holder != &name && domains_overlap(held, d))
                .map(|(_, h)| h.clone());
            match holder {
                Some(holder) => claims
                    .lost
                    .entry(name.clone())
                    .or_default()
                    .push(LostClaim {
                        claim: d.clone(),
                        holder,
                        reason: reasons::DOMAIN_CLAIMED,
                    }),
                None => {
                    claims.domains.insert(d.clone(), name.clone());
                }
            }
        }
    }
    for (domain, holder) in &claims.domains {
        claims
            .held_domains
            .entry(holder.clone())
            .or_default()
            .push(domain.clone());
    }
    claims
}

/// Whether `labels` satisfy a Kubernetes label selector (matchLabels AND matchExpressions).
/// An empty selector matches everything, as in Kubernetes. An unknown operator matches nothing
/// (fail closed: a Policy must never select more than its author wrote).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// A Resource a Policy selects, optionally narrowed to one rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Namespace of the Resource.
    pub namespace: String,
    /// Name of the Resource.
    pub name: String,
    /// Rule of the Resource, when the Policy names one.
    pub section: Option<String>,
}

/// Labels of namespaces by name, as far as they are known (the operator's Namespace cache; the
/// Namespace manifests of a directory for the CLI).
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// Orders objects by namespace, then name, comparing borrowed names (a sort keyed by owned
/// names allocated two Strings per comparison: at 5,000 Policies, 130,000 per sort).
pub fn by_namespace_and_name(
    a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> std::cmp::Ordering {
    (a.namespace.as_deref(), a.name.as_deref()).cmp(&(b.namespace.as_deref(), b.name.as_deref()))
}

/// Resources sorted by namespace and name: one lookup by name, one slice per namespace.
/// Built once per pass (or Gateway build) and handed to [`policy_targets`], which runs once
/// per Policy: scanning every Resource per Policy was quadratic, 25 million comparisons per
/// status pass at 5,000 of each (issue 17).
#[derive(Debug, Clone, Default)]
pub struct ResourceIndex<'a> {
    sorted: Vec<&'a Resource>,
}

impl<'a> ResourceIndex<'a> {
    /// Indexes `resources`.
    pub fn new(resources: &'a [impl Borrow<Resource>]) -> Self {
        let mut sorted: Vec<&Resource> = resources.iter().map(Borrow::borrow).collect();
        sorted.sort_by(|a, b| Self::key(a).cmp(&Self::key(b)));
        Self { sorted }
    }

    fn key(r: &Resource) -> (&str, &str) {
        (
            r.metadata.namespace.as_deref().unwrap_or_default(),
            r.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// The Resource `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&'a Resource> {
        self.sorted
            .binary_search_by(|r| Self::key(r).cmp(&(namespace, name)))
            .ok()
            .map(|i| self.sorted[i])
    }

    /// The Resources of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> &[&'a Resource] {
        let start = self.sorted.partition_point(|r| Self::key(r).0 < namespace);
        let end = self.sorted.partition_point(|r| Self::key(r).0 <= namespace);
        &self.sorted[start..end]
    }

    /// Every Resource, by namespace and name.
    pub fn all(&self) -> &[&'a Resource] {
        &self.sorted
    }
}

/// The Resources `policy` selects among `resources`, never beyond its tenant: targetRefs (same
/// namespace), targetSelector (same namespace), and, for Policies in the tenant's
/// adminNamespace, namespaceSelector widening targetSelector to those of the tenant's
/// namespaces whose labels (`namespaces`) match it. A namespace whose labels are not known
/// fails closed: a Deny selects it, an Allow does not.
/// Returns the targets and the targetRefs that name no Resource.
pub fn policy_targets(
    policy: &Policy,
    resources: &ResourceIndex<'_>,
    claims: &Claims,
    admin_namespace: Option<&str>,
    namespaces: &NamespaceLabels,
) -> (Vec<Target>, Vec<String>) {
    let ns = policy.namespace().unwrap_or_default();
    let Some(tenant) = claims.tenant_of(&ns) else {
        return (Vec::new(), Vec::new());
    };
    // Called once per Policy: looks up by borrowed names and allocates only for what it
    // returns (at 10,000 objects, issue 17, a String per comparison was tens of millions of
    // allocations per status pass).
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    for r in &policy.spec.target_refs {
        if resources.get(&ns, &r.name).is_some() {
            targets.push(Target {
                namespace: ns.clone(),
                name: r.name.clone(),
                section: r.section_name.clone(),
            });
        } else {
            missing.push(r.name.clone());
        }
    }
    if let Some(sel) = &policy.spec.target_selector {
        let in_admin = admin_namespace == Some(ns.as_str());
        // Beyond its own namespace only from the admin namespace.
        let candidates = if in_admin {
            resources.all()
        } else {
            resources.in_namespace(&ns)
        };
        for &res in candidates {
            let res_ns = res.metadata.namespace.as_deref().unwrap_or_default();
            let same_ns = res_ns == ns;
            if !same_ns && !in_admin {
                continue;
            }
            let widened = !same_ns
                && claims.tenant_of(res_ns) == Some(tenant)
                && policy.spec.namespace_selector.as_ref().is_some_and(|nsel| {
                    namespaces.get(res_ns).map_or(
                        policy.spec.action == crate::policy::PolicyAction::Deny,
                        |labels| selector_matches(nsel, labels),
                    )
                });
            if (same_ns || widened) && selector_matches(sel, res.labels()) {
                targets.push(Target {
                    namespace: res_ns.to_string(),
                    name: res.name_any(),
                    section: None,
                });
            }
        }
    }
    targets.sort();
    targets.dedup();
    (targets, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn tenant(name: &str, age_secs: i64, namespaces: &[&str], domains: &[&str]) -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {"namespaces": namespaces, "domains": domains}
        }))
        .unwrap();
        let base = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap();
        t.metadata.creation_timestamp = Some(Time(
            base.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(age_secs))
                .unwrap(),
        ));
        t
    }

    #[test]
    fn oldest_claim_wins_regardless_of_listing_order() {
        let old = tenant("old", 100, &["shared", "a"], &["*.acme.example"]);
        let young = tenant(
            "young",
            10,
            &["shared", "b"],
            &["app.acme.example", "beta.example"],
        );
        for list in [
            vec![old.clone(), young.clone()],
            vec![young.clone(), old.clone()],
        ] {
            let c = resolve_claims(&list);
            assert_eq!(c.tenant_of("shared"), Some("old"));
            assert_eq!(c.tenant_of("a"), Some("old"));
            assert_eq!(c.tenant_of("b"), Some("young"));
            assert_eq!(
                c.domains.get("beta.example").map(String::as_str),
                Some("young")
            );
            assert!(!c.domains.contains_key("app.acme.example"));
            let lost = &c.lost["young"];
            assert_eq!(lost.len(), 2);
            assert_eq!(lost[0].reason, reasons::NAMESPACE_CLAIMED);
            assert_eq!(lost[1].reason, reasons::DOMAIN_CLAIMED);
            assert!(
                lost[1].message().contains("claimed by tenant old"),
                "{}",
                lost[1].message()
            );
            assert!(!c.lost.contains_key("old"));
        }
    }

    #[test]
    fn domains_of_lists_only_the_domains_a_tenant_holds() {
        let old = tenant("old", 10, &["a"], &["*.acme.example", "beta.example"]);
        let new = tenant("new", 1, &["b"], &["app.acme.example", "gamma.example"]);
        let c = resolve_claims(&[new, old]);
        assert_eq!(
            c.domains_of("old").collect::<Vec<_>>(),
            ["*.acme.example", "beta.example"]
        );
        assert_eq!(
            c.domains_of("new").collect::<Vec<_>>(),
            ["gamma.example"],
            "app.acme.example lies within old's wildcard"
        );
        assert_eq!(c.domains_of("nobody").count(), 0);
    }

    #[test]
    fn equal_ages_break_ties_by_name() {
        let a = tenant("alpha", 5, &["x"], &[]);
        let b = tenant("beta", 5, &["x"], &[]);
        assert_eq!(resolve_claims(&[b, a]).tenant_of("x"), Some("alpha"));
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [
            ("team".to_string(), "sre".to_string()),
            ("tier".to_string(), "web".to_string()),
        ]
        .into();
        let sel = |ml: &[(&str, &str)], exprs: Vec<(&str, &str, &[&str])>| LabelSelector {
            match_labels: Some(
                ml.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: Some(
                exprs
                    .into_iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: k.into(),
                        operator: op.into(),
                        values: Some(vs.iter().map(|v| v.to_string()).collect()),
                    })
                    .collect(),
            ),
        };
        assert!(selector_matches(&LabelSelector::default(), &labels));
        assert!(selector_matches(&sel(&[("team", "sre")], vec![]), &labels));
        assert!(!selector_matches(
            &sel(&[("team", "data")], vec![]),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], vec![("tier", "In", &["web", "api"])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![("tier", "NotIn", &["web"])]),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], vec![("env", "NotIn", &["prod"])]),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], vec![("team", "Exists", &[])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![("team", "DoesNotExist", &[])]),
            &labels
        ));
        assert!(
            !selector_matches(&sel(&[], vec![("team", "Bogus", &[])]), &labels),
            "unknown operators fail closed"
        );
    }

    fn resource(ns: &str, name: &str) -> Resource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
            "spec": {
                "gatewayRefs": [{"namespace": "edge", "name": "edge"}],
                "protocol": "HTTP", "hostnames": [format!("{name}.acme.example")],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": name, "port": 80}}]}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_resource_index_finds_by_name_and_slices_exactly_one_namespace() {
        // Neighbouring namespace names sort around "a": "a-b" and "ab" must not leak into it.
        let resources = [
            resource("ab", "x"),
            resource("a", "web"),
            resource("a-b", "web"),
            resource("a", "api"),
            resource("b", "web"),
        ];
        let index = ResourceIndex::new(&resources);
        let names = |ns: &str| {
            index
                .in_namespace(ns)
                .iter()
                .map(|r| r.name_any())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("a"), ["api", "web"]);
        assert_eq!(names("a-b"), ["web"]);
        assert_eq!(names("ab"), ["x"]);
        assert!(names("c").is_empty() && names("").is_empty());
        assert_eq!(
            index
                .get("a-b", "web")
                .and_then(|r| r.metadata.namespace.clone()),
            Some("a-b".to_string())
        );
        assert!(index.get("a", "x").is_none() && index.get("ab", "web").is_none());
        assert_eq!(index.all().len(), 5);
    }

    fn admin_policy(action: &str) -> Policy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "web", "namespace": "acme-admin"},
            "spec": {
                "targetSelector": {"matchLabels": {"app": "web"}},
                "namespaceSelector": {"matchLabels": {"env": "dev"}},
                "action": action,
                "rules": [{"name": "r", "from": [{"anonymous": true}]}]
            }
        }))
        .unwrap()
    }

    /// Issue 14, item 8: namespaceSelector used to be checked for presence only, so
    /// `{env: dev}` selected the tenant's prod namespaces too.
    #[test]
    fn namespace_selector_matches_namespace_labels_and_fails_closed_when_unknown() {
        let t = tenant(
            "acme",
            10,
            &["acme-admin", "acme-dev", "acme-prod", "acme-new"],
            &[],
        );
        let other = tenant("globex", 5, &["globex-dev"], &[]);
        let claims = resolve_claims(&[t, other]);
        let resources: Vec<Resource> = [
            "acme-admin",
            "acme-dev",
            "acme-prod",
            "acme-new",
            "globex-dev",
        ]
        .iter()
        .map(|ns| resource(ns, "web"))
        .collect();
        let labels = |env: &str| BTreeMap::from([("env".to_string(), env.to_string())]);
        // acme-new's labels are not known (not in the cache yet, not in the files).
        let namespaces: NamespaceLabels = BTreeMap::from([
            ("acme-admin".to_string(), labels("admin")),
            ("acme-dev".to_string(), labels("dev")),
            ("acme-prod".to_string(), labels("prod")),
            ("globex-dev".to_string(), labels("dev")),
        ]);
        let selected = |action: &str| {
            let (targets, missing) = policy_targets(
                &admin_policy(action),
                &ResourceIndex::new(&resources),
                &claims,
                Some("acme-admin"),
                &namespaces,
            );
            assert!(missing.is_empty());
            targets.into_iter().map(|t| t.namespace).collect::<Vec<_>>()
        };
        // The admin namespace itself (targetSelector's own namespace), the matching dev
        // namespace, never prod, never another tenant's; unknown labels: only a Deny.
        assert_eq!(selected("Allow"), ["acme-admin", "acme-dev"]);
        assert_eq!(selected("Deny"), ["acme-admin", "acme-dev", "acme-new"]);
    }
}

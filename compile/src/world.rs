//! The set of rustronaut.io objects one compilation sees: from the cluster (the operator's
//! reflectors) or from YAML files (`rustronaut policy test <dir>`, a GitOps repository).
//!
//! Reading is forgiving where Kubernetes is (other kinds are ignored, so a directory of mixed
//! manifests works) and strict where it matters: an object of our group that does not
//! deserialise is an error naming its file and name, never silently skipped.

use rustronaut_crds::manifests::Manifest;
use rustronaut_crds::tenancy::{Claims, NamespaceLabels, resolve_claims};
use rustronaut_crds::{Gateway, Policy, Resource, Tenant};
use std::path::PathBuf;
use std::sync::Arc;

/// Errors building a [`World`] from manifests.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// A rustronaut.io object does not match its schema.
    #[error("{path}: {kind} {name:?} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The kind.
        kind: String,
        /// The object name.
        name: String,
        /// What serde said.
        message: String,
    },
    /// A namespaced object without a namespace (files for GitOps must say where things go).
    #[error("{path}: {kind} {name:?} has no metadata.namespace")]
    NoNamespace {
        /// The file.
        path: PathBuf,
        /// The kind.
        kind: String,
        /// The object name.
        name: String,
    },
    /// Two objects with the same kind, namespace and name.
    #[error("{path}: {kind} {key} is defined twice")]
    Duplicate {
        /// The file of the second definition.
        path: PathBuf,
        /// The kind.
        kind: String,
        /// namespace/name.
        key: String,
    },
}

/// Every Tenant, Gateway, Resource and Policy in scope.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Tenants (cluster-scoped).
    pub tenants: Vec<Arc<Tenant>>,
    /// Gateways.
    pub gateways: Vec<Arc<Gateway>>,
    /// Resources.
    pub resources: Vec<Arc<Resource>>,
    /// Policies.
    pub policies: Vec<Arc<Policy>>,
    /// Labels of the namespaces known (the operator's cache; `v1` Namespace manifests among
    /// the files), for Policies' namespaceSelector. A namespace missing here has unknown
    /// labels: a namespaceSelector of a Deny selects it, of an Allow does not.
    pub namespaces: NamespaceLabels,
}

impl World {
    /// Builds a world from manifests; other kinds and API groups are ignored.
    pub fn from_manifests(manifests: &[Manifest]) -> Result<Self, WorldError> {
        let mut world = World::default();
        let mut seen = std::collections::BTreeSet::new();
        for m in manifests {
            if m.api_version() == "v1" && m.kind() == "Namespace" {
                let labels = m.value["metadata"]["labels"]
                    .as_object()
                    .map(|l| {
                        l.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                world.namespaces.insert(m.name().to_string(), labels);
                continue;
            }
            if !m.api_version().starts_with("rustronaut.io/") {
                continue;
            }
            let kind = m.kind().to_string();
            let name = m.name().to_string();
            let invalid = |e: serde_json::Error| WorldError::Invalid {
                path: m.path.clone(),
                kind: kind.clone(),
                name: name.clone(),
                message: e.to_string(),
            };
            if kind != "Tenant" && m.namespace().is_none() {
                return Err(WorldError::NoNamespace {
                    path: m.path.clone(),
                    kind,
                    name,
                });
            }
            let key = format!("{}/{}", m.namespace().unwrap_or_default(), name);
            if !seen.insert((kind.clone(), key.clone())) {
                return Err(WorldError::Duplicate {
                    path: m.path.clone(),
                    kind,
                    key,
                });
            }
            let v = m.value.clone();
            match kind.as_str() {
                "Tenant" => world
                    .tenants
                    .push(Arc::new(serde_json::from_value(v).map_err(invalid)?)),
                "Gateway" => world
                    .gateways
                    .push(Arc::new(serde_json::from_value(v).map_err(invalid)?)),
                "Resource" => world
                    .resources
                    .push(Arc::new(serde_json::from_value(v).map_err(invalid)?)),
                "Policy" => world
                    .policies
                    .push(Arc::new(serde_json::from_value(v).map_err(invalid)?)),
                _ => {}
            }
        }
        Ok(world)
    }

    /// Namespace and domain ownership.
    pub fn claims(&self) -> Claims {
        resolve_claims(&self.tenants)
    }

    /// This world cut by tenant: one world per tenant holding the Resources, Policies and
    /// namespace labels of the namespaces it claims, and one (tenant `None`) for those of
    /// namespaces no tenant claims; every world keeps all Tenants and Gateways (shared
    /// `Arc`s). A Policy selects only within its tenant, so compiling and testing each part
    /// alone gives what the whole gives, while what is built at once is one tenant's share:
    /// the operator's status pass compiled the whole world for the embedded tests, 17 MB of
    /// its heap peak at 10,000 objects (issue 17). Parts in tenant name order; tenants with
    /// no objects have none.
    pub fn by_tenant(&self, claims: &Claims) -> Vec<(Option<String>, World)> {
        use std::collections::BTreeMap;
        type Parts = BTreeMap<Option<String>, World>;
        fn part<'p>(parts: &'p mut Parts, whole: &World, tenant: Option<&str>) -> &'p mut World {
            parts
                .entry(tenant.map(str::to_string))
                .or_insert_with(|| World {
                    tenants: whole.tenants.clone(),
                    gateways: whole.gateways.clone(),
                    ..World::default()
                })
        }
        let tenant_of = |ns: Option<&str>| ns.and_then(|ns| claims.tenant_of(ns));
        let mut parts = Parts::new();
        for r in &self.resources {
            let tenant = tenant_of(r.metadata.namespace.as_deref());
            part(&mut parts, self, tenant).resources.push(r.clone());
        }
        for p in &self.policies {
            let tenant = tenant_of(p.metadata.namespace.as_deref());
            part(&mut parts, self, tenant).policies.push(p.clone());
        }
        // Labels only for the parts that have objects: a namespaceSelector reads them.
        for (ns, labels) in &self.namespaces {
            let tenant = claims.tenant_of(ns).map(str::to_string);
            if let Some(w) = parts.get_mut(&tenant) {
                w.namespaces.insert(ns.clone(), labels.clone());
            }
        }
        parts.into_iter().collect()
    }

    /// The Tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants
            .iter()
            .find(|t| t.metadata.name.as_deref() == Some(name))
            .map(|t| &**t)
    }

    /// Whether the Gateway `namespace/name` exists.
    pub fn has_gateway(&self, namespace: &str, name: &str) -> bool {
        self.gateways.iter().any(|g| {
            g.metadata.namespace.as_deref() == Some(namespace)
                && g.metadata.name.as_deref() == Some(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policytest::{compile, compile_with, run_all, run_all_with};
    use rustronaut_crds::manifests::{Manifest, load};
    use std::path::Path;

    /// The repository's examples (tenant acme, several namespaces, Policies with tests), a
    /// second tenant, and a Policy in a namespace nobody claims.
    fn world() -> World {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut manifests = load(&examples).unwrap();
        let extra = r#"
apiVersion: rustronaut.io/v1alpha1
kind: Tenant
metadata: {name: beta}
spec: {namespaces: [beta-apps], domains: ["*.beta.example"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: beta-apps, labels: {env: prod}}
---
apiVersion: rustronaut.io/v1alpha1
kind: Resource
metadata: {name: api, namespace: beta-apps}
spec:
  gatewayRefs: [{namespace: platform, name: edge}]
  protocol: HTTP
  hostnames: [api.beta.example]
  rules: [{name: all, upstreams: [{service: {name: api, port: 80}}]}]
---
apiVersion: rustronaut.io/v1alpha1
kind: Policy
metadata: {name: office, namespace: beta-apps}
spec:
  targetRefs: [{name: api}, {name: gone}]
  action: Allow
  rules: [{name: office, from: [{sourceCIDRs: {cidrs: [10.9.0.0/16]}}]}]
  tests:
  - {name: inside, expect: Allow, request: {sourceIP: 10.9.1.1}}
  - {name: outside, expect: Deny, request: {sourceIP: 10.8.1.1}}
---
apiVersion: rustronaut.io/v1alpha1
kind: Policy
metadata: {name: stray, namespace: nobody}
spec:
  targetRefs: [{name: x}]
  action: Allow
  rules: [{name: any, from: [{anonymous: true}]}]
  tests: [{name: t, expect: Allow}]
"#;
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(extra).unwrap();
        manifests.extend(docs.into_iter().map(|value| Manifest {
            path: "extra.yaml".into(),
            value,
        }));
        World::from_manifests(&manifests).unwrap()
    }

    /// What a test outcome says, comparable.
    fn said(o: &crate::TestOutcome) -> (String, String, String, bool, String) {
        (
            o.policy.clone(),
            o.test.clone(),
            o.resource.clone(),
            o.passed(),
            o.message(),
        )
    }

    #[test]
    fn tests_run_tenant_by_tenant_say_what_the_whole_world_says() {
        let world = world();
        let claims = world.claims();
        let parts = world.by_tenant(&claims);
        let tenants: Vec<Option<&str>> = parts.iter().map(|(t, _)| t.as_deref()).collect();
        assert_eq!(tenants, [None, Some("acme"), Some("beta")]);
        // Every Resource and Policy is in exactly one part; Tenants and Gateways in all.
        let count = |f: fn(&World) -> usize| parts.iter().map(|(_, w)| f(w)).sum::<usize>();
        assert_eq!(count(|w| w.resources.len()), world.resources.len());
        assert_eq!(count(|w| w.policies.len()), world.policies.len());
        assert!(
            parts
                .iter()
                .all(|(_, w)| w.tenants.len() == world.tenants.len())
        );
        // Each tenant's part knows the labels of its namespaces (a namespaceSelector reads
        // them), and of no one else's.
        let labels_of = |t: &str| {
            let (_, w) = parts.iter().find(|(p, _)| p.as_deref() == Some(t)).unwrap();
            w.namespaces.keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(labels_of("acme"), ["acme-admin", "acme-apps"]);
        assert_eq!(labels_of("beta"), ["beta-apps"]);

        let whole = compile(&world);
        let mut expected: Vec<_> = run_all(&world, &whole).iter().map(said).collect();
        let mut got = Vec::new();
        let mut missing = Vec::new();
        for (_, part) in &parts {
            let compiled = compile_with(part, &claims);
            got.extend(run_all_with(part, &compiled, &claims).iter().map(said));
            missing.extend(compiled.missing_targets);
        }
        expected.sort();
        got.sort();
        assert!(expected.len() >= 5, "{expected:?}");
        assert_eq!(got, expected);
        let mut whole_missing = whole.missing_targets.clone();
        whole_missing.sort();
        missing.sort();
        assert_eq!(missing, whole_missing);
        assert!(
            missing
                .iter()
                .any(|(p, m)| p == "beta-apps/office" && m == &["gone"]),
            "{missing:?}"
        );
    }
}

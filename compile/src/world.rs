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

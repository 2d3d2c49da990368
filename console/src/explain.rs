//! The policy explain page's core: the objects the person can read become the same
//! [`World`] the `rustronaut policy explain` command builds from files, and the same
//! function explains the decision, so the console and the CLI can never disagree.

use rustronaut_compile::world::World;
use rustronaut_crds::manifests::Manifest;
use serde_json::Value;

/// What the person asked to explain.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Question {
    /// `NAMESPACE/NAME` of the Resource.
    pub resource: Option<String>,
    /// The identity as YAML (`{user: {idp: okta, email: ..., groups: [...]}}`), or empty for
    /// an anonymous request.
    pub identity: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// Request path.
    pub path: Option<String>,
    /// Client address.
    pub source_ip: Option<String>,
    /// RFC 3339 time (default: now).
    pub time: Option<String>,
}

fn some(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Explains `q` over `objects` (Tenants, Namespaces, Resources, Policies as JSON, as read by
/// the person). The text is what `rustronaut policy explain` prints.
pub fn explain(objects: Vec<Value>, q: &Question) -> Result<String, String> {
    let resource = some(&q.resource).ok_or("name a Resource as NAMESPACE/NAME")?;
    let docs: Vec<Manifest> = objects
        .into_iter()
        .map(|value| Manifest {
            path: "cluster".into(),
            value,
        })
        .collect();
    let world = World::from_manifests(&docs).map_err(|e| e.to_string())?;
    rustronaut_cli::explain(
        &world,
        resource,
        some(&q.identity),
        some(&q.method),
        some(&q.path).map(String::from),
        None,
        some(&q.source_ip).map(String::from),
        some(&q.time).map(String::from),
        false,
    )
    .map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn world() -> Vec<Value> {
        vec![
            json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant", "metadata": {"name": "acme"},
                   "spec": {"namespaces": ["acme-apps"], "domains": ["*.acme.example"]}}),
            json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource", "metadata": {"name": "wiki", "namespace": "acme-apps"},
                   "spec": {"protocol": "HTTP", "hostnames": ["wiki.acme.example"],
                            "rules": [{"name": "all", "upstreams": [{"service": {"name": "wiki", "port": 80}}]}]}}),
            json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy", "metadata": {"name": "office", "namespace": "acme-apps"},
                   "spec": {"action": "Allow", "targetRefs": [{"name": "wiki"}],
                            "rules": [{"name": "office", "from": [{"sourceCIDRs": {"cidrs": ["10.0.0.0/8"]}}]}]}}),
        ]
    }

    #[test]
    fn the_explanation_is_the_clis() {
        let q = Question {
            resource: Some("acme-apps/wiki".into()),
            source_ip: Some("10.1.2.3".into()),
            path: Some("/".into()),
            ..Question::default()
        };
        let text = explain(world(), &q).unwrap();
        assert!(text.starts_with("decision: Allow"), "{text}");
        assert!(text.contains("office"), "{text}");
        let outside = Question {
            source_ip: Some("192.0.2.1".into()),
            ..q.clone()
        };
        let text = explain(world(), &outside).unwrap();
        assert!(text.starts_with("decision: Deny"), "{text}");
        assert!(text.contains("closest Allow"), "{text}");
        let err = explain(
            world(),
            &Question {
                resource: Some("other/wiki".into()),
                ..q
            },
        )
        .unwrap_err();
        assert!(err.contains("belongs to no Tenant"), "{err}");
        assert!(explain(world(), &Question::default()).is_err());
    }
}

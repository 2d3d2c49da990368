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

/// The namespaces whose Resources and Policies can decide a request to a Resource in `ns`:
/// every namespace (and admin namespace) of the Tenants that claim `ns`, since nothing
/// crosses tenants (a Policy in the admin namespace may select Resources in all of them).
/// When no Tenant claims `ns`, only `ns`: the explanation then says so.
///
/// Reading these instead of every namespace keeps the page's memory to one tenant's
/// objects (at 1,000 objects over 20 tenants, the whole lists held 17 MB at the peak).
/// When two Tenants claim `ns` both are kept; the compiled world decides which owns it.
pub fn namespaces_to_read(tenants: &[Value], ns: &str) -> std::collections::BTreeSet<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out: std::collections::BTreeSet<String> = tenants
        .iter()
        .map(|t| &t["spec"])
        .filter(|spec| strings(&spec["namespaces"]).iter().any(|n| n == ns))
        .flat_map(|spec| {
            let mut all = strings(&spec["namespaces"]);
            all.extend(spec["adminNamespace"].as_str().map(String::from));
            all
        })
        .collect();
    out.insert(ns.to_string());
    out
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
    fn only_the_claiming_tenants_namespaces_are_read() {
        let tenants = vec![
            json!({"metadata": {"name": "acme"}, "spec": {"namespaces": ["acme-apps", "acme-web"], "adminNamespace": "acme-admin"}}),
            json!({"metadata": {"name": "beta"}, "spec": {"namespaces": ["beta"]}}),
            json!({"metadata": {"name": "broken"}, "spec": {"namespaces": null}}),
        ];
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            namespaces_to_read(&tenants, "acme-web"),
            set(&["acme-admin", "acme-apps", "acme-web"])
        );
        assert_eq!(namespaces_to_read(&tenants, "beta"), set(&["beta"]));
        assert_eq!(
            namespaces_to_read(&tenants, "nobody"),
            set(&["nobody"]),
            "an unclaimed namespace is read alone, and the explanation says no Tenant claims it"
        );
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

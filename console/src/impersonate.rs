//! Kubernetes clients that act as the signed-in person.
//!
//! Every read and write the console makes for a person goes through a client built here:
//! the console's own credentials plus `Impersonate-User` and one `Impersonate-Group` per
//! group, so the API server's RBAC (and admission, and audit) sees the person, not the
//! console. The console's ServiceAccount may only `impersonate` users and groups; it cannot
//! read or write the four kinds by itself.
//!
//! A client is built per request from the base configuration. That costs a TLS client
//! configuration each time, which is small next to a page's API calls, and keeps no
//! per-person state in the console.

use crate::oidc::Identity;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ImpersonateError {
    /// kube refused the configuration.
    #[error("failed to build an impersonating client: {0}")]
    Build(#[from] kube::Error),
}

/// Builds impersonating clients from the console's own configuration.
#[derive(Clone)]
pub struct Impersonator {
    base: kube::Config,
}

impl std::fmt::Debug for Impersonator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Impersonator")
            .field("cluster", &self.base.cluster_url.to_string())
            .finish_non_exhaustive()
    }
}

impl Impersonator {
    /// Impersonates on top of `base` (the console's own credentials).
    pub fn new(base: kube::Config) -> Self {
        Self { base }
    }

    /// The configuration a client for `id` uses.
    pub fn config(&self, id: &Identity) -> kube::Config {
        let mut c = self.base.clone();
        c.auth_info.impersonate = Some(id.user.clone());
        c.auth_info.impersonate_groups = Some(id.groups.clone());
        c
    }

    /// A client acting as `id`.
    pub fn client(&self, id: &Identity) -> Result<kube::Client, ImpersonateError> {
        Ok(kube::Client::try_from(self.config(id))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};

    /// A real HTTP server standing in for the API server's transport (not its behaviour):
    /// it records the headers each request arrives with.
    async fn recorder() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(headers);
                axum::Json(serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}
                }))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn every_request_carries_the_person_as_user_and_groups() {
        let (url, seen) = recorder().await;
        let base = kube::Config::new(url.parse().unwrap());
        let imp = Impersonator::new(base);
        let alice = Identity {
            user: "oidc:alice@acme.example".into(),
            groups: vec!["oidc:sre".into(), "oidc:dev".into()],
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(imp.client(&alice).unwrap());
        api.get("default").await.unwrap();
        let bob = Identity {
            user: "oidc:bob".into(),
            groups: vec![],
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(imp.client(&bob).unwrap());
        api.get("default").await.unwrap();

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let values = |h: &HeaderMap, name: &str| -> Vec<String> {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            values(&seen[0], "impersonate-user"),
            ["oidc:alice@acme.example"]
        );
        assert_eq!(
            values(&seen[0], "impersonate-group"),
            ["oidc:sre", "oidc:dev"]
        );
        assert_eq!(values(&seen[1], "impersonate-user"), ["oidc:bob"]);
        assert!(values(&seen[1], "impersonate-group").is_empty());
    }
}

//! Configuration from the Kubernetes API: the operator writes the compiled snapshot into a
//! Secret, each gateway pod watches that one Secret and reports the version it loaded into a
//! ConfigMap the operator reads for the Gateway's status.
//!
//! ```text
//!  operator --apply--> Secret <gw>-snapshot {snapshot.json}
//!                          | watch (fieldSelector metadata.name=<gw>-snapshot)
//!                          v
//!  gateway pod: Reloader::offer(bytes) --refused--> last good snapshot keeps serving
//!                          | applied: version
//!                          v
//!  ConfigMap <gw>-status {data[<pod name>] = version}  (server-side apply, one field
//!                          manager per pod, so pods never overwrite each other's entries)
//! ```
//!
//! Why a Secret and not a ConfigMap: the snapshot carries secret material (API-key hashes,
//! TLS private keys, session keys), and Secrets are what RBAC and encryption at rest treat as
//! such. Why a watch of one named object: the gateway's Role grants `get/list/watch` on that
//! single `resourceName`, which Kubernetes honours for list/watch only with a
//! `metadata.name` field selector; a gateway can read nothing else.
//!
//! Why the status goes to a ConfigMap and not to the Gateway's status: a gateway pod must not
//! be able to write anything the operator decides from; a per-Gateway ConfigMap keeps its
//! write permission to one object that only reports.

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher::Config};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The key of the snapshot in the Secret (the operator's contract).
pub use rustronaut_contract::deploy::SNAPSHOT_KEY;

/// Errors of the Kubernetes configuration source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A `NAMESPACE/NAME` flag that is not one.
    #[error("{0:?} is not NAMESPACE/NAME")]
    BadRef(String),
    /// The Secret has no snapshot key.
    #[error("Secret {object} has no key {SNAPSHOT_KEY:?}")]
    NoSnapshot {
        /// namespace/name.
        object: String,
    },
    /// No usable Kubernetes client configuration (in-cluster or KUBECONFIG).
    #[error("no Kubernetes client configuration: {0}")]
    Client(#[source] kube::Error),
}

/// A namespaced object named by a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::str::FromStr for ObjectRef {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SourceError::BadRef(s.to_string());
        let (ns, name) = s.split_once('/').ok_or_else(bad)?;
        let dns_label = |v: &str| {
            !v.is_empty()
                && v.len() <= 253
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !dns_label(ns) || !dns_label(name) {
            return Err(bad());
        }
        Ok(Self {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The snapshot bytes of a Secret.
pub fn snapshot_bytes(secret: &Secret) -> Result<Vec<u8>, SourceError> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(SNAPSHOT_KEY))
        .map(|b| b.0.clone())
        .ok_or_else(|| SourceError::NoSnapshot {
            object: format!(
                "{}/{}",
                secret.metadata.namespace.as_deref().unwrap_or_default(),
                secret.metadata.name.as_deref().unwrap_or_default()
            ),
        })
}

/// The field manager of one pod's status entry: distinct per pod, so server-side apply keeps
/// every pod's entry and removes none when another pod reports.
pub fn field_manager(pod: &str) -> String {
    // Field managers are limited to 128 characters; pod names to 253.
    let mut m = format!("rustronaut-gateway-{pod}");
    m.truncate(128);
    m
}

/// The server-side apply body that reports `version` as loaded by `pod`.
pub fn status_patch(status: &ObjectRef, pod: &str, version: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": status.name, "namespace": status.namespace},
        "data": {pod: version},
    })
}

/// A client from the pod's ServiceAccount or, outside a cluster, from `KUBECONFIG`.
pub async fn client() -> Result<kube::Client, SourceError> {
    kube::Client::try_default()
        .await
        .map_err(SourceError::Client)
}

/// Watches the Secret `object` and sends its snapshot bytes on every change, for ever.
/// Watch errors are retried with backoff (an apiserver restart, a lost RBAC grant); a deleted
/// Secret or one without the key is logged and the last good snapshot keeps serving.
pub async fn watch_secret(client: kube::Client, object: ObjectRef, tx: mpsc::Sender<Vec<u8>>) {
    let api: Api<Secret> = Api::namespaced(client, &object.namespace);
    let cfg = Config::default().fields(&format!("metadata.name={}", object.name));
    let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(secret) | Event::InitApply(secret)) => match snapshot_bytes(&secret) {
                Ok(bytes) => {
                    if tx.send(bytes).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "snapshot not applied; the last good snapshot keeps serving")
                }
            },
            Ok(Event::Delete(_)) => tracing::warn!(
                secret = %object,
                "snapshot Secret deleted; the last good snapshot keeps serving"
            ),
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(secret = %object, error = %e, "watching the snapshot Secret; retrying")
            }
        }
    }
}

/// Reports every version `versions` sees as loaded by `pod` into the ConfigMap `status`,
/// retrying with capped exponential backoff until it lands (the newest version wins).
pub async fn report_status(
    client: kube::Client,
    status: ObjectRef,
    pod: String,
    mut versions: watch::Receiver<Option<String>>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &status.namespace);
    let params = PatchParams::apply(&field_manager(&pod)).force();
    loop {
        let Some(version) = versions.borrow_and_update().clone() else {
            if versions.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut delay = Duration::from_millis(200);
        loop {
            let body = status_patch(&status, &pod, &version);
            match api.patch(&status.name, &params, &Patch::Apply(&body)).await {
                Ok(_) => {
                    tracing::info!(configmap = %status, version = %version, "loaded version reported");
                    break;
                }
                Err(e) => {
                    tracing::warn!(configmap = %status, error = %e, "reporting the loaded version; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = versions.changed() => {
                            if changed.is_err() { return; }
                            break;
                        }
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        if versions.has_changed().unwrap_or(false) {
            continue;
        }
        if versions.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn object_refs_parse_and_refuse_garbage() {
        let r: ObjectRef = "team-a/edge-snapshot".parse().unwrap();
        assert_eq!(r.namespace, "team-a");
        assert_eq!(r.name, "edge-snapshot");
        assert_eq!(r.to_string(), "team-a/edge-snapshot");
        for bad in ["", "edge", "/edge", "team-a/", "Team/x", "a/b/c", "a/b c"] {
            assert!(bad.parse::<ObjectRef>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn snapshot_bytes_come_from_the_key_or_name_the_secret() {
        let mut s = Secret::default();
        s.metadata.namespace = Some("ns".into());
        s.metadata.name = Some("gw-snapshot".into());
        let err = snapshot_bytes(&s).unwrap_err().to_string();
        assert!(
            err.contains("ns/gw-snapshot") && err.contains(SNAPSHOT_KEY),
            "{err}"
        );
        s.data = Some(
            [(SNAPSHOT_KEY.to_string(), ByteString(b"{}".to_vec()))]
                .into_iter()
                .collect(),
        );
        assert_eq!(snapshot_bytes(&s).unwrap(), b"{}");
    }

    #[test]
    fn status_is_one_entry_per_pod_under_its_own_manager() {
        let cm: ObjectRef = "ns/gw-status".parse().unwrap();
        let p = status_patch(&cm, "gw-7d9-abc", "sha256:1");
        assert_eq!(p["data"]["gw-7d9-abc"], "sha256:1");
        assert_eq!(p["metadata"]["namespace"], "ns");
        assert_eq!(p["data"].as_object().unwrap().len(), 1);
        assert_eq!(field_manager("gw-1"), "rustronaut-gateway-gw-1");
        assert_eq!(field_manager(&"x".repeat(300)).len(), 128);
    }
}

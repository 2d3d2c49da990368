//! What every reconciler shares.

use crate::metrics::Metrics;
use kube::runtime::events::Reporter;
use std::sync::Arc;

/// The field manager of every server-side apply the operator makes. Fixed, so a restarted or
/// failed-over operator owns exactly the fields its predecessor owned (and stops owning
/// fields it no longer sets).
pub const FIELD_MANAGER: &str = "rustronaut-operator";

/// Shared by all controllers; cheap to clone through the [`Arc`].
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client (the operator's ServiceAccount in a cluster).
    pub client: kube::Client,
    /// Who reports Events.
    pub reporter: Reporter,
    /// Reconcile metrics.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// A context for `client`, reporting Events as `instance` (the pod name in a cluster).
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: FIELD_MANAGER.to_string(),
                instance,
            },
            metrics: Arc::new(Metrics::default()),
        }
    }
}

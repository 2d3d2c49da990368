//! What every reconciler shares: the client, metrics and Event reporter ([`Context`]), the
//! field manager, and the builders' [`Settings`] from the operator's flags.

use crate::metrics::Metrics;
use kube::runtime::events::Reporter;
use std::collections::BTreeMap;
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
    /// A Recorder for news: Events that each say something new (a snapshot version
    /// published, the pods rolled). kube-runtime's Recorder folds every Event with the same
    /// type, reason, action and object into one series for 6 minutes and keeps the first
    /// note, so a second snapshot published within 6 minutes showed as the first one with a
    /// count of 2. A fresh Recorder has no series to fold into; Warnings keep the shared one,
    /// where folding repeats is the point.
    pub fn news(&self) -> kube::runtime::events::Recorder {
        kube::runtime::events::Recorder::new(self.client.clone(), self.reporter.clone())
    }

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

/// Namespace of the operator when nothing else says (the chart's default).
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "rustronaut-system";

/// Settings of the builders that come from the operator's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Gateway container image.
    pub image: String,
    /// Namespace the operator's pods run in: the hub's admin port (`/status`, which lists
    /// every site's endpoint and key) admits the operator's pods of this namespace only.
    pub operator_namespace: String,
    /// Labels of the namespaces whose pods may reach the admin ports of gateway and hub pods
    /// (`/metrics`: a Prometheus). Empty: none (the node itself always may, for probes).
    pub admin_from_namespaces: BTreeMap<String, String>,
    /// Pod and Service networks the cluster's objects do not name (`--cluster-networks`):
    /// refused in EndpointSlices the endpointslice controller did not write
    /// ([`crate::cache::networks`]).
    pub cluster_networks: Vec<rustronaut_contract::cidr::Cidr>,
}

impl Settings {
    /// The default image: the gateway of the same release as this operator.
    pub fn default_image() -> String {
        format!("ghcr.io/rustronaut/gateway:{}", env!("CARGO_PKG_VERSION"))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: Self::default_image(),
            operator_namespace: DEFAULT_OPERATOR_NAMESPACE.to_string(),
            admin_from_namespaces: BTreeMap::new(),
            cluster_networks: Vec::new(),
        }
    }
}

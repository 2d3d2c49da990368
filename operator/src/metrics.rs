//! Prometheus metrics of the reconcilers: reconciles and errors by kind, durations.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels of the reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `Gateway`, `Tenant` (a Tenant pass) or `ResourcePolicyStatus` (a status pass).
    pub kind: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind being reconciled.
    pub kind: String,
    /// A short, bounded reason (an error variant name), never a message.
    pub reason: String,
}

/// The operator's metrics; register them once with [`Metrics::register`].
pub struct Metrics {
    /// Reconciles started, by kind.
    pub reconciles: Family<KindLabel, Counter>,
    /// Reconciles that failed, by kind and reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds, by kind.
    pub duration: Family<KindLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `rustronaut_operator_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("rustronaut_operator");
        sub.register(
            "reconciles",
            "Reconciles started, by kind",
            self.reconciles.clone(),
        );
        sub.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and reason",
            self.errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Reconcile duration, by kind",
            self.duration.clone(),
        );
    }

    /// Records one finished reconcile of `kind`; `error` names the failure reason, if any.
    pub fn observe(&self, kind: &str, took: Duration, error: Option<&str>) {
        let k = KindLabel {
            kind: kind.to_string(),
        };
        self.reconciles.get_or_create(&k).inc();
        self.duration.get_or_create(&k).observe(took.as_secs_f64());
        if let Some(reason) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    kind: kind.to_string(),
                    reason: reason.to_string(),
                })
                .inc();
        }
    }
}

//! Prometheus metrics of the operator: reconciles and errors by kind, durations, leadership,
//! and per Gateway the snapshot version it publishes and whether its last build failed.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `rustronaut_operator_reconciles_total` | `kind` | reconciles started |
//! | `rustronaut_operator_reconcile_errors_total` | `kind`, `reason` | reconciles that failed, by error variant |
//! | `rustronaut_operator_reconcile_duration_seconds` | `kind` | reconcile durations (histogram) |
//! | `rustronaut_operator_leader` | | 1 while this replica runs the controllers (holds the Lease) |
//! | `rustronaut_operator_gateway_config_info` | `gateway_namespace`, `gateway`, `version` | 1 for the snapshot version published for a Gateway (the one its pods should serve) |
//! | `rustronaut_operator_gateway_build_failed` | `gateway_namespace`, `gateway`, `reason` | 1 while a Gateway's last snapshot build failed (the last good one is served) |
//! | `rustronaut_operator_gateway_status_from_reports_total` | | Gateway statuses written from a pod's report or the Deployment's readiness alone, without a reconcile |
//! | `rustronaut_operator_gateway_builds_total` | `by` | Gateway snapshots compiled, by who: `Gateway` (its reconcile) or `ResourcePolicyStatus` (the status pass, for a Gateway no reconcile had built since the last change that may affect it) |
//! | `rustronaut_operator_gateway_builds_shared_total` | | Gateway builds the status pass took from a reconcile instead of compiling again |
//! | `rustronaut_operator_status_writes_total` | `kind` | status subresource writes by the passes: `Resource`, `Policy`, `Tenant` (only what differs from the cached status is written) |
//! | `rustronaut_operator_sidecar_admissions_total` | `outcome` | pods the sidecar injection webhook answered for: `injected`, `unchanged`, `warned` (opted in, no Resource), `denied`, `error` (a request it could not read) |
//!
//! Cardinality: kinds and reasons are constants; the per-Gateway families hold one series per
//! Gateway (the label sets of a Gateway are replaced, not added to, and dropped with it). The
//! labels are `gateway_namespace` rather than `namespace`, which Prometheus sets to the
//! operator's own namespace when it scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Labels of the reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `Gateway`, `Tenant` (a Tenant pass), `ResourcePolicyStatus` (a status pass),
    /// `SidecarResource` (a sidecar Resource reconcile) or `SidecarPods` (a sidecar pod pass).
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

/// Labels of `gateway_config_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayVersionLabels {
    /// The Gateway's namespace.
    pub gateway_namespace: String,
    /// The Gateway's name.
    pub gateway: String,
    /// The snapshot's content hash (the gateway's `rustronaut_gateway_config_info` version).
    pub version: String,
}

/// Labels of `gateway_build_failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayFailureLabels {
    /// The Gateway's namespace.
    pub gateway_namespace: String,
    /// The Gateway's name.
    pub gateway: String,
    /// The Ready condition's reason (a constant).
    pub reason: String,
}

/// Labels of `sidecar_admissions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `injected`, `unchanged`, `warned`, `denied` or `error` (a constant).
    pub outcome: String,
}

/// Labels of `gateway_builds_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Who compiled: `Gateway` or `ResourcePolicyStatus` (a constant).
    pub by: String,
}

/// What the per-Gateway families currently hold for one Gateway, so a change replaces it.
#[derive(Default)]
struct GatewaySeries {
    version: Option<GatewayVersionLabels>,
    failed: Option<GatewayFailureLabels>,
}

/// The operator's metrics; register them once with [`Metrics::register`].
pub struct Metrics {
    /// Reconciles started, by kind.
    pub reconciles: Family<KindLabel, Counter>,
    /// Reconciles that failed, by kind and reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds, by kind.
    pub duration: Family<KindLabel, Histogram>,
    /// 1 while this replica runs the controllers.
    pub leader: Gauge,
    /// Published snapshot version, per Gateway.
    pub gateway_version: Family<GatewayVersionLabels, Gauge>,
    /// 1 while a Gateway's last build failed.
    pub gateway_failed: Family<GatewayFailureLabels, Gauge>,
    /// Admissions answered by the sidecar injection webhook, by outcome (every replica counts
    /// its own).
    pub admissions: Family<AdmissionLabels, Counter>,
    /// Gateway statuses recomputed from a pod's report or the Deployment's readiness alone,
    /// without a reconcile (`crate::gateway::reports`).
    pub status_from_reports: Counter,
    /// Gateway snapshots compiled, by who.
    pub builds: Family<BuildLabels, Counter>,
    /// Builds the status pass reused from a Gateway reconcile (`crate::cache::builds`).
    pub builds_shared: Counter,
    /// Status writes of the Resource/Policy and Tenant passes, by kind.
    pub status_writes: Family<KindLabel, Counter>,
    gateways: Mutex<HashMap<(String, String), GatewaySeries>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            leader: Gauge::default(),
            gateway_version: Family::default(),
            gateway_failed: Family::default(),
            admissions: Family::default(),
            status_from_reports: Counter::default(),
            builds: Family::default(),
            builds_shared: Counter::default(),
            status_writes: Family::default(),
            gateways: Mutex::default(),
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
        sub.register(
            "leader",
            "1 while this replica holds the Lease and runs the controllers",
            self.leader.clone(),
        );
        sub.register(
            "gateway_config_info",
            "The snapshot version published for a Gateway (value 1)",
            self.gateway_version.clone(),
        );
        sub.register(
            "gateway_build_failed",
            "1 while the last snapshot build of a Gateway failed, by reason",
            self.gateway_failed.clone(),
        );
        sub.register(
            "sidecar_admissions",
            "Pods the sidecar injection webhook answered for, by outcome",
            self.admissions.clone(),
        );
        sub.register(
            "gateway_status_from_reports",
            "Gateway statuses written from a pod's report alone, without a reconcile",
            self.status_from_reports.clone(),
        );
        sub.register(
            "gateway_builds",
            "Gateway snapshots compiled, by who compiled them",
            self.builds.clone(),
        );
        sub.register(
            "gateway_builds_shared",
            "Gateway builds the status pass reused from a reconcile instead of compiling again",
            self.builds_shared.clone(),
        );
        sub.register(
            "status_writes",
            "Status writes of the Resource/Policy and Tenant passes, by kind",
            self.status_writes.clone(),
        );
    }

    /// Counts one status write of an object of `kind` (a constant).
    pub fn status_written(&self, kind: &str) {
        self.status_writes
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts `n` Gateway snapshots compiled by `by` (a constant kind).
    pub fn gateway_builds(&self, by: &str, n: u64) {
        self.builds
            .get_or_create(&BuildLabels { by: by.to_string() })
            .inc_by(n);
    }

    /// Counts one webhook admission with `outcome` (a constant).
    pub fn admitted(&self, outcome: &str) {
        self.admissions
            .get_or_create(&AdmissionLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Records the outcome of a Gateway's snapshot build: the version now published (if any)
    /// and the failure reason (if the build failed). Replaces what was recorded before.
    pub fn gateway_built(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
        failed: Option<&str>,
    ) {
        let mut gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let series = gateways
            .entry((namespace.to_string(), name.to_string()))
            .or_default();
        let version = version.map(|v| GatewayVersionLabels {
            gateway_namespace: namespace.to_string(),
            gateway: name.to_string(),
            version: v.to_string(),
        });
        if series.version != version {
            if let Some(old) = series.version.take() {
                self.gateway_version.remove(&old);
            }
            if let Some(new) = &version {
                self.gateway_version.get_or_create(new).set(1);
            }
            series.version = version;
        }
        let failed = failed.map(|r| GatewayFailureLabels {
            gateway_namespace: namespace.to_string(),
            gateway: name.to_string(),
            reason: r.to_string(),
        });
        if series.failed != failed {
            if let Some(old) = series.failed.take() {
                self.gateway_failed.remove(&old);
            }
            if let Some(new) = &failed {
                self.gateway_failed.get_or_create(new).set(1);
            }
            series.failed = failed;
        }
    }

    /// Drops the series of Gateways for which `exists` is false (deleted ones), so a deleted
    /// Gateway's failure does not alert forever.
    pub fn retain_gateways(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        gateways.retain(|(ns, name), series| {
            let keep = exists(ns, name);
            if !keep {
                if let Some(v) = series.version.take() {
                    self.gateway_version.remove(&v);
                }
                if let Some(f) = series.failed.take() {
                    self.gateway_failed.remove(&f);
                }
            }
            keep
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    /// The samples of `name`, sorted (a family encodes in hash order).
    fn samples(text: &str, name: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn gateway_series_are_replaced_and_dropped() {
        let m = Metrics::default();
        m.gateway_built("acme", "edge", Some("v1"), None);
        m.gateway_built("acme", "edge", Some("v2"), None);
        m.gateway_built("beta", "edge", Some("b1"), None);
        let t = text(&m);
        assert_eq!(
            samples(&t, "rustronaut_operator_gateway_config_info"),
            [
                "rustronaut_operator_gateway_config_info{gateway_namespace=\"acme\",gateway=\"edge\",version=\"v2\"} 1",
                "rustronaut_operator_gateway_config_info{gateway_namespace=\"beta\",gateway=\"edge\",version=\"b1\"} 1",
            ]
        );

        // A failed build keeps the last version and adds the failure; a success clears it.
        m.gateway_built("acme", "edge", Some("v2"), Some("InvalidSpec"));
        let t = text(&m);
        assert!(t.contains(
            "rustronaut_operator_gateway_build_failed{gateway_namespace=\"acme\",gateway=\"edge\",reason=\"InvalidSpec\"} 1"
        ));
        m.gateway_built("acme", "edge", Some("v3"), None);
        let t = text(&m);
        assert!(samples(&t, "rustronaut_operator_gateway_build_failed").is_empty());

        // A deleted Gateway's series go.
        m.retain_gateways(|ns, _| ns == "beta");
        let t = text(&m);
        assert_eq!(
            samples(&t, "rustronaut_operator_gateway_config_info"),
            [
                "rustronaut_operator_gateway_config_info{gateway_namespace=\"beta\",gateway=\"edge\",version=\"b1\"} 1"
            ]
        );
    }

    #[test]
    fn leader_gauge_is_exported() {
        let m = Metrics::default();
        assert!(text(&m).contains("rustronaut_operator_leader 0"));
        m.leader.set(1);
        assert!(text(&m).contains("rustronaut_operator_leader 1"));
    }
}

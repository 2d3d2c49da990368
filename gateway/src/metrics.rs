//! Prometheus metrics of the gateway, served on the admin port at `/metrics`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `rustronaut_gateway_requests_total` | `resource`, `status` | responses, by Resource (`-` when none routed) and status |
//! | `rustronaut_gateway_decisions_total` | `effect`, `reason` | policy decisions |
//! | `rustronaut_gateway_request_duration_seconds` | | time from request headers to the end of the response |
//! | `rustronaut_gateway_config_info` | `version` | 1 for the snapshot being served |
//! | `rustronaut_gateway_snapshot_reloads_total` | `result` (`applied`, `refused`) | reload attempts |
//! | `rustronaut_gateway_snapshot_refused_total` | `reason` | refused snapshots, by error kind |
//! | `rustronaut_gateway_upstream_ejections_total` | | passive ejections after connect failures |
//! | `rustronaut_gateway_upstream_up` | `address` | 1/0: the last active health verdict of an address (upstream addresses from the snapshot, never clients'; prefer the two per-Resource gauges below for alerts) |
//! | `rustronaut_gateway_upstream_endpoints` | `resource` | upstream addresses of a Resource in the snapshot (Resources with addresses only) |
//! | `rustronaut_gateway_upstream_healthy_endpoints` | `resource` | of those, the ones that may receive traffic now (not down by active checks, not ejected) |
//! | `rustronaut_gateway_jwks_fetches_total` | `result` (`ok`, `failed`) | remote JWKS fetches |
//! | `rustronaut_gateway_oidc_logins_total` | `result` (`ok`, or why: `InvalidCallback`, `LoginRefused`, `ProviderUnavailable`, ...) | OIDC callbacks |
//! | `rustronaut_gateway_l4_connections_total` | `protocol`, `resource`, `result` | L4 connections and UDP flows: `allowed`, `denied` (policy), `refused` (no route, bad PROXY header or handshake), `unreachable` (allowed, no upstream connected) |
//! | `rustronaut_gateway_l4_udp_flows` | | UDP flows remembered (allowed and denied) |
//! | `rustronaut_gateway_l4_udp_flows_dropped_total` | | datagrams of new flows dropped at the flow cap |
//! | `rustronaut_gateway_l4_udp_client_flows_dropped_total` | | datagrams of new flows dropped because their client holds `--udp-max-flows-per-client` flows |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{PoisonError, RwLock};

/// Labels of `requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `namespace/name`, or `-`.
    pub resource: String,
    /// HTTP status.
    pub status: u16,
}

/// Labels of `decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `Allow` or `Deny`.
    pub effect: &'static str,
    /// The evaluator's reason, or the gateway's (`InvalidCredentials`, `RateLimited`).
    pub reason: &'static str,
}

/// Labels of `l4_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct L4Labels {
    /// `TCP`, `TLSPassthrough` or `UDP`.
    pub protocol: &'static str,
    /// `namespace/name`, or `-`.
    pub resource: String,
    /// `allowed`, `denied`, `refused` or `unreachable`.
    pub result: &'static str,
}

/// One-label sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// Snapshot content hash.
    pub version: String,
}

/// One-label sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome.
    pub result: &'static str,
}

/// One-label sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Error kind.
    pub reason: &'static str,
}

/// One-label sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// `namespace/name` of a Resource.
    pub resource: String,
}

/// One-label sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabel {
    /// Upstream `ip:port`.
    pub address: String,
}

/// All metric handles, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Responses.
    pub requests: Family<RequestLabels, Counter>,
    /// Decisions.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Request latency.
    pub latency: Histogram,
    /// Config version being served.
    pub config: Family<VersionLabel, Gauge>,
    /// Reload attempts.
    pub reloads: Family<ResultLabel, Counter>,
    /// Refused snapshots by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Passive ejections.
    pub ejections: Counter,
    /// Active health by address.
    pub upstream_up: Family<AddressLabel, Gauge>,
    /// Upstream addresses per Resource.
    pub upstream_endpoints: Family<ResourceLabel, Gauge>,
    /// Upstream addresses per Resource that may receive traffic.
    pub upstream_healthy_endpoints: Family<ResourceLabel, Gauge>,
    /// Remote JWKS fetches.
    pub jwks_fetches: Family<ResultLabel, Counter>,
    /// OIDC callbacks by result (a forged-callback spike shows here).
    pub oidc_logins: Family<ResultLabel, Counter>,
    /// L4 connections and UDP flows by outcome.
    pub l4_connections: Family<L4Labels, Counter>,
    /// UDP flows remembered.
    pub l4_udp_flows: Gauge,
    /// Datagrams of new UDP flows dropped at the cap.
    pub l4_udp_flows_dropped: Counter,
    /// Datagrams of new UDP flows dropped at the per-client cap.
    pub l4_udp_client_flows_dropped: Counter,
    /// Handles of `requests` and `decisions` counters, for [`Metrics::count_request`] and
    /// [`Metrics::count_decision`].
    handles: Handles,
}

/// The `requests_total` counters of one resource, by status.
type StatusCounters = Vec<(u16, Counter)>;

/// Counters of `requests_total` and `decisions_total` by label values, in front of their
/// families. A `Family` finds a counter by hashing its whole label set with std's SipHash
/// (and `requests` needs the resource as an owned `String` to ask), on every request: about
/// 700 instructions of the gateway's per-request path (issue 19, callgrind). A handle here
/// is a clone of the family's counter (the same atomic), found by foldhash without a copy
/// of the name; the family is asked once per label set. Like the family, this only grows:
/// by the Resources and statuses the gateway has served.
#[derive(Debug, Default)]
struct Handles {
    /// By resource, then status (a few per resource: searched in order).
    requests: RwLock<foldhash::HashMap<Box<str>, StatusCounters>>,
    /// By (effect, reason).
    decisions: RwLock<foldhash::HashMap<(&'static str, &'static str), Counter>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rustronaut_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let config = Family::<VersionLabel, Gauge>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let refused = Family::<ReasonLabel, Counter>::default();
        let ejections = Counter::default();
        let upstream_up = Family::<AddressLabel, Gauge>::default();
        let upstream_endpoints = Family::<ResourceLabel, Gauge>::default();
        let upstream_healthy_endpoints = Family::<ResourceLabel, Gauge>::default();
        let jwks_fetches = Family::<ResultLabel, Counter>::default();
        let oidc_logins = Family::<ResultLabel, Counter>::default();
        let l4_connections = Family::<L4Labels, Counter>::default();
        let l4_udp_flows = Gauge::default();
        let l4_udp_flows_dropped = Counter::default();
        let l4_udp_client_flows_dropped = Counter::default();
        registry.register(
            "requests",
            "HTTP responses by resource and status",
            requests.clone(),
        );
        registry.register(
            "decisions",
            "Policy decisions by effect and reason",
            decisions.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request headers to the end of the response",
            latency.clone(),
        );
        registry.register(
            "config_info",
            "The snapshot version being served (value 1)",
            config.clone(),
        );
        registry.register(
            "snapshot_reloads",
            "Snapshot reload attempts by result",
            reloads.clone(),
        );
        registry.register(
            "snapshot_refused",
            "Refused snapshots by reason",
            refused.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Upstream addresses ejected after a connect failure",
            ejections.clone(),
        );
        registry.register(
            "upstream_up",
            "Last active health verdict of an upstream address (1 up, 0 down)",
            upstream_up.clone(),
        );
        registry.register(
            "upstream_endpoints",
            "Upstream addresses of a Resource in the snapshot",
            upstream_endpoints.clone(),
        );
        registry.register(
            "upstream_healthy_endpoints",
            "Upstream addresses of a Resource that may receive traffic (not down, not ejected)",
            upstream_healthy_endpoints.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Remote JWKS fetches by result",
            jwks_fetches.clone(),
        );
        registry.register(
            "oidc_logins",
            "OIDC login callbacks by result",
            oidc_logins.clone(),
        );
        registry.register(
            "l4_connections",
            "L4 connections and UDP flows by protocol, resource and result",
            l4_connections.clone(),
        );
        registry.register(
            "l4_udp_flows",
            "UDP flows remembered (allowed and denied)",
            l4_udp_flows.clone(),
        );
        registry.register(
            "l4_udp_flows_dropped",
            "Datagrams of new UDP flows dropped at the flow cap",
            l4_udp_flows_dropped.clone(),
        );
        registry.register(
            "l4_udp_client_flows_dropped",
            "Datagrams of new UDP flows dropped because their client is at its flow cap",
            l4_udp_client_flows_dropped.clone(),
        );
        Self {
            registry,
            requests,
            decisions,
            latency,
            config,
            reloads,
            refused,
            ejections,
            upstream_up,
            upstream_endpoints,
            upstream_healthy_endpoints,
            jwks_fetches,
            oidc_logins,
            l4_connections,
            l4_udp_flows,
            l4_udp_flows_dropped,
            l4_udp_client_flows_dropped,
            handles: Handles::default(),
        }
    }

    /// Counts a response of `resource` (`namespace/name`, or `-`) with `status` in
    /// `requests_total`.
    pub fn count_request(&self, resource: &str, status: u16) {
        {
            let map = self
                .handles
                .requests
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((_, c)) = map
                .get(resource)
                .and_then(|s| s.iter().find(|(st, _)| *st == status))
            {
                c.inc();
                return;
            }
        }
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                resource: resource.to_string(),
                status,
            })
            .clone();
        counter.inc();
        let mut map = self
            .handles
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let statuses = map.entry(resource.into()).or_default();
        if !statuses.iter().any(|(st, _)| *st == status) {
            statuses.push((status, counter));
        }
    }

    /// Counts a decision with `effect` and `reason` in `decisions_total`.
    pub fn count_decision(&self, effect: &'static str, reason: &'static str) {
        if let Some(c) = self
            .handles
            .decisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(effect, reason))
        {
            c.inc();
            return;
        }
        let counter = self
            .decisions
            .get_or_create(&DecisionLabels { effect, reason })
            .clone();
        counter.inc();
        self.handles
            .decisions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((effect, reason))
            .or_insert(counter);
    }

    /// Marks `version` as the one being served (and only it).
    pub fn set_version(&self, version: &str) {
        self.config.clear();
        self.config
            .get_or_create(&VersionLabel {
                version: version.to_string(),
            })
            .set(1);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handles in front of the families count into the families' own series: the
    /// first request of a label set through the family, later ones through the handle,
    /// each label set its own series.
    #[test]
    fn counted_requests_and_decisions_land_in_their_series() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.count_request("acme/web", 200);
        }
        m.count_request("acme/web", 503);
        m.count_request("-", 404);
        m.count_decision("Allow", "PolicyMatched");
        m.count_decision("Allow", "PolicyMatched");
        m.count_decision("Deny", "NoPolicyMatched");
        let text = m.encode();
        for line in [
            "rustronaut_gateway_requests_total{resource=\"acme/web\",status=\"200\"} 3",
            "rustronaut_gateway_requests_total{resource=\"acme/web\",status=\"503\"} 1",
            "rustronaut_gateway_requests_total{resource=\"-\",status=\"404\"} 1",
            "rustronaut_gateway_decisions_total{effect=\"Allow\",reason=\"PolicyMatched\"} 2",
            "rustronaut_gateway_decisions_total{effect=\"Deny\",reason=\"NoPolicyMatched\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let handles = m.handles.requests.read().unwrap();
        assert_eq!(handles.get("acme/web").map(Vec::len), Some(2));
    }
    use std::collections::{BTreeMap, BTreeSet};

    /// (metric, type, label names) of a text exposition; a histogram by its base name.
    pub(crate) fn families(text: &str) -> BTreeSet<(String, String, BTreeSet<String>)> {
        let types: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| types.contains_key(b)))
                .unwrap_or(name);
            let kind = types.get(base).copied().unwrap_or("untyped");
            let family = if kind == "counter" { name } else { base };
            let entry = out
                .entry(family.to_string())
                .or_insert((kind.to_string(), BTreeSet::new()));
            if let Some((labels, _)) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) {
                for pair in labels.split("\",") {
                    if let Some((k, _)) = pair.split_once("=\"")
                        && k != "le"
                    {
                        entry.1.insert(k.to_string());
                    }
                }
            }
        }
        out.into_iter().map(|(n, (k, l))| (n, k, l)).collect()
    }

    /// Rows `| \`prefix...\` | type | \`label\`, ... | ... |` of docs/observability.md.
    pub(crate) fn documented(prefix: &str) -> BTreeSet<(String, String, BTreeSet<String>)> {
        let page = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md");
        std::fs::read_to_string(page)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&format!("| `{prefix}")))
            .map(|l| {
                let c: Vec<&str> = l.split('|').map(str::trim).collect();
                let labels = c[3]
                    .split(',')
                    .map(|x| x.trim().trim_matches('`').to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
                (c[1].trim_matches('`').to_string(), c[2].to_string(), labels)
            })
            .collect()
    }

    #[test]
    fn metrics_are_the_documented_ones_and_no_label_holds_a_client() {
        let m = Metrics::new();
        // One sample in every family, so each shows its labels.
        m.requests
            .get_or_create(&RequestLabels {
                resource: "acme/web".into(),
                status: 200,
            })
            .inc();
        m.decisions
            .get_or_create(&DecisionLabels {
                effect: "Allow",
                reason: "PolicyMatched",
            })
            .inc();
        m.latency.observe(0.01);
        m.set_version("sha256:a");
        m.reloads
            .get_or_create(&ResultLabel { result: "applied" })
            .inc();
        m.refused
            .get_or_create(&ReasonLabel { reason: "Parse" })
            .inc();
        m.ejections.inc();
        m.upstream_up
            .get_or_create(&AddressLabel {
                address: "10.0.0.1:80".into(),
            })
            .set(1);
        let r = ResourceLabel {
            resource: "acme/web".into(),
        };
        m.upstream_endpoints.get_or_create(&r).set(2);
        m.upstream_healthy_endpoints.get_or_create(&r).set(1);
        m.jwks_fetches
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        m.oidc_logins
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        m.l4_connections
            .get_or_create(&L4Labels {
                protocol: "TCP",
                resource: "acme/db".into(),
                result: "allowed",
            })
            .inc();
        m.l4_udp_flows.set(1);
        m.l4_udp_flows_dropped.inc();
        m.l4_udp_client_flows_dropped.inc();
        let encoded = families(&m.encode());
        assert_eq!(encoded, documented("rustronaut_gateway_"));
        // Bounded cardinality: no label names a client, a user or a request path. The one
        // address label is upstream_up's, an upstream of the snapshot (pruned with it).
        for (name, _, labels) in &encoded {
            for l in labels {
                assert!(
                    !["client", "ip", "remote", "user", "path", "url", "host"]
                        .contains(&l.as_str()),
                    "{name}: label {l}"
                );
                assert!(
                    l != "address" || name == "rustronaut_gateway_upstream_up",
                    "{name}: label {l}"
                );
            }
        }
    }
}

//! `Resource` (namespaced): an application to protect, reached through one or more Gateways
//! (an *edge* Resource, `gatewayRefs`) or through a sidecar gateway injected next to the pods
//! it selects (a *sidecar* Resource, `workload`). Both read alike: the same protocol, rules
//! and Policies; a sidecar Resource names pods and ports instead of Gateways, hostnames and
//! upstreams, because its upstream is always the application on the pod's loopback.
//!
//! HTTP Resources route by hostname and then by `rules` (shaped like Gateway API HTTPRoute
//! rules, each with its own upstreams); TLSPassthrough, TCP and UDP Resources forward whole
//! connections to `upstreams`. An upstream is an in-cluster Service of the Resource's namespace
//! or a host at a remote site behind a Gateway's WireGuard tunnel.

use crate::common::{
    Condition, DURATION_PATTERN, HOSTNAME_PATTERN, HttpMethod, LABEL_PATTERN, NAME_PATTERN,
    PathMatch,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Resource spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "rustronaut.io",
    version = "v1alpha1",
    kind = "Resource",
    doc = "An application to protect: hostnames or ports, protocol, and upstreams (in-cluster Services or hosts at remote sites). Nothing reaches it unless a Policy allows it.",
    plural = "resources",
    shortname = "rtnres",
    category = "rustronaut",
    namespaced,
    status = "ResourceStatus",
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"Hostnames","type":"string","jsonPath":".spec.hostnames"}"#,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"Reachable\")].status","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.workload) != (size(self.gatewayRefs) > 0)").message("a Resource is reached either through Gateways (gatewayRefs) or through a sidecar next to its pods (workload): set exactly one"))]
#[x_kube(validation = Rule::new("has(self.workload) ? self.protocol in ['HTTP', 'TCP'] : true").message("a sidecar Resource (workload) is HTTP or TCP"))]
#[x_kube(validation = Rule::new("has(self.workload) ? size(self.hostnames) == 0 && size(self.ports) == 0 && size(self.upstreams) == 0 && self.rules.all(r, size(r.upstreams) == 0) && !has(self.loadBalancing) && !has(self.healthCheck) : true").message("a sidecar Resource (workload) forwards to its pod's own ports (workload.ports): it takes no hostnames, ports, upstreams, rule upstreams, loadBalancing or healthCheck"))]
#[x_kube(validation = Rule::new("!has(self.workload) && self.protocol in ['HTTP', 'TLSPassthrough'] ? size(self.hostnames) > 0 : true").message("HTTP and TLSPassthrough resources need at least one hostname"))]
#[x_kube(validation = Rule::new("has(self.workload) || (self.protocol in ['TCP', 'UDP'] ? size(self.ports) > 0 && size(self.hostnames) == 0 : size(self.ports) == 0)").message("TCP and UDP resources are reached by ports and take no hostnames; HTTP and TLSPassthrough resources take no ports"))]
#[x_kube(validation = Rule::new("has(self.workload) || (self.protocol == 'HTTP' ? size(self.rules) > 0 && size(self.upstreams) == 0 && self.rules.all(r, size(r.upstreams) > 0) : size(self.rules) == 0 && size(self.upstreams) > 0)").message("HTTP resources route with rules (each with its upstreams); other protocols forward to upstreams and take no rules"))]
#[x_kube(validation = Rule::new("!has(self.workload) || self.protocol == 'HTTP' || size(self.rules) == 0").message("a TCP sidecar Resource takes no rules"))]
pub struct ResourceSpec {
    /// Gateways (and optionally one listener of each) that serve this Resource. A Gateway only
    /// accepts Resources of the tenants its spec.tenants admits. Empty for a sidecar Resource.
    // Always serialised (no `skip_serializing_if`), so the schema carries `default: []`: the
    // CEL rules read `size(self.gatewayRefs)`, which fails with "no such key" on a sidecar
    // Resource that leaves the field out.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub gateway_refs: Vec<GatewayRef>,

    /// The pods this Resource protects with a sidecar gateway instead of an edge Gateway:
    /// pods of this namespace that match `selector` and opted in to injection get the
    /// `rustronaut-sidecar` container, which listens on each `sidecarPort` and forwards what
    /// the Policies allow to the application's `port` on the pod's loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Box<Workload>>,

    /// Application protocol. Immutable: changing it changes what every rule and policy means,
    /// so delete and recreate instead.
    #[x_kube(validation = Rule::new("self == oldSelf").message("protocol is immutable"))]
    pub protocol: Protocol,

    /// Hostnames (HTTP, TLSPassthrough). Each must fall inside the tenant's domains.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), regex(pattern = HOSTNAME_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub hostnames: Vec<String>,

    /// Gateway ports this Resource is reached on (TCP, UDP).
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["port".into()]))]
    pub ports: Vec<ResourcePort>,

    /// HTTP routing rules, matched most specific first as in Gateway API (Exact before
    /// PathPrefix, longer prefixes first, then method and header matches).
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rules: Vec<HttpRule>,

    /// Upstreams of TLSPassthrough, TCP and UDP Resources.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub upstreams: Vec<Upstream>,

    /// Load balancing across upstreams (TLSPassthrough, TCP, UDP). Default: RoundRobin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<Box<LoadBalancing>>,

    /// Health checking of the upstreams (TLSPassthrough, TCP, UDP: a TCP connect check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheck>>,
}

/// Reference to a Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Namespace of the Gateway. Default: the Resource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub namespace: Option<String>,
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// A listener of that Gateway. Default: every listener whose protocol fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub listener: Option<String>,
}

/// Port the injected sidecar serves its admin endpoints on (readiness, metrics); no
/// `workload.ports[].sidecarPort` may take it.
pub const SIDECAR_ADMIN_PORT: i32 = 15020;

/// Name of the injected sidecar container (a Kubernetes native sidecar: an init container
/// with `restartPolicy: Always`).
pub const SIDECAR_CONTAINER: &str = "rustronaut-sidecar";

/// The contract between the injection webhook, the sidecar reconciler and the gateway in
/// sidecar mode: where the sidecar's snapshot lives, and the labels and annotations that opt
/// pods in and record what was injected. One place, so the three never drift apart.
pub mod sidecar_names {
    /// Namespace label that opts every pod of the namespace in (`enabled`).
    pub const NAMESPACE_LABEL: &str = "rustronaut.io/sidecar-injection";
    /// Pod label: `enabled` opts one pod in, `disabled` opts it out (also in an opted-in
    /// namespace). Any other value is refused at admission. A label and not an annotation
    /// (as Istio moved to), because the webhook's objectSelector can only select labels: with
    /// an annotation every pod of the cluster would have to call the webhook.
    pub const POD_LABEL: &str = "rustronaut.io/sidecar";
    /// Pod label set by injection: the name of the sidecar Resource the sidecar serves, so
    /// status and NetworkPolicies find injected pods with a label selector.
    pub const INJECTED_LABEL: &str = "rustronaut.io/sidecar-resource";
    /// Pod annotation set by injection: the injected ports as `port:sidecarPort,...`, so
    /// status can tell a pod injected for an older version of the Resource's ports.
    pub const PORTS_ANNOTATION: &str = "rustronaut.io/sidecar-ports";
    /// Value of [`NAMESPACE_LABEL`] and [`POD_LABEL`] that opts in.
    pub const ENABLED: &str = "enabled";
    /// Value of [`POD_LABEL`] that opts out.
    pub const DISABLED: &str = "disabled";

    /// The Secret holding the compiled snapshot of sidecar Resource `resource` (in its
    /// namespace). Long names keep a readable prefix and end in a hash of the whole name, so
    /// the result is a valid, unique Secret name.
    pub fn snapshot(resource: &str) -> String {
        const SUFFIX: &str = "-sidecar";
        if resource.len() + SUFFIX.len() <= 253 {
            return format!("{resource}{SUFFIX}");
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, resource.as_bytes());
        let hash: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keep = 253 - SUFFIX.len() - hash.len() - 1;
        let prefix = resource[..keep].trim_end_matches(['-', '.']);
        format!("{prefix}-{hash}{SUFFIX}")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn snapshot_names_are_valid_and_distinct() {
            assert_eq!(super::snapshot("orders"), "orders-sidecar");
            let long_a = "a".repeat(250);
            let long_b = format!("{}b", "a".repeat(249));
            let (a, b) = (super::snapshot(&long_a), super::snapshot(&long_b));
            assert!(a.len() <= 253 && b.len() <= 253, "{a} {b}");
            assert_ne!(a, b);
            assert!(a.ends_with("-sidecar"));
        }
    }
}

/// The pods a sidecar Resource protects, and which of their ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.ports.all(p, p.port != p.sidecarPort && self.ports.exists_one(q, q.sidecarPort == p.sidecarPort) && self.ports.exists_one(q, q.port == p.port) && !self.ports.exists(q, q.port == p.sidecarPort))").message("each port and each sidecarPort appears once, and no sidecarPort is also an application port"))]
#[x_kube(validation = Rule::new("self.ports.all(p, p.sidecarPort != 15020)").message("sidecarPort 15020 is the sidecar's admin port"))]
#[x_kube(validation = Rule::new("self.ports.all(p, !has(p.name) || self.ports.exists_one(q, has(q.name) && q.name == p.name))").message("port names must be unique"))]
pub struct Workload {
    /// Pods of the Resource's namespace this Resource protects. A pod is protected by at
    /// most one sidecar Resource: injection refuses a pod two of them select.
    pub selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    /// The application ports to protect.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["port".into()]))]
    pub ports: Vec<WorkloadPort>,
}

/// One protected port of a workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPort {
    /// The application's port, which the sidecar reaches on the pod's loopback (127.0.0.1).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The port the sidecar listens on: point the Service's `targetPort` here (or at `name`).
    /// A NetworkPolicy lets traffic into the pod only on sidecar ports.
    #[schemars(range(min = 1, max = 65535))]
    pub sidecar_port: i32,
    /// Name of the sidecar's container port (an IANA service name: at most 15 lower-case
    /// letters, digits and hyphens), so a Service can target it by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
}

/// Application protocol of a Resource.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2, terminated at the gateway (over HTTP or HTTPS listeners).
    #[serde(rename = "HTTP")]
    Http,
    /// TLS forwarded unopened, routed by SNI; identity is limited to the client IP and site.
    #[serde(rename = "TLSPassthrough")]
    TlsPassthrough,
    /// TCP connections, optionally TLS-terminated by the listener.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP datagrams, proxied per flow.
    #[serde(rename = "UDP")]
    Udp,
}

/// A port of a TCP or UDP Resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePort {
    /// Port on the gateway listener.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// One HTTP routing rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    /// Name of the rule; Policies may target it as `sectionName`.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
    /// Conditions, any of which selects this rule. Empty: every request (PathPrefix `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub matches: Vec<HttpMatch>,
    /// Where matching requests go (at least one on an edge Resource). Empty on a sidecar
    /// Resource, whose upstream is always the application on the pod's loopback.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub upstreams: Vec<Upstream>,
    /// Load balancing across upstreams. Default: RoundRobin (weighted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<Box<LoadBalancing>>,
    /// Active health checking of the upstreams; failing targets are also ejected passively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheck>>,
    /// Rate limiting of requests that reach this rule (after they are allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<RateLimit>>,
    /// Per-request timeout towards the upstream, e.g. `30s`. Default: 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// Conditions on a request, all of which must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Path condition. Default: PathPrefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Method condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Header conditions (exact value, header names case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub headers: Vec<HeaderMatch>,
}

/// An exact header match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// Exact value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// One upstream: exactly one of `service` or `site`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.site)").message("exactly one of service, site must be set"))]
#[x_kube(validation = Rule::new("has(self.site) == has(self.host)").message("a site upstream needs host (and a service upstream takes none)"))]
#[x_kube(validation = Rule::new("has(self.site) == has(self.port)").message("a site upstream needs port (a service upstream takes its port from service.port)"))]
pub struct Upstream {
    /// A Service in the Resource's namespace (endpoints resolved through EndpointSlices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceUpstream>,
    /// A remote site, reached through a Gateway's tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Box<SiteUpstream>>,
    /// Host at the site: an IP address, or a lower-case DNS name (letters, digits, hyphens;
    /// no underscore, no wildcard) that the site's connector resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("isIP(self) || self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$')").message("host must be an IP address or a lower-case DNS name such as db.corp.example"))]
    pub host: Option<String>,
    /// Port at the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Relative share of traffic. 0 drains this upstream. Default: 1.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000))]
    pub weight: i32,
}

/// An in-cluster Service upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceUpstream {
    /// Service name (same namespace as the Resource: Resources never reach across tenants).
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A remote-site upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteUpstream {
    /// The Gateway whose tunnel reaches the site, as `namespace/name`.
    #[schemars(
        length(min = 3, max = 127),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub gateway: String,
    /// Site name in that Gateway's spec.tunnel.sites.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
}

/// Load-balancing algorithm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'ConsistentHash' ? has(self.hashKey) : !has(self.hashKey)").message("hashKey is required for ConsistentHash and only allowed there"))]
pub struct LoadBalancing {
    /// Algorithm. Default: RoundRobin.
    #[serde(rename = "type", default)]
    pub type_: LoadBalancingType,
    /// What ConsistentHash hashes, for sticky sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
}

/// Load-balancing algorithms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum LoadBalancingType {
    /// Weighted round robin across healthy targets.
    #[default]
    RoundRobin,
    /// The healthy target with the fewest open requests.
    LeastConnections,
    /// A consistent hash of `hashKey`, so a client keeps reaching the same target.
    ConsistentHash,
}

/// What a consistent hash is computed over.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HashKey {
    /// The authenticated identity (falls back to the client IP for anonymous requests).
    ClientIdentity,
    /// The client IP (after trusted-proxy resolution).
    ClientIP,
}

/// Active health checking.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP path to GET; a 2xx or 3xx is healthy. Absent: a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Time between checks. Default: 5s.
    #[serde(default = "default_interval")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    pub interval: String,
    /// Time a check may take. Default: 1s.
    #[serde(default = "default_timeout")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    pub timeout: String,
    /// Consecutive failures that mark a target unhealthy. Default: 3.
    #[serde(default = "default_unhealthy")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: i32,
    /// Consecutive successes that mark it healthy again. Default: 2.
    #[serde(default = "default_healthy")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: i32,
}

/// A token bucket per key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.burst >= self.requestsPerSecond").message("burst must be at least requestsPerSecond"))]
pub struct RateLimit {
    /// Sustained rate per key.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: i32,
    /// Bucket size: requests allowed at once after a quiet period.
    #[schemars(range(min = 1, max = 10000000))]
    pub burst: i32,
    /// What a bucket is kept per. Default: ClientIdentity.
    #[serde(default = "default_rate_key")]
    pub key: HashKey,
}

/// Observed state of a Resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Accepted, ResolvedRefs, Programmed, Reachable (False/NoAllowPolicy makes default deny
    /// visible on the target itself), Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Policies that select this Resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub policies: Vec<AppliedPolicy>,
    /// Sidecar Resources: the pods `workload.selector` selects, and which of them run
    /// without a current sidecar, so nobody believes a workload is protected when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadStatus>,
}

/// What a sidecar Resource protects, counted from the live pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Running pods the selector selects.
    pub selected_pods: i32,
    /// Of those, pods whose `rustronaut-sidecar` serves this Resource's current ports.
    pub protected_pods: i32,
    /// Names of selected pods without a sidecar (not opted in, injected before this
    /// Resource existed, or with other ports): restart them in an opted-in namespace.
    /// At most 10 are listed; `selectedPods - protectedPods` is the full count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(max = 253)))]
    pub unprotected_pods: Vec<String>,
}

/// A Policy that applies to a Resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    /// Namespace of the Policy.
    #[schemars(length(max = 63))]
    pub namespace: String,
    /// Name of the Policy.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Allow or Deny.
    #[schemars(length(max = 16))]
    pub action: String,
    /// Enforce or DryRun.
    #[schemars(length(max = 16))]
    pub mode: String,
}

fn default_weight() -> i32 {
    1
}
fn default_interval() -> String {
    "5s".into()
}
fn default_timeout() -> String {
    "1s".into()
}
fn default_unhealthy() -> i32 {
    3
}
fn default_healthy() -> i32 {
    2
}
fn default_rate_key() -> HashKey {
    HashKey::ClientIdentity
}

//! `Gateway` (namespaced): one gateway deployment — its listeners and certificates, which
//! tenants may attach Resources to it, and optionally a WireGuard tunnel hub with remote sites.

use crate::common::{Condition, HOSTNAME_PATTERN, LABEL_PATTERN, SecretRef};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a WireGuard public key: 32 bytes in standard base64 (the last character before
/// `=` can only be one of 16 values because the final 4 bits are padding).
pub const WIREGUARD_KEY_PATTERN: &str = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";

/// The Gateway spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "rustronaut.io",
    version = "v1alpha1",
    kind = "Gateway",
    doc = "A gateway deployment: listeners and certificates, which tenants may attach Resources, and an optional WireGuard tunnel hub for remote sites.",
    plural = "gateways",
    shortname = "rtngw",
    category = "rustronaut",
    namespaced,
    status = "GatewayStatus",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.addresses[0].value"}"#,
    printcolumn = r#"{"name":"Config","type":"string","jsonPath":".status.configVersion","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas").message("autoscaling.minReplicas must not exceed maxReplicas"))]
pub struct GatewaySpec {
    /// Which tenants may attach Resources. Default: Same (the tenant owning this namespace).
    #[serde(default)]
    pub tenants: AllowedTenants,

    /// Gateway pods. Default: 2, so one can drain while the other serves. Ignored when
    /// autoscaling is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// Horizontal autoscaling on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// How the client address is found when the gateway sits behind a load balancer or proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "clientIPDetection")]
    pub client_ip_detection: Option<ClientIpDetection>,

    /// Listeners. (port, protocol, hostname) is unique.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, a.port == b.port && a.protocol == b.protocol && (has(a.hostname) ? a.hostname : '') == (has(b.hostname) ? b.hostname : '')))").message("listeners must have unique (port, protocol, hostname)"))]
    pub listeners: Vec<Listener>,

    /// The Service in front of the gateway pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<GatewayService>,

    /// WireGuard tunnel hub for remote sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,

    /// Strategic-merge override applied to the generated gateway pod template, limited to an
    /// allow-list (labels and annotations outside the operator's prefixes, scheduling,
    /// non-root fsGroup, emptyDir/configMap/downwardAPI volumes, the gateway container's
    /// resources, env and volumeMounts); anything else is refused with `Ready=False`, reason
    /// `PodTemplateRefused` (docs/security.md). Security settings are re-applied after the merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub pod_template: Option<serde_json::Value>,
}

/// Which tenants may attach Resources to a Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.from == 'Selector') == has(self.selector)").message("selector is required when from is Selector, and only allowed then"))]
pub struct AllowedTenants {
    /// Same: the tenant that owns the Gateway's namespace. All: every tenant. Selector: Tenants
    /// whose labels match selector.
    #[serde(default)]
    pub from: TenantsFrom,
    /// Label selector over Tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// Tenant admission modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TenantsFrom {
    /// Only the tenant owning the Gateway's namespace.
    #[default]
    Same,
    /// Any tenant.
    All,
    /// Tenants matching the selector.
    Selector,
}

/// HorizontalPodAutoscaler settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Lower bound.
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// Upper bound.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent. Default: 70.
    #[serde(default = "default_cpu")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

/// Client address detection. A PROXY header or X-Forwarded-For says who the client is, so
/// either is believed only from the load balancers and proxies listed in
/// `trustedPeerCIDRs`; any other peer (a pod, a NodePort client) is itself the client
/// (issue 14, item 9).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!((has(self.proxyProtocol) && self.proxyProtocol) || (has(self.trustedHops) && self.trustedHops > 0)) || (has(self.trustedPeerCIDRs) && size(self.trustedPeerCIDRs) > 0)").message("proxyProtocol and trustedHops need trustedPeerCIDRs: the load balancers or proxies whose PROXY header or X-Forwarded-For is believed"))]
pub struct ClientIpDetection {
    /// Expect a PROXY protocol (v1 or v2) header on every connection. Default: false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Number of trusted proxies that append to X-Forwarded-For in front of the gateway. The
    /// client address is the entry that many hops from the right. Default: 0 (the header is
    /// ignored and the peer address is the client).
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub trusted_hops: i32,
    /// The TCP peers (the load balancers or proxies in front of the gateway) whose PROXY
    /// header and X-Forwarded-For are believed. From any other peer the socket address is the
    /// client: its X-Forwarded-For is ignored (and replaced upstream), and with
    /// `proxyProtocol` its connection is refused. Required when `proxyProtocol` is on or
    /// `trustedHops` > 0; there is no "trust everyone" default, because then any client that
    /// reaches the gateway directly chooses the address `sourceCIDRs` rules see. A Gateway
    /// that predates this field is refused (`Ready=False`) until it lists them, and its last
    /// snapshot keeps serving. Default: empty.
    #[serde(
        default,
        rename = "trustedPeerCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 64), inner(length(min = 2, max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("trustedPeerCIDRs must be CIDRs such as 10.0.0.0/8"))]
    pub trusted_peer_cidrs: Vec<String>,
}

/// One listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol != 'HTTPS' || has(self.tls)").message("HTTPS listeners need tls"))]
#[x_kube(validation = Rule::new("!(self.protocol in ['HTTP', 'TLSPassthrough', 'UDP']) || !has(self.tls)").message("tls is only for HTTPS and TCP listeners"))]
#[x_kube(validation = Rule::new("!(self.protocol in ['TCP', 'UDP']) || !has(self.hostname)").message("TCP and UDP listeners take no hostname"))]
#[x_kube(validation = Rule::new("!has(self.clientCertificate) || has(self.tls)").message("clientCertificate needs tls on the same listener"))]
#[x_kube(validation = Rule::new("!has(self.tls) || !has(self.tls.issuerRef) || (self.protocol == 'HTTPS' && has(self.hostname))").message("tls.issuerRef needs an HTTPS listener with a hostname: the certificate is issued for that hostname"))]
pub struct Listener {
    /// Name; Resources may attach to it by name.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
    /// Port the gateway listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Protocol.
    pub protocol: ListenerProtocol,
    /// Hostname (exact or `*.` wildcard) this listener serves; HTTP, HTTPS, TLSPassthrough only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOSTNAME_PATTERN))]
    pub hostname: Option<String>,
    /// TLS termination (HTTPS, TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Client certificates (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,
}

/// Listener protocols.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ListenerProtocol {
    /// Plain HTTP/1.1 (and h2c prior knowledge).
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP/1.1 and HTTP/2 (ALPN) over TLS.
    #[serde(rename = "HTTPS")]
    Https,
    /// TLS routed by SNI without termination.
    #[serde(rename = "TLSPassthrough")]
    TlsPassthrough,
    /// TCP, optionally TLS-terminated.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// TLS settings of a listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// kubernetes.io/tls Secrets in the Gateway's namespace; the certificate is chosen by SNI.
    /// With `issuerRef`, the first one is the Secret cert-manager issues into.
    #[schemars(length(min = 1, max = 16))]
    pub certificate_refs: Vec<SecretRef>,
    /// Have cert-manager issue and renew the listener's certificate: the operator creates a
    /// cert-manager `Certificate` named after `certificateRefs[0]`, for the listener's
    /// hostname, into that Secret. Until it is issued the listener's TLS handshakes fail (its
    /// `ResolvedRefs` condition says `CertificatePending`) while the other listeners serve;
    /// the certificate and every renewal reach the running gateways without a restart.
    /// Needs cert-manager installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Lowest TLS version. Default: 1.2.
    #[serde(default = "default_tls_version")]
    pub min_version: TlsVersion,
}

/// A cert-manager issuer (`Issuer` in the Gateway's namespace, or a `ClusterIssuer`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::common::NAME_PATTERN))]
    pub name: String,
    /// Issuer or ClusterIssuer (or the kind of an external issuer). Default: Issuer.
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// API group of the issuer. Default: cert-manager.io (external issuers have their own).
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// TLS versions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V1_3,
}

/// Mutual TLS on a listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    /// Optional: verified when presented. Required: the handshake fails without one.
    pub mode: ClientCertificateMode,
}

/// Client certificate modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClientCertificateMode {
    /// Verify a certificate when the client presents one.
    Optional,
    /// Refuse handshakes without a valid certificate.
    Required,
}

/// The gateway Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayService {
    /// Service type. Default: LoadBalancer.
    #[serde(rename = "type", default = "default_service_type")]
    pub type_: ServiceType,
    /// Annotations for the Service (load-balancer settings of your cloud).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Service types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs)]
pub enum ServiceType {
    LoadBalancer,
    NodePort,
    ClusterIP,
}

/// WireGuard tunnel hub.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tunnel {
    /// UDP port of the hub. Default: 51820.
    #[serde(default = "default_wg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: i32,
    /// Hub replicas, each with its own key; connectors keep a tunnel to every replica. Default: 2.
    #[serde(default = "default_hub_replicas")]
    #[schemars(range(min = 1, max = 8))]
    pub replicas: i32,
    /// Tunnel addresses for hubs and sites. Default: 100.96.0.0/16.
    #[serde(default = "default_pool")]
    #[schemars(length(min = 9, max = 43))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("addressPool must be a CIDR such as 100.96.0.0/16"))]
    pub address_pool: String,
    /// Remote sites.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub sites: Vec<Site>,
}

/// A remote site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    /// Site name; Resources name it in site upstreams.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
    /// Tenant the site belongs to; only that tenant's Resources may use it.
    #[schemars(length(min = 1, max = 253))]
    pub tenant: String,
    /// The connector's WireGuard public key. Absent: the operator generates a key pair into a
    /// Secret `<gateway>-site-<name>` for the site owner to fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 44, max = 44), regex(pattern = WIREGUARD_KEY_PATTERN))]
    pub public_key: Option<String>,
    /// Networks behind the site that Resources may target.
    #[serde(default, rename = "advertisedCIDRs")]
    #[schemars(length(max = 32), inner(length(min = 9, max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("advertisedCIDRs must be CIDRs such as 10.1.0.0/16"))]
    pub advertised_cidrs: Vec<String>,
}

/// Observed state of a Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Accepted, Programmed, Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Addresses of the gateway Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub addresses: Vec<GatewayAddress>,
    /// Per-listener state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub listeners: Vec<ListenerStatus>,
    /// Tunnel hub state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatus>,
    /// Content hash of the snapshot every ready gateway pod reports as loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub config_version: Option<String>,
}

/// An address of the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// IPAddress or Hostname.
    #[serde(rename = "type")]
    #[schemars(length(max = 16))]
    pub type_: String,
    /// The address.
    #[schemars(length(max = 253))]
    pub value: String,
}

/// State of one listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Listener name.
    #[schemars(length(max = 63))]
    pub name: String,
    /// Resources attached to it.
    pub attached_resources: i32,
    /// ResolvedRefs, Conflicted, Programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}

/// Tunnel hub state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    /// Public keys of the hub replicas, for connector configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = 44)))]
    pub public_keys: Vec<String>,
    /// Per-site state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub sites: Vec<SiteStatus>,
}

/// State of one site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// Site name.
    #[schemars(length(max = 63))]
    pub name: String,
    /// Whether any hub replica has a live tunnel to it.
    pub connected: bool,
    /// Most recent handshake (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_handshake_time: Option<String>,
}

fn default_replicas() -> i32 {
    2
}
fn default_cpu() -> i32 {
    70
}
fn default_tls_version() -> TlsVersion {
    TlsVersion::V1_2
}
fn default_service_type() -> ServiceType {
    ServiceType::LoadBalancer
}
fn default_wg_port() -> i32 {
    51820
}
fn default_hub_replicas() -> i32 {
    2
}
fn default_pool() -> String {
    "100.96.0.0/16".into()
}

/// Names of the objects the operator makes for a Gateway's tunnel hub: part of the API,
/// because people and tools read them (the site key Secret, the hub's public keys, the
/// replicas' UDP Services; `rustronaut site config`).
pub mod tunnel_names {
    /// Key of a key Secret (a replica's, a generated site's) holding the private key.
    pub const PRIVATE_KEY: &str = "private-key";
    /// Key of the hub configuration Secret holding the hub's configuration file.
    pub const HUB_CONFIG: &str = "hub.yaml";
    /// The StatefulSet (its pods are `<gw>-hub-<i>`).
    pub fn hub(gw: &str) -> String {
        format!("{gw}-hub")
    }
    /// Replica `i`: its pod, its key Secret and its UDP Service share this name.
    pub fn replica(gw: &str, i: i32) -> String {
        format!("{gw}-hub-{i}")
    }
    /// The generated key pair of a site without spec publicKey (the CRD documents it).
    pub fn site(gw: &str, site: &str) -> String {
        format!("{gw}-site-{site}")
    }
    /// The gateway token, shared by hub and gateway pods.
    pub fn token(gw: &str) -> String {
        format!("{gw}-tunnel-token")
    }
    /// The hub configuration.
    pub fn config(gw: &str) -> String {
        format!("{gw}-hub-config")
    }
    /// The in-cluster stream Service.
    pub fn stream(gw: &str) -> String {
        format!("{gw}-hub-stream")
    }
}

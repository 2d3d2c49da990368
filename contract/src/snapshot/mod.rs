//! The compiled snapshot: everything one gateway (and its tunnel hub) needs, in one versioned,
//! serde-serialisable document.
//!
//! ```text
//!  Tenant, Resource, Gateway, Policy CRs --(operator: resolve refs, compile)--> Snapshot
//!      --(JSON in a Secret the operator owns)--> gateway / tunnel pods: from_json -> validate
//!      -> PolicySet::compile -> swap in atomically; a snapshot that fails any step is refused
//!      and the last good one keeps serving.
//! ```
//!
//! Design rules:
//! - **Resolved, not referenced.** Secrets (TLS keys, OIDC client secrets, CA bundles, API-key
//!   hashes, JWKS from Secrets), Service endpoints and policy targets (targetRefs and selectors)
//!   are resolved by the operator, so a gateway reads exactly one object and needs RBAC on
//!   nothing else. Secret values are wrapped in [`Sensitive`] so they never reach a log.
//! - **Unknown fields are refused** (`deny_unknown_fields` everywhere): a field this gateway
//!   does not understand may narrow who is allowed (a new `require` kind, say), so ignoring it
//!   could widen access. The operator raises [`SCHEMA_VERSION`] for changes older gateways
//!   must not half-understand; [`Snapshot::from_json`] refuses newer versions with a message
//!   that says to upgrade the gateway.
//! - **Deterministic bytes.** Every map is a `BTreeMap` (sorted keys) and
//!   [`Snapshot::content_hash`] hashes a canonical JSON form (object keys sorted at every level,
//!   no whitespace, and the top-level lists whose order carries no meaning sorted), so the
//!   same content always has the same hash whatever order the operator listed things in. The
//!   hash is what the Gateway status reports as `configVersion`.
//! - **Units in names.** Durations are integers with the unit in the field name
//!   (`intervalMs`, `durationSeconds`): the operator parses the CRDs' `5s`/`8h` strings once.
//!
//! JSON shape (camelCase; `?` optional, `[]` list, `|` one of):
//! ```text
//! { schemaVersion: 1, gateway: {namespace, name},
//!   clientIPDetection: {proxyProtocol: bool, trustedHops: n, trustedPeerCIDRs: [cidr]},
//!   listeners: [{name, port, protocol: HTTP|HTTPS|TLSPassthrough|TCP|UDP, hostname?,
//!                tls?: {certificates: [{name, hostnames[], certificateChainPem, privateKeyPem}],
//!                       minVersion: "1.2"|"1.3"},
//!                clientCertificate?: {mode: None|Optional|Required, caPem}}],
//!   tenants: [{name, domains[], session: {durationSeconds, signingKeys: [{id, secret}]},
//!              identityProviders: [{name, kind:
//!                {oidc: {issuer, clientID, clientSecret, scopes[], claimMappings: {groups, email}}}
//!              | {jwt: {issuer, audiences[], jwks: {inline: <JWKS>} | {remote: {uri, refreshIntervalSeconds}},
//!                       claimMappings, clockSkewSeconds}}
//!              | {clientCertificate: {caPem}}
//!              | {apiKey: {header, keys: [{clientID, hash}]}}}]}],
//!   resources: [{namespace, name, tenant, protocol: HTTP|TLSPassthrough|TCP|UDP, listeners[],
//!                hostnames[], ports[], rules: [{name, matches: [{path?: {type: Exact|PathPrefix, value},
//!                method?, headers: [{name, value}]}], upstreams, loadBalancing, healthCheck?,
//!                rateLimit?: {requestsPerSecond, burst, key: ClientIdentity|ClientIP}, timeoutMs}],
//!                upstreams: [{kind: {service: {name, port, addresses: ["ip:port"]}}
//!                                  | {site: {site, host, port}}, weight}],
//!                loadBalancing: {type: RoundRobin|LeastConnections|ConsistentHash, hashKey?},
//!                healthCheck?: {path?, intervalMs, timeoutMs, unhealthyThreshold, healthyThreshold}}],
//!   policies: [CompiledPolicy (see crate::policy)],
//!   tunnel?: {listenPort, addressPool, sites: [{name, tenant, publicKey, tunnelAddress?,
//!             advertisedCIDRs[], allowedTargets: [{host, ports[], protocol: TCP|UDP}]}]} }
//! ```

mod canonical;
mod validate;

pub use validate::{ValidationError, ValidationErrorKind};

pub use crate::policy::{
    ApiKeyPrincipal, CertificatePrincipal, ClaimMatch, CompiledPolicy, Days, Operation,
    PolicyAction, PolicyMode, PolicyRule, PolicySession, PolicyTarget, Principal, Schedule,
    ServiceAccountPrincipal, SitePrincipal, SourceCidrs, UserPrincipal, When,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::SocketAddr;

/// The snapshot schema version this build writes and understands. Raised on any change that
/// an older gateway must not half-understand.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not JSON, or not the shape of this schema version.
    #[error("snapshot is not valid JSON for schema version {SCHEMA_VERSION}: {0}")]
    Json(#[from] serde_json::Error),
    /// `schemaVersion` absent or not a positive integer.
    #[error("snapshot has no valid schemaVersion")]
    MissingVersion,
    /// Written by a newer operator.
    #[error(
        "snapshot schema version {found} is newer than this gateway understands (max {max}): upgrade the gateway"
    )]
    UnsupportedVersion {
        /// The version in the document.
        found: u32,
        /// [`SCHEMA_VERSION`].
        max: u32,
    },
    /// Parsed but inconsistent; every problem is listed.
    #[error("snapshot is invalid ({} problems): {}", .0.len(), join_errors(.0))]
    Invalid(Vec<ValidationError>),
}

fn join_errors(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A secret value (TLS private key, OIDC client secret, session key). Serialised as a plain
/// string, because the snapshot travels in a Kubernetes Secret; never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call sites are easy to audit by grepping for `expose`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sensitive([redacted])")
    }
}

/// A reference to a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// Builds a reference.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything one gateway needs. See the module documentation for the JSON shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    /// The Gateway this snapshot is for.
    pub gateway: ObjectRef,
    /// How the client address is found behind load balancers. Default: the peer address.
    #[serde(default, rename = "clientIPDetection")]
    pub client_ip_detection: ClientIpDetection,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Tenants with Resources on this gateway: identity providers and sessions.
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    /// Resources attached to this gateway.
    #[serde(default)]
    pub resources: Vec<CompiledResource>,
    /// Policies that target those Resources, targets already resolved.
    #[serde(default)]
    pub policies: Vec<CompiledPolicy>,
    /// The WireGuard hub of this gateway, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
    /// A sidecar's snapshot (`gateway` then names the sidecar Resource): its upstreams are
    /// the application on the pod's own loopback, which an edge gateway never dials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sidecar: bool,
}

/// Client address detection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIpDetection {
    /// Expect a PROXY protocol (v1 or v2) header on every connection. Default: false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Trusted proxies appending to X-Forwarded-For in front of the gateway. Default: 0 (the
    /// header is ignored).
    #[serde(default)]
    pub trusted_hops: u32,
    /// The TCP peers (CIDRs) whose PROXY header and X-Forwarded-For are believed. From any
    /// other peer the socket address is the client: X-Forwarded-For is ignored (and replaced
    /// upstream) and a PROXY header is refused (the connection is closed). Required (non-empty)
    /// when `proxyProtocol` is on or `trustedHops` > 0: a hop count alone let any pod or
    /// NodePort client choose its address (issue 14, item 9). Default: empty.
    #[serde(
        default,
        rename = "trustedPeerCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trusted_peer_cidrs: Vec<String>,
}

impl ClientIpDetection {
    /// Whether the client address may come from something other than the socket: a PROXY
    /// header or X-Forwarded-For. Then [`Self::trusted_peer_cidrs`] must say from whom.
    pub fn trusts_forwarding(&self) -> bool {
        self.proxy_protocol || self.trusted_hops > 0
    }
}

/// A listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Name, unique in the gateway.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: ListenerProtocol,
    /// Hostname (exact or `*.` wildcard); HTTP, HTTPS, TLSPassthrough only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// TLS termination (HTTPS, TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Client certificates (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateConfig>,
}

/// Listener protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenerProtocol {
    /// Plain HTTP.
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP over TLS.
    #[serde(rename = "HTTPS")]
    Https,
    /// TLS routed by SNI, not terminated.
    #[serde(rename = "TLSPassthrough")]
    TlsPassthrough,
    /// TCP, optionally TLS-terminated.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

impl ListenerProtocol {
    /// Whether the listener uses a TCP port (every protocol but UDP).
    pub fn is_tcp_based(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// Whether Resources of `protocol` can attach to this listener.
    pub fn accepts(self, protocol: ResourceProtocol) -> bool {
        matches!(
            (self, protocol),
            (Self::Http | Self::Https, ResourceProtocol::Http)
                | (Self::TlsPassthrough, ResourceProtocol::TlsPassthrough)
                | (Self::Tcp, ResourceProtocol::Tcp)
                | (Self::Udp, ResourceProtocol::Udp)
        )
    }
}

/// TLS settings of a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates, chosen by SNI against `hostnames`.
    pub certificates: Vec<TlsCertificate>,
    /// Lowest TLS version. Default: 1.2.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// A certificate of this listener is still being issued (cert-manager, `tls.issuerRef`):
    /// the listener is bound anyway, so the certificate is served by a later snapshot
    /// without a restart (listeners are bound once), and handshakes no certificate covers
    /// fail until then. Only then may `certificates` be empty. Written only when true, so
    /// snapshots without a pending certificate read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub certificates_pending: bool,
}

/// One certificate with its key, copied from a kubernetes.io/tls Secret by the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Name of the source Secret (for status and logs).
    pub name: String,
    /// DNS names the certificate covers (from its SANs), for SNI selection.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub certificate_chain_pem: String,
    /// PEM private key.
    pub private_key_pem: Sensitive,
}

/// TLS versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V1_3,
}

/// Mutual TLS on a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// Whether a client certificate is requested.
    pub mode: ClientCertificateMode,
    /// PEM CA bundle that client certificates must chain to (the union of the attached
    /// tenants' clientCertificate identity providers).
    #[serde(default)]
    pub ca_pem: String,
}

/// Client certificate modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientCertificateMode {
    /// Not requested.
    None,
    /// Verified when presented; a presented but invalid certificate fails the handshake.
    Optional,
    /// Handshakes without a valid certificate fail.
    Required,
}

/// A tenant with Resources on this gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenant {
    /// Tenant name.
    pub name: String,
    /// Domains the tenant owns (`app.acme.example`, `*.acme.example`); Resource hostnames
    /// must fall inside them. Empty: not checked here (the operator enforced it).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Identity providers Policies may name.
    #[serde(default)]
    pub identity_providers: Vec<IdentityProvider>,
    /// Browser sessions. Default: 8 hours, no keys (OIDC login then fails closed).
    #[serde(default)]
    pub session: SessionConfig,
}

impl Tenant {
    /// The identity provider named `name`.
    pub fn identity_provider(&self, name: &str) -> Option<&IdentityProvider> {
        self.identity_providers.iter().find(|p| p.name == name)
    }
}

/// Browser session settings of a tenant. Sessions are signed per tenant, so a cookie of one
/// tenant is worthless at another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionConfig {
    /// How long a login lasts. Default: 28800 (8 hours).
    #[serde(default = "default_session_seconds")]
    pub duration_seconds: u64,
    /// Keys that sign session cookies: the first signs, all verify (rotation). Each secret is
    /// base64 of at least 32 random bytes, generated by the operator.
    #[serde(default)]
    pub signing_keys: Vec<SessionKey>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            duration_seconds: default_session_seconds(),
            signing_keys: Vec::new(),
        }
    }
}

fn default_session_seconds() -> u64 {
    8 * 3600
}

/// A session signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionKey {
    /// Key id, carried in cookies so the right key verifies them.
    pub id: String,
    /// Base64 key material.
    pub secret: Sensitive,
}

/// An identity provider of a tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityProvider {
    /// Name, unique in the tenant; Policies refer to it.
    pub name: String,
    /// The provider.
    pub kind: IdentityProviderKind,
}

/// The kinds of identity provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentityProviderKind {
    /// Browser login with OpenID Connect.
    Oidc(OidcProvider),
    /// Bearer JWTs.
    Jwt(JwtProvider),
    /// TLS client certificates.
    ClientCertificate(ClientCertificateProvider),
    /// API keys.
    ApiKey(ApiKeyProvider),
}

impl IdentityProviderKind {
    /// `oidc`, `jwt`, `clientCertificate` or `apiKey`, as in the JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Oidc(_) => "oidc",
            Self::Jwt(_) => "jwt",
            Self::ClientCertificate(_) => "clientCertificate",
            Self::ApiKey(_) => "apiKey",
        }
    }
}

/// OpenID Connect provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcProvider {
    /// Issuer URL (https).
    pub issuer: String,
    /// OAuth2 client ID.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// OAuth2 client secret.
    pub client_secret: Sensitive,
    /// Scopes to request. Default: openid, email, profile.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Which claims carry groups and email.
    #[serde(default)]
    pub claim_mappings: ClaimMappings,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

/// Claim names that feed the identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimMappings {
    /// Claim holding groups (a list of strings, or one string). Default: `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups: String,
    /// Claim holding the email address. Default: `email`.
    #[serde(default = "default_email_claim")]
    pub email: String,
}

impl Default for ClaimMappings {
    fn default() -> Self {
        Self {
            groups: default_groups_claim(),
            email: default_email_claim(),
        }
    }
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_email_claim() -> String {
    "email".into()
}

/// A JWT issuer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtProvider {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// Signing keys.
    pub jwks: JwksSource,
    /// Which claims carry groups and email.
    #[serde(default)]
    pub claim_mappings: ClaimMappings,
    /// Tolerated clock difference for `exp`, `nbf`, `iat`. Default: 60; at most 300.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// A cookie that may carry the token instead of `Authorization: Bearer` (browsers
    /// cannot set headers on navigation). The header wins when both are present; the cookie
    /// is stripped before the request reaches the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_name: Option<String>,
}

/// Whether `name` is an RFC 6265 cookie-name (an RFC 9110 token).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn default_skew() -> u64 {
    60
}

/// Where a JWT issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JwksSource {
    /// The JWKS document itself (from a Secret, or fetched by the operator).
    Inline(serde_json::Value),
    /// Fetched and cached by the gateway.
    Remote(RemoteJwks),
}

/// A remote JWKS endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteJwks {
    /// https URL.
    pub uri: String,
    /// Refetch period; an unknown `kid` also triggers a (rate-limited) refetch. Default: 300.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval_seconds: u64,
}

fn default_jwks_refresh() -> u64 {
    300
}

/// Client certificates signed by the given CAs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificateProvider {
    /// PEM CA bundle.
    pub ca_pem: String,
}

/// API keys in a request header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyProvider {
    /// Header carrying the key. Default: `X-Api-Key`.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Clients and the salted hashes of their keys (see [`crate::identity::apikey`]).
    #[serde(default)]
    pub keys: Vec<ApiKeyEntry>,
}

fn default_api_key_header() -> String {
    "X-Api-Key".into()
}

/// One API-key client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Client ID, what `apiKey.clientIDs` principals name.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// `sha256$<salt>$<digest>$<lookup>` (or the older `sha256$<salt>$<digest>`), see
    /// [`crate::identity::apikey::hash_api_key`].
    pub hash: String,
}

/// Application protocol of a Resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceProtocol {
    /// HTTP, terminated at the gateway.
    #[serde(rename = "HTTP")]
    Http,
    /// TLS forwarded unopened, routed by SNI.
    #[serde(rename = "TLSPassthrough")]
    TlsPassthrough,
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// A Resource as the gateway serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledResource {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Tenant owning the namespace.
    pub tenant: String,
    /// Protocol.
    pub protocol: ResourceProtocol,
    /// Names of the listeners of this gateway it is attached to.
    pub listeners: Vec<String>,
    /// Hostnames (HTTP, TLSPassthrough).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Listener ports (TCP, UDP).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// HTTP routing rules.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Upstreams (TLSPassthrough, TCP, UDP).
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Load balancing across `upstreams`.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Health checking of `upstreams` (a TCP connect check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

impl CompiledResource {
    /// `namespace/name`.
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }

    /// The HTTP rule a request routes to, with Gateway API precedence: among rules with a
    /// matching entry, the most specific match wins (Exact path over PathPrefix, then the
    /// longer path, then a method condition, then more header conditions); ties go to the
    /// earlier rule. A rule without matches matches everything as PathPrefix `/`. Header
    /// names compare case-insensitively, values exactly. A `GET` method condition also
    /// matches `HEAD`. `None`: no rule matches (404).
    pub fn route<'h>(
        &self,
        method: &str,
        path: &crate::path::NormalizedPath,
        headers: impl Fn(&str) -> Option<&'h str>,
    ) -> Option<&RouteRule> {
        let default_match = [RouteMatch::default()];
        let mut best: Option<(Specificity, &RouteRule)> = None;
        for rule in &self.rules {
            let matches: &[RouteMatch] = if rule.matches.is_empty() {
                &default_match
            } else {
                &rule.matches
            };
            for m in matches {
                if !m.matches(method, path, &headers) {
                    continue;
                }
                let score = m.specificity();
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, rule));
                }
            }
        }
        best.map(|(_, r)| r)
    }
}

/// One HTTP routing rule; Policies may target it as `sectionName`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Name, unique in the Resource.
    pub name: String,
    /// Conditions, any of which selects the rule. Empty: every request.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go.
    pub upstreams: Vec<Upstream>,
    /// Load balancing. Default: RoundRobin.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Active health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Rate limiting, applied after the request is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Per-request upstream timeout. Default: 60000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    60_000
}

/// Conditions on a request, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path condition. Absent: PathPrefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    fn matches<'h>(
        &self,
        method: &str,
        path: &crate::path::NormalizedPath,
        headers: &impl Fn(&str) -> Option<&'h str>,
    ) -> bool {
        if let Some(p) = &self.path
            && !crate::path::path_matches(p.kind, &p.value, path)
        {
            return false;
        }
        // A GET condition also takes HEAD: upstreams serve HEAD with the GET handler, so HEAD
        // must land on the rule (and the Policies of its section) that GET would.
        if let Some(m) = &self.method
            && m != method
            && !(m == "GET" && method == "HEAD")
        {
            return false;
        }
        self.headers
            .iter()
            .all(|h| headers(&h.name).is_some_and(|v| v == h.value))
    }

    fn specificity(&self) -> Specificity {
        let (exact, len) = match &self.path {
            Some(p) => (u8::from(p.kind == PathMatchType::Exact), p.value.len()),
            None => (0, 1),
        };
        (
            exact,
            len,
            u8::from(self.method.is_some()),
            self.headers.len(),
        )
    }
}

/// Route precedence: (exact path, path length, has method, header count), compared in order.
type Specificity = (u8, usize, u8, usize);

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// How to compare.
    #[serde(rename = "type")]
    pub kind: PathMatchType,
    /// Normalised path (see [`crate::path::is_normalized_rule_path`]).
    pub value: String,
}

/// How a path is compared (see [`crate::path::path_matches`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The whole path.
    Exact,
    /// A prefix on a segment boundary.
    PathPrefix,
}

/// An exact header condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// An upstream and its share of traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// Where it is.
    pub kind: UpstreamKind,
    /// Relative share; 0 drains it. Default: 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The kinds of upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamKind {
    /// An in-cluster Service, endpoints resolved by the operator.
    Service(ServiceUpstream),
    /// A host at a remote site, reached through this gateway's tunnel hub.
    Site(SiteUpstream),
}

/// An in-cluster Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceUpstream {
    /// Service name (the Resource's namespace).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Ready endpoints, `ip:port` (`[v6]:port`). Empty: no ready endpoints (503).
    #[serde(default)]
    pub addresses: Vec<SocketAddr>,
}

/// A host behind a site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteUpstream {
    /// Site name in `tunnel.sites`.
    pub site: String,
    /// Host at the site (IP address or DNS name resolved by the connector).
    pub host: String,
    /// Port at the site.
    pub port: u16,
}

/// Load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum LoadBalancing {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest open requests.
    LeastConnections,
    /// Consistent hash of a key, for stickiness.
    ConsistentHash {
        /// What is hashed.
        hash_key: HashKey,
    },
}

/// What a hash or a rate-limit bucket is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashKey {
    /// The authenticated identity (the client IP for anonymous requests).
    ClientIdentity,
    /// The client IP after trusted-proxy resolution.
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// Active health checking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP path to GET; 2xx/3xx is healthy. Absent: TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks.
    pub interval_ms: u64,
    /// Time a check may take.
    pub timeout_ms: u64,
    /// Consecutive failures that mark a target unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark it healthy again.
    pub healthy_threshold: u32,
}

/// A token bucket per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate per key.
    pub requests_per_second: u32,
    /// Bucket size; at least `requestsPerSecond`.
    pub burst: u32,
    /// Bucket key.
    pub key: HashKey,
}

/// The WireGuard hub of this gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tunnel {
    /// UDP port.
    pub listen_port: u16,
    /// Tunnel address pool (CIDR).
    pub address_pool: String,
    /// Remote sites.
    #[serde(default)]
    pub sites: Vec<TunnelSite>,
}

/// A remote site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSite {
    /// Name.
    pub name: String,
    /// Tenant; only its Resources may use the site, and only its Policies may name it.
    pub tenant: String,
    /// The connector's WireGuard public key (base64 of 32 bytes); the site's identity.
    pub public_key: String,
    /// The site's address inside `addressPool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<String>,
    /// Networks behind the site (CIDRs).
    #[serde(default, rename = "advertisedCIDRs")]
    pub advertised_cidrs: Vec<String>,
    /// What the hub may open through this site; the connector forwards nothing else.
    #[serde(default)]
    pub allowed_targets: Vec<AllowedTarget>,
}

impl TunnelSite {
    /// Whether a stream to `host:port` over `protocol` is allowed through this site. `host`
    /// matches a target that is the same IP address, an IP inside a target CIDR, or the same
    /// DNS name (case-insensitive, trailing dot ignored).
    pub fn allows(&self, host: &str, port: u16, protocol: TransportProtocol) -> bool {
        self.allowed_targets
            .iter()
            .any(|t| t.protocol == protocol && t.ports.contains(&port) && t.covers(host))
    }
}

/// A destination a site may be asked to open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedTarget {
    /// An IP address, a CIDR, or a DNS name.
    pub host: String,
    /// Ports.
    pub ports: Vec<u16>,
    /// Transport.
    pub protocol: TransportProtocol,
}

impl AllowedTarget {
    fn covers(&self, host: &str) -> bool {
        if self.host.contains('/') {
            let (Ok(cidr), Ok(ip)) = (
                self.host.parse::<crate::cidr::Cidr>(),
                host.parse::<std::net::IpAddr>(),
            ) else {
                return false;
            };
            return cidr.contains(ip);
        }
        if let (Ok(a), Ok(b)) = (
            self.host.parse::<std::net::IpAddr>(),
            host.parse::<std::net::IpAddr>(),
        ) {
            return crate::cidr::canonical_ip(a) == crate::cidr::canonical_ip(b);
        }
        let trim = |s: &str| s.strip_suffix('.').unwrap_or(s).to_string();
        trim(&self.host).eq_ignore_ascii_case(&trim(host))
    }
}

/// Transport protocols through the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransportProtocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(Deserialize)]
struct VersionProbe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde_json::Value>,
}

impl Snapshot {
    /// An empty snapshot of the current schema version for `gateway`.
    pub fn new(gateway: ObjectRef) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            gateway,
            client_ip_detection: ClientIpDetection::default(),
            listeners: Vec::new(),
            tenants: Vec::new(),
            resources: Vec::new(),
            policies: Vec::new(),
            tunnel: None,
            sidecar: false,
        }
    }

    /// Parses a snapshot. The version is read first, so a snapshot from a newer operator is
    /// refused with [`SnapshotError::UnsupportedVersion`] rather than a confusing parse error.
    /// Does not [`validate`](Self::validate); [`Snapshot::load`] does both.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let probe: VersionProbe = serde_json::from_slice(bytes)?;
        let version = probe
            .schema_version
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .ok_or(SnapshotError::MissingVersion)?;
        if version > SCHEMA_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                max: SCHEMA_VERSION,
            });
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// [`from_json`](Self::from_json) then [`validate`](Self::validate): what a gateway does
    /// before swapping a snapshot in.
    pub fn load(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let snapshot = Self::from_json(bytes)?;
        snapshot.validate().map_err(SnapshotError::Invalid)?;
        Ok(snapshot)
    }

    /// Serialises to JSON (field order as declared; use [`Self::canonical_json`] for bytes
    /// that depend only on content).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these types cannot fail: no maps with non-string keys, no custom
        // serialisers that error.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks everything that can be checked without the cluster and returns every problem,
    /// each with the JSON path of the offending field.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Canonical JSON: object keys sorted at every level, no insignificant whitespace, and the
    /// top-level lists whose order means nothing (listeners, tenants, resources, policies,
    /// tunnel sites) sorted by their own canonical form.
    pub fn canonical_json(&self) -> Vec<u8> {
        canonical::canonical_snapshot(self)
    }

    /// `sha256:<hex>` of [`Self::canonical_json`]: equal content, equal hash, whatever the
    /// order of map keys or of the unordered lists. Reported as the Gateway's configVersion.
    pub fn content_hash(&self) -> String {
        let digest = Sha256::digest(self.canonical_json());
        format!("sha256:{}", crate::hex(&digest))
    }

    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The resource `namespace/name`.
    pub fn resource(&self, namespace: &str, name: &str) -> Option<&CompiledResource> {
        self.resources
            .iter()
            .find(|r| r.namespace == namespace && r.name == name)
    }
}

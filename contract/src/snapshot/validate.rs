//! [`Snapshot::validate`]: every check that needs only the snapshot, all problems at once,
//! each with the JSON path of the offending field (`resources[2].rules[0].upstreams`).
//!
//! The operator runs it before writing a snapshot (a failure is an operator bug, reported as
//! a condition); the gateway runs it before swapping one in (a failure keeps the last good
//! snapshot serving). Policies the operator marked `unresolved` are expected to be broken:
//! their rule contents are not checked (they fail closed at evaluation), their structure is.

use super::{
    CompiledResource, IdentityProviderKind, JwksSource, Listener, ListenerProtocol,
    ResourceProtocol, SCHEMA_VERSION, Snapshot, Tenant, TransportProtocol, Tunnel, Upstream,
    UpstreamKind,
};
use crate::cidr::{Cidr, CidrError};
use crate::policy::{CompiledPolicy, Principal, is_method_token};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One problem, where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ValidationError {
    /// JSON path of the field, e.g. `policies[3].rules[0].from[1].user.idp`.
    pub path: String,
    /// What is wrong.
    pub kind: ValidationErrorKind,
}

/// The kinds of problem [`Snapshot::validate`] finds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationErrorKind {
    /// `schemaVersion` is not one this build understands.
    #[error("schema version {found} is not supported (this build writes {SCHEMA_VERSION})")]
    WrongSchemaVersion {
        /// The version found.
        found: u32,
    },
    /// A required string is empty.
    #[error("must not be empty")]
    Empty,
    /// Two items of a list keyed by name share a name.
    #[error("duplicate {what} {name:?}")]
    DuplicateName {
        /// What kind of item.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Two listeners (or a listener and the tunnel) cannot share a port.
    #[error("port {port} conflicts with {other}")]
    PortConflict {
        /// The port.
        port: u16,
        /// The other user of the port.
        other: String,
    },
    /// Port 0.
    #[error("port must be 1-65535")]
    InvalidPort,
    /// A hostname on a TCP or UDP listener.
    #[error("TCP and UDP listeners take no hostname")]
    HostnameNotAllowed,
    /// HTTPS without TLS, or TLS without certificates.
    #[error("HTTPS listeners need tls with at least one certificate")]
    MissingTls,
    /// TLS on a listener protocol that cannot terminate it.
    #[error("tls is only for HTTPS and TCP listeners")]
    TlsNotAllowed,
    /// Client certificates requested without TLS.
    #[error("clientCertificate needs tls on the same listener")]
    ClientCertificateWithoutTls,
    /// A PEM field that holds no usable certificate.
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    /// A reference to a tenant not in `tenants`.
    #[error("tenant {0:?} not found")]
    UnknownTenant(String),
    /// A reference to a listener not in `listeners`.
    #[error("listener {0:?} not found")]
    UnknownListener(String),
    /// A Resource attached to a listener of an incompatible protocol.
    #[error("a {resource:?} Resource cannot attach to {listener:?} listener {name:?}")]
    ListenerProtocolMismatch {
        /// Listener name.
        name: String,
        /// Listener protocol.
        listener: ListenerProtocol,
        /// Resource protocol.
        resource: ResourceProtocol,
    },
    /// Field required for this protocol is empty.
    #[error("required for {0:?} Resources")]
    RequiredForProtocol(ResourceProtocol),
    /// Field not allowed for this protocol is set.
    #[error("not allowed for {0:?} Resources")]
    NotAllowedForProtocol(ResourceProtocol),
    /// A TCP/UDP Resource port no attached listener listens on.
    #[error("no attached listener listens on port {0}")]
    PortNotOnListener(u16),
    /// Two Resources claim the same hostname or port on a shared listener.
    #[error("{what} {value} is also claimed by Resource {other} on the same listener")]
    ResourceConflict {
        /// `hostname` or `port`.
        what: &'static str,
        /// The hostname or port.
        value: String,
        /// The other Resource.
        other: String,
    },
    /// A hostname outside the tenant's domains.
    #[error("hostname {hostname:?} is outside the domains of tenant {tenant:?}")]
    HostnameOutsideTenant {
        /// The hostname.
        hostname: String,
        /// The tenant.
        tenant: String,
    },
    /// Not a valid (optionally `*.` wildcard) DNS name.
    #[error("invalid hostname {0:?}")]
    InvalidHostname(String),
    /// Every upstream has weight 0: nothing could be served.
    #[error("all upstream weights are zero")]
    AllWeightsZero,
    /// A site upstream naming a site not in `tunnel.sites`.
    #[error("site {0:?} not found in this gateway's tunnel")]
    UnknownSite(String),
    /// A site of another tenant.
    #[error("site {site:?} belongs to tenant {site_tenant:?}")]
    SiteOfOtherTenant {
        /// Site.
        site: String,
        /// Its tenant.
        site_tenant: String,
    },
    /// A site upstream its site's allowedTargets do not allow.
    #[error("site {site:?} does not allow {host}:{port}")]
    SiteTargetNotAllowed {
        /// Site.
        site: String,
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// A path value not in normal form.
    #[error(
        "path {0:?} must start with '/' and have no empty, '.' or '..' segments, '%', '?' or '#'"
    )]
    InvalidPath(String),
    /// Not an HTTP method token.
    #[error("invalid HTTP method {0:?}")]
    InvalidMethod(String),
    /// Not an HTTP header name.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// A rate limit that cannot work.
    #[error("invalid rate limit: {0}")]
    InvalidRateLimit(&'static str),
    /// A health check that cannot work.
    #[error("invalid health check: {0}")]
    InvalidHealthCheck(&'static str),
    /// A duration of zero or out of range.
    #[error("invalid duration: {0}")]
    InvalidDuration(&'static str),
    /// A CIDR that does not parse.
    #[error("{0}")]
    InvalidCidr(CidrError),
    /// `proxyProtocol` or `trustedHops` without the peers to believe them from.
    #[error(
        "must list the load balancers or proxies (CIDRs) whose PROXY header or X-Forwarded-For is believed when proxyProtocol is on or trustedHops > 0"
    )]
    NoTrustedPeers,
    /// An IP address that does not parse or is outside its pool.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// Not a WireGuard public key (base64 of 32 bytes).
    #[error("invalid WireGuard public key: {0}")]
    InvalidPublicKey(String),
    /// Two sites with one key: the hub could not tell them apart.
    #[error("public key also used by site {0:?}")]
    DuplicatePublicKey(String),
    /// A principal naming a provider the tenant does not have.
    #[error("identity provider {idp:?} not found in tenant {tenant:?}")]
    UnknownIdentityProvider {
        /// Provider.
        idp: String,
        /// Tenant.
        tenant: String,
    },
    /// A principal naming a provider of the wrong type.
    #[error("identity provider {idp:?} is of type {found}, this principal needs {expected}")]
    WrongIdentityProviderType {
        /// Provider.
        idp: String,
        /// Needed type.
        expected: &'static str,
        /// Actual type.
        found: &'static str,
    },
    /// A policy target naming a Resource not in `resources`.
    #[error("Resource {0} not found")]
    UnknownResource(String),
    /// A policy target naming a Resource of another tenant.
    #[error(
        "Resource {resource} belongs to tenant {resource_tenant:?}: policies never cross tenants"
    )]
    CrossTenantTarget {
        /// Resource.
        resource: String,
        /// Its tenant.
        resource_tenant: String,
    },
    /// A policy target naming a rule the Resource does not have.
    #[error("Resource {resource} has no rule {section:?}")]
    UnknownSection {
        /// Resource.
        resource: String,
        /// Section.
        section: String,
    },
    /// A policy without rules.
    #[error("a policy needs at least one rule")]
    NoRules,
    /// A rule whose `from` is empty.
    #[error("from needs at least one principal: there is no implicit \"anyone\"")]
    EmptyFrom,
    /// A schedule that does not parse.
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// Methods or paths on a policy targeting a non-HTTP Resource.
    #[error("methods and paths only apply to HTTP Resources; {resource} is {protocol:?}")]
    HttpFieldsOnL4Target {
        /// Resource.
        resource: String,
        /// Its protocol.
        protocol: ResourceProtocol,
    },
    /// An identity-provider setting that cannot work.
    #[error("invalid identity provider: {0}")]
    InvalidIdentityProvider(String),
    /// A JWKS document with no usable key, or malformed.
    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),
    /// An API-key hash not in the documented format.
    #[error("invalid API key hash: {0}")]
    InvalidApiKeyHash(String),
    /// A session key that is not base64 of at least 32 bytes.
    #[error("session signing key must be base64 of at least 32 bytes")]
    InvalidSessionKey,
}

struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, kind: ValidationErrorKind) {
        self.0.push(ValidationError {
            path: path.into(),
            kind,
        });
    }

    fn non_empty(&mut self, path: impl Into<String>, value: &str) {
        if value.is_empty() {
            self.push(path, ValidationErrorKind::Empty);
        }
    }

    /// Reports duplicates among `names` (each with its path).
    fn unique<'a>(
        &mut self,
        what: &'static str,
        items: impl IntoIterator<Item = (String, &'a str)>,
    ) {
        let mut seen = BTreeSet::new();
        for (path, name) in items {
            if !seen.insert(name) {
                self.push(
                    path,
                    ValidationErrorKind::DuplicateName {
                        what,
                        name: name.to_string(),
                    },
                );
            }
        }
    }
}

pub(super) fn validate(s: &Snapshot) -> Vec<ValidationError> {
    let mut e = Errors(Vec::new());
    if s.schema_version != SCHEMA_VERSION {
        e.push(
            "schemaVersion",
            ValidationErrorKind::WrongSchemaVersion {
                found: s.schema_version,
            },
        );
    }
    e.non_empty("gateway.namespace", &s.gateway.namespace);
    e.non_empty("gateway.name", &s.gateway.name);
    client_ip_detection(s, &mut e);
    listeners(s, &mut e);
    tenants(s, &mut e);
    if let Some(t) = &s.tunnel {
        tunnel(t, s, &mut e);
    }
    resources(s, &mut e);
    policies(s, &mut e);
    e.0
}

/// A PROXY header or X-Forwarded-For is believed only from listed peers, so a snapshot that
/// believes either must list them: an empty list would trust nobody and break every
/// connection through the load balancer, or (as before) trust everybody.
fn client_ip_detection(s: &Snapshot, e: &mut Errors) {
    let c = &s.client_ip_detection;
    for (i, v) in c.trusted_peer_cidrs.iter().enumerate() {
        if let Err(err) = v.parse::<Cidr>() {
            e.push(
                format!("clientIPDetection.trustedPeerCIDRs[{i}]"),
                ValidationErrorKind::InvalidCidr(err),
            );
        }
    }
    if c.trusts_forwarding() && c.trusted_peer_cidrs.is_empty() {
        e.push(
            "clientIPDetection.trustedPeerCIDRs",
            ValidationErrorKind::NoTrustedPeers,
        );
    }
}

fn listeners(s: &Snapshot, e: &mut Errors) {
    e.unique(
        "listener",
        s.listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].name"), l.name.as_str())),
    );
    for (i, l) in s.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        e.non_empty(format!("{p}.name"), &l.name);
        if l.port == 0 {
            e.push(format!("{p}.port"), ValidationErrorKind::InvalidPort);
        }
        match (&l.hostname, l.protocol) {
            (Some(_), ListenerProtocol::Tcp | ListenerProtocol::Udp) => e.push(
                format!("{p}.hostname"),
                ValidationErrorKind::HostnameNotAllowed,
            ),
            (Some(h), _) if !valid_hostname(h) => e.push(
                format!("{p}.hostname"),
                ValidationErrorKind::InvalidHostname(h.clone()),
            ),
            _ => {}
        }
        match (&l.tls, l.protocol) {
            (None, ListenerProtocol::Https) => {
                e.push(format!("{p}.tls"), ValidationErrorKind::MissingTls)
            }
            (Some(tls), ListenerProtocol::Https | ListenerProtocol::Tcp) => {
                if tls.certificates.is_empty() && !tls.certificates_pending {
                    e.push(
                        format!("{p}.tls.certificates"),
                        ValidationErrorKind::MissingTls,
                    );
                }
                e.unique(
                    "certificate",
                    tls.certificates
                        .iter()
                        .enumerate()
                        .map(|(j, c)| (format!("{p}.tls.certificates[{j}].name"), c.name.as_str())),
                );
                for (j, c) in tls.certificates.iter().enumerate() {
                    let cp = format!("{p}.tls.certificates[{j}]");
                    if let Err(err) =
                        crate::identity::cert::parse_pem_certificates(&c.certificate_chain_pem)
                    {
                        e.push(
                            format!("{cp}.certificateChainPem"),
                            ValidationErrorKind::InvalidPem(err.to_string()),
                        );
                    }
                    if !c.private_key_pem.expose().contains("-----BEGIN ")
                        || !c.private_key_pem.expose().contains("PRIVATE KEY-----")
                    {
                        e.push(
                            format!("{cp}.privateKeyPem"),
                            ValidationErrorKind::InvalidPem("no PRIVATE KEY block".into()),
                        );
                    }
                    for (k, h) in c.hostnames.iter().enumerate() {
                        if !valid_hostname(h) {
                            e.push(
                                format!("{cp}.hostnames[{k}]"),
                                ValidationErrorKind::InvalidHostname(h.clone()),
                            );
                        }
                    }
                }
            }
            (Some(_), _) => e.push(format!("{p}.tls"), ValidationErrorKind::TlsNotAllowed),
            (None, _) => {}
        }
        if let Some(cc) = &l.client_certificate
            && cc.mode != super::ClientCertificateMode::None
        {
            if l.tls.is_none() {
                e.push(
                    format!("{p}.clientCertificate"),
                    ValidationErrorKind::ClientCertificateWithoutTls,
                );
            }
            if let Err(err) = crate::identity::cert::parse_pem_certificates(&cc.ca_pem) {
                e.push(
                    format!("{p}.clientCertificate.caPem"),
                    ValidationErrorKind::InvalidPem(err.to_string()),
                );
            }
        }
    }
    // Port sharing: only HTTP/HTTPS/TLSPassthrough listeners of one protocol with distinct
    // hostnames may share a port (routed by Host/SNI); everything else conflicts.
    for (i, a) in s.listeners.iter().enumerate() {
        for b in &s.listeners[..i] {
            if a.port != b.port || a.protocol.is_tcp_based() != b.protocol.is_tcp_based() {
                continue;
            }
            let shareable = a.protocol == b.protocol
                && matches!(
                    a.protocol,
                    ListenerProtocol::Http
                        | ListenerProtocol::Https
                        | ListenerProtocol::TlsPassthrough
                )
                && a.hostname.as_deref().map(str::to_ascii_lowercase)
                    != b.hostname.as_deref().map(str::to_ascii_lowercase);
            if !shareable {
                e.push(
                    format!("listeners[{i}].port"),
                    ValidationErrorKind::PortConflict {
                        port: a.port,
                        other: format!("listener {:?}", b.name),
                    },
                );
            }
        }
    }
}

fn tenants(s: &Snapshot, e: &mut Errors) {
    e.unique(
        "tenant",
        s.tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("tenants[{i}].name"), t.name.as_str())),
    );
    for (i, t) in s.tenants.iter().enumerate() {
        let p = format!("tenants[{i}]");
        e.non_empty(format!("{p}.name"), &t.name);
        for (j, d) in t.domains.iter().enumerate() {
            if !valid_hostname(d) {
                e.push(
                    format!("{p}.domains[{j}]"),
                    ValidationErrorKind::InvalidHostname(d.clone()),
                );
            }
        }
        if t.session.duration_seconds == 0 {
            e.push(
                format!("{p}.session.durationSeconds"),
                ValidationErrorKind::InvalidDuration("must be positive"),
            );
        }
        e.unique(
            "session key",
            t.session
                .signing_keys
                .iter()
                .enumerate()
                .map(|(j, k)| (format!("{p}.session.signingKeys[{j}].id"), k.id.as_str())),
        );
        for (j, k) in t.session.signing_keys.iter().enumerate() {
            use base64::Engine;
            let ok = base64::engine::general_purpose::STANDARD
                .decode(k.secret.expose())
                .is_ok_and(|b| b.len() >= 32);
            if !ok {
                e.push(
                    format!("{p}.session.signingKeys[{j}].secret"),
                    ValidationErrorKind::InvalidSessionKey,
                );
            }
        }
        e.unique(
            "identity provider",
            t.identity_providers.iter().enumerate().map(|(j, idp)| {
                (
                    format!("{p}.identityProviders[{j}].name"),
                    idp.name.as_str(),
                )
            }),
        );
        for (j, idp) in t.identity_providers.iter().enumerate() {
            identity_provider(
                &format!("{p}.identityProviders[{j}]"),
                &idp.name,
                &idp.kind,
                e,
            );
        }
    }
}

fn identity_provider(p: &str, name: &str, kind: &IdentityProviderKind, e: &mut Errors) {
    use ValidationErrorKind::InvalidIdentityProvider as Bad;
    e.non_empty(format!("{p}.name"), name);
    match kind {
        IdentityProviderKind::Oidc(o) => {
            let kp = format!("{p}.kind.oidc");
            if !o.issuer.starts_with("https://") {
                e.push(
                    format!("{kp}.issuer"),
                    Bad("OIDC issuer must be an https URL".into()),
                );
            }
            e.non_empty(format!("{kp}.clientID"), &o.client_id);
            e.non_empty(format!("{kp}.clientSecret"), o.client_secret.expose());
            if !o.scopes.iter().any(|s| s == "openid") {
                e.push(
                    format!("{kp}.scopes"),
                    Bad("scopes must include openid".into()),
                );
            }
        }
        IdentityProviderKind::Jwt(j) => {
            let kp = format!("{p}.kind.jwt");
            e.non_empty(format!("{kp}.issuer"), &j.issuer);
            if j.audiences.is_empty() || j.audiences.iter().any(String::is_empty) {
                e.push(
                    format!("{kp}.audiences"),
                    Bad("a JWT provider needs at least one non-empty audience".into()),
                );
            }
            if let Some(c) = &j.cookie_name
                && !super::is_cookie_name(c)
            {
                e.push(
                    format!("{kp}.cookieName"),
                    Bad(format!(
                        "{c:?} is not a cookie name (RFC 6265 token, at most 128 characters)"
                    )),
                );
            }
            if j.clock_skew_seconds > crate::identity::jwt::MAX_CLOCK_SKEW {
                e.push(
                    format!("{kp}.clockSkewSeconds"),
                    ValidationErrorKind::InvalidDuration("clock skew is at most 300 seconds"),
                );
            }
            match &j.jwks {
                JwksSource::Inline(v) => {
                    if let Err(err) = crate::identity::jwt::Jwks::from_value(v) {
                        e.push(
                            format!("{kp}.jwks.inline"),
                            ValidationErrorKind::InvalidJwks(err.to_string()),
                        );
                    }
                }
                JwksSource::Remote(r) => {
                    if !r.uri.starts_with("https://") {
                        e.push(
                            format!("{kp}.jwks.remote.uri"),
                            Bad("JWKS uri must be an https URL".into()),
                        );
                    }
                    if r.refresh_interval_seconds == 0 {
                        e.push(
                            format!("{kp}.jwks.remote.refreshIntervalSeconds"),
                            ValidationErrorKind::InvalidDuration("must be positive"),
                        );
                    }
                }
            }
        }
        IdentityProviderKind::ClientCertificate(c) => {
            if let Err(err) = crate::identity::cert::parse_pem_certificates(&c.ca_pem) {
                e.push(
                    format!("{p}.kind.clientCertificate.caPem"),
                    ValidationErrorKind::InvalidPem(err.to_string()),
                );
            }
        }
        IdentityProviderKind::ApiKey(a) => {
            let kp = format!("{p}.kind.apiKey");
            if !is_method_token(&a.header) {
                e.push(
                    format!("{kp}.header"),
                    ValidationErrorKind::InvalidHeaderName(a.header.clone()),
                );
            }
            e.unique(
                "API key client",
                a.keys.iter().enumerate().map(|(k, entry)| {
                    (format!("{kp}.keys[{k}].clientID"), entry.client_id.as_str())
                }),
            );
            for (k, entry) in a.keys.iter().enumerate() {
                e.non_empty(format!("{kp}.keys[{k}].clientID"), &entry.client_id);
                if let Err(err) = crate::identity::apikey::ApiKeyHash::parse(&entry.hash) {
                    e.push(
                        format!("{kp}.keys[{k}].hash"),
                        ValidationErrorKind::InvalidApiKeyHash(err.to_string()),
                    );
                }
            }
        }
    }
}

fn tunnel(t: &Tunnel, s: &Snapshot, e: &mut Errors) {
    if t.listen_port == 0 {
        e.push("tunnel.listenPort", ValidationErrorKind::InvalidPort);
    }
    if let Some(l) = s
        .listeners
        .iter()
        .find(|l| l.port == t.listen_port && l.protocol == ListenerProtocol::Udp)
    {
        e.push(
            "tunnel.listenPort",
            ValidationErrorKind::PortConflict {
                port: t.listen_port,
                other: format!("listener {:?}", l.name),
            },
        );
    }
    let pool = match t.address_pool.parse::<Cidr>() {
        Ok(c) => Some(c),
        Err(err) => {
            e.push("tunnel.addressPool", ValidationErrorKind::InvalidCidr(err));
            None
        }
    };
    e.unique(
        "site",
        t.sites
            .iter()
            .enumerate()
            .map(|(i, site)| (format!("tunnel.sites[{i}].name"), site.name.as_str())),
    );
    let mut keys: BTreeMap<[u8; 32], &str> = BTreeMap::new();
    for (i, site) in t.sites.iter().enumerate() {
        let p = format!("tunnel.sites[{i}]");
        e.non_empty(format!("{p}.name"), &site.name);
        e.non_empty(format!("{p}.tenant"), &site.tenant);
        match crate::identity::site::decode_public_key(&site.public_key) {
            Ok(k) => {
                if let Some(other) = keys.insert(k, &site.name) {
                    e.push(
                        format!("{p}.publicKey"),
                        ValidationErrorKind::DuplicatePublicKey(other.to_string()),
                    );
                }
            }
            Err(err) => e.push(
                format!("{p}.publicKey"),
                ValidationErrorKind::InvalidPublicKey(err.to_string()),
            ),
        }
        if let Some(a) = &site.tunnel_address {
            let ok = a
                .parse::<IpAddr>()
                .is_ok_and(|ip| pool.is_none_or(|pool| pool.contains(ip)));
            if !ok {
                e.push(
                    format!("{p}.tunnelAddress"),
                    ValidationErrorKind::InvalidAddress(a.clone()),
                );
            }
        }
        for (j, c) in site.advertised_cidrs.iter().enumerate() {
            if let Err(err) = c.parse::<Cidr>() {
                e.push(
                    format!("{p}.advertisedCIDRs[{j}]"),
                    ValidationErrorKind::InvalidCidr(err),
                );
            }
        }
        for (j, target) in site.allowed_targets.iter().enumerate() {
            let tp = format!("{p}.allowedTargets[{j}]");
            let h = &target.host;
            if h.contains('/') {
                if let Err(err) = h.parse::<Cidr>() {
                    e.push(format!("{tp}.host"), ValidationErrorKind::InvalidCidr(err));
                }
            } else if h.parse::<IpAddr>().is_err() && !valid_hostname(h) {
                e.push(
                    format!("{tp}.host"),
                    ValidationErrorKind::InvalidHostname(h.clone()),
                );
            }
            if target.ports.is_empty() || target.ports.contains(&0) {
                e.push(format!("{tp}.ports"), ValidationErrorKind::InvalidPort);
            }
        }
    }
}

fn resources(s: &Snapshot, e: &mut Errors) {
    let keys: Vec<String> = s
        .resources
        .iter()
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .collect();
    e.unique(
        "resource",
        keys.iter()
            .enumerate()
            .map(|(i, k)| (format!("resources[{i}].name"), k.as_str())),
    );
    let tenants: BTreeMap<&str, &Tenant> = s.tenants.iter().map(|t| (t.name.as_str(), t)).collect();
    let listeners: BTreeMap<&str, &Listener> =
        s.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    // (listener, hostname or port) -> first Resource claiming it.
    let mut claims: BTreeMap<(&str, String), String> = BTreeMap::new();
    for (i, r) in s.resources.iter().enumerate() {
        let p = format!("resources[{i}]");
        e.non_empty(format!("{p}.namespace"), &r.namespace);
        e.non_empty(format!("{p}.name"), &r.name);
        let tenant = tenants.get(r.tenant.as_str()).copied();
        if tenant.is_none() {
            e.push(
                format!("{p}.tenant"),
                ValidationErrorKind::UnknownTenant(r.tenant.clone()),
            );
        }
        if r.listeners.is_empty() {
            e.push(format!("{p}.listeners"), ValidationErrorKind::Empty);
        }
        let mut attached = Vec::new();
        for (j, name) in r.listeners.iter().enumerate() {
            match listeners.get(name.as_str()) {
                None => e.push(
                    format!("{p}.listeners[{j}]"),
                    ValidationErrorKind::UnknownListener(name.clone()),
                ),
                Some(l) if !l.protocol.accepts(r.protocol) => e.push(
                    format!("{p}.listeners[{j}]"),
                    ValidationErrorKind::ListenerProtocolMismatch {
                        name: name.clone(),
                        listener: l.protocol,
                        resource: r.protocol,
                    },
                ),
                Some(l) => attached.push(*l),
            }
        }
        let by_host = matches!(
            r.protocol,
            ResourceProtocol::Http | ResourceProtocol::TlsPassthrough
        );
        let required = |e: &mut Errors, field: &str, empty: bool| {
            if empty {
                e.push(
                    format!("{p}.{field}"),
                    ValidationErrorKind::RequiredForProtocol(r.protocol),
                );
            }
        };
        let forbidden = |e: &mut Errors, field: &str, set: bool| {
            if set {
                e.push(
                    format!("{p}.{field}"),
                    ValidationErrorKind::NotAllowedForProtocol(r.protocol),
                );
            }
        };
        // A sidecar's HTTP listener fronts one application, called by whatever name the
        // client used (Service name, pod IP): its Resource may name no hostnames and then
        // serves every Host on its listeners.
        let any_host = s.sidecar && r.protocol == ResourceProtocol::Http;
        if by_host {
            required(e, "hostnames", r.hostnames.is_empty() && !any_host);
            forbidden(e, "ports", !r.ports.is_empty());
        } else {
            required(e, "ports", r.ports.is_empty());
            forbidden(e, "hostnames", !r.hostnames.is_empty());
        }
        if r.protocol == ResourceProtocol::Http {
            required(e, "rules", r.rules.is_empty());
            forbidden(e, "upstreams", !r.upstreams.is_empty());
            forbidden(e, "healthCheck", r.health_check.is_some());
        } else {
            required(e, "upstreams", r.upstreams.is_empty());
            forbidden(e, "rules", !r.rules.is_empty());
        }
        for (j, h) in r.hostnames.iter().enumerate() {
            let hp = format!("{p}.hostnames[{j}]");
            if !valid_hostname(h) {
                e.push(hp, ValidationErrorKind::InvalidHostname(h.clone()));
                continue;
            }
            if let Some(t) = tenant
                && !t.domains.is_empty()
                && !t.domains.iter().any(|d| domain_covers(d, h))
            {
                e.push(
                    hp.clone(),
                    ValidationErrorKind::HostnameOutsideTenant {
                        hostname: h.clone(),
                        tenant: t.name.clone(),
                    },
                );
            }
            for l in &attached {
                let key = (l.name.as_str(), h.to_ascii_lowercase());
                let me = format!("{}/{}", r.namespace, r.name);
                if let Some(other) = claims.get(&key) {
                    if *other != me {
                        e.push(
                            hp.clone(),
                            ValidationErrorKind::ResourceConflict {
                                what: "hostname",
                                value: h.clone(),
                                other: other.clone(),
                            },
                        );
                    }
                } else {
                    claims.insert(key, me);
                }
            }
        }
        for (j, port) in r.ports.iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if *port == 0 {
                e.push(pp.clone(), ValidationErrorKind::InvalidPort);
            }
            if !attached.is_empty() && !attached.iter().any(|l| l.port == *port) {
                e.push(pp.clone(), ValidationErrorKind::PortNotOnListener(*port));
            }
            for l in attached.iter().filter(|l| l.port == *port) {
                let key = (l.name.as_str(), port.to_string());
                let me = format!("{}/{}", r.namespace, r.name);
                if let Some(other) = claims.get(&key) {
                    if *other != me {
                        e.push(
                            pp.clone(),
                            ValidationErrorKind::ResourceConflict {
                                what: "port",
                                value: port.to_string(),
                                other: other.clone(),
                            },
                        );
                    }
                } else {
                    claims.insert(key, me);
                }
            }
        }
        let transport = if r.protocol == ResourceProtocol::Udp {
            TransportProtocol::Udp
        } else {
            TransportProtocol::Tcp
        };
        upstreams(
            &format!("{p}.upstreams"),
            &r.upstreams,
            r,
            transport,
            s,
            e,
            r.protocol != ResourceProtocol::Http,
        );
        if let Some(hc) = &r.health_check {
            health_check(&format!("{p}.healthCheck"), hc, e);
        }
        e.unique(
            "rule",
            r.rules
                .iter()
                .enumerate()
                .map(|(j, rule)| (format!("{p}.rules[{j}].name"), rule.name.as_str())),
        );
        for (j, rule) in r.rules.iter().enumerate() {
            let rp = format!("{p}.rules[{j}]");
            e.non_empty(format!("{rp}.name"), &rule.name);
            if rule.upstreams.is_empty() {
                e.push(format!("{rp}.upstreams"), ValidationErrorKind::Empty);
            }
            upstreams(
                &format!("{rp}.upstreams"),
                &rule.upstreams,
                r,
                transport,
                s,
                e,
                true,
            );
            for (k, m) in rule.matches.iter().enumerate() {
                let mp = format!("{rp}.matches[{k}]");
                if let Some(path) = &m.path
                    && !crate::path::is_normalized_rule_path(&path.value)
                {
                    e.push(
                        format!("{mp}.path.value"),
                        ValidationErrorKind::InvalidPath(path.value.clone()),
                    );
                }
                if let Some(method) = &m.method
                    && !is_method_token(method)
                {
                    e.push(
                        format!("{mp}.method"),
                        ValidationErrorKind::InvalidMethod(method.clone()),
                    );
                }
                for (h, hm) in m.headers.iter().enumerate() {
                    if !is_method_token(&hm.name) {
                        e.push(
                            format!("{mp}.headers[{h}].name"),
                            ValidationErrorKind::InvalidHeaderName(hm.name.clone()),
                        );
                    }
                }
            }
            if let Some(hc) = &rule.health_check {
                health_check(&format!("{rp}.healthCheck"), hc, e);
            }
            if let Some(rl) = &rule.rate_limit {
                if rl.requests_per_second == 0 {
                    e.push(
                        format!("{rp}.rateLimit.requestsPerSecond"),
                        ValidationErrorKind::InvalidRateLimit("requestsPerSecond must be positive"),
                    );
                }
                if rl.burst < rl.requests_per_second {
                    e.push(
                        format!("{rp}.rateLimit.burst"),
                        ValidationErrorKind::InvalidRateLimit(
                            "burst must be at least requestsPerSecond",
                        ),
                    );
                }
            }
            if rule.timeout_ms == 0 {
                e.push(
                    format!("{rp}.timeoutMs"),
                    ValidationErrorKind::InvalidDuration("must be positive"),
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn upstreams(
    p: &str,
    list: &[Upstream],
    r: &CompiledResource,
    transport: TransportProtocol,
    s: &Snapshot,
    e: &mut Errors,
    check_weights: bool,
) {
    if check_weights && !list.is_empty() && list.iter().all(|u| u.weight == 0) {
        e.push(p.to_string(), ValidationErrorKind::AllWeightsZero);
    }
    for (k, u) in list.iter().enumerate() {
        let up = format!("{p}[{k}].kind");
        match &u.kind {
            UpstreamKind::Service(svc) => {
                e.non_empty(format!("{up}.service.name"), &svc.name);
                if svc.port == 0 {
                    e.push(
                        format!("{up}.service.port"),
                        ValidationErrorKind::InvalidPort,
                    );
                }
            }
            UpstreamKind::Site(site) => {
                if site.port == 0 {
                    e.push(format!("{up}.site.port"), ValidationErrorKind::InvalidPort);
                }
                e.non_empty(format!("{up}.site.host"), &site.host);
                // Blamed here, on the Resource, so the build leaves it out; the same host in
                // the tunnel's allowedTargets would otherwise only blame the Gateway.
                if !site.host.is_empty()
                    && site.host.parse::<IpAddr>().is_err()
                    && (site.host.starts_with("*.") || !valid_hostname(&site.host))
                {
                    e.push(
                        format!("{up}.site.host"),
                        ValidationErrorKind::InvalidHostname(site.host.clone()),
                    );
                }
                let found = s
                    .tunnel
                    .as_ref()
                    .and_then(|t| t.sites.iter().find(|x| x.name == site.site));
                match found {
                    None => e.push(
                        format!("{up}.site.site"),
                        ValidationErrorKind::UnknownSite(site.site.clone()),
                    ),
                    Some(t) if t.tenant != r.tenant => e.push(
                        format!("{up}.site.site"),
                        ValidationErrorKind::SiteOfOtherTenant {
                            site: site.site.clone(),
                            site_tenant: t.tenant.clone(),
                        },
                    ),
                    Some(t) if !t.allows(&site.host, site.port, transport) => e.push(
                        format!("{up}.site"),
                        ValidationErrorKind::SiteTargetNotAllowed {
                            site: site.site.clone(),
                            host: site.host.clone(),
                            port: site.port,
                        },
                    ),
                    Some(_) => {}
                }
            }
        }
    }
}

fn health_check(p: &str, hc: &super::HealthCheck, e: &mut Errors) {
    use ValidationErrorKind::InvalidHealthCheck as Bad;
    if hc.interval_ms == 0 {
        e.push(
            format!("{p}.intervalMs"),
            Bad("intervalMs must be positive"),
        );
    }
    if hc.timeout_ms == 0 {
        e.push(format!("{p}.timeoutMs"), Bad("timeoutMs must be positive"));
    }
    if hc.unhealthy_threshold == 0 {
        e.push(
            format!("{p}.unhealthyThreshold"),
            Bad("unhealthyThreshold must be positive"),
        );
    }
    if hc.healthy_threshold == 0 {
        e.push(
            format!("{p}.healthyThreshold"),
            Bad("healthyThreshold must be positive"),
        );
    }
    if let Some(path) = &hc.path
        && !crate::path::is_normalized_rule_path(path)
    {
        e.push(
            format!("{p}.path"),
            ValidationErrorKind::InvalidPath(path.clone()),
        );
    }
}

fn policies(s: &Snapshot, e: &mut Errors) {
    let keys: Vec<String> = s
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    e.unique(
        "policy",
        keys.iter()
            .enumerate()
            .map(|(i, k)| (format!("policies[{i}].name"), k.as_str())),
    );
    let tenants: BTreeMap<&str, &Tenant> = s.tenants.iter().map(|t| (t.name.as_str(), t)).collect();
    for (i, pol) in s.policies.iter().enumerate() {
        let p = format!("policies[{i}]");
        e.non_empty(format!("{p}.namespace"), &pol.namespace);
        e.non_empty(format!("{p}.name"), &pol.name);
        let tenant = tenants.get(pol.tenant.as_str()).copied();
        if tenant.is_none() {
            e.push(
                format!("{p}.tenant"),
                ValidationErrorKind::UnknownTenant(pol.tenant.clone()),
            );
        }
        policy_targets(&p, pol, s, e);
        if pol.rules.is_empty() {
            e.push(format!("{p}.rules"), ValidationErrorKind::NoRules);
        }
        e.unique(
            "rule",
            pol.rules
                .iter()
                .enumerate()
                .map(|(j, r)| (format!("{p}.rules[{j}].name"), r.name.as_str())),
        );
        if !pol.unresolved.is_empty() {
            // Marked unresolved: fails closed; its contents are expected to be broken.
            continue;
        }
        for (j, rule) in pol.rules.iter().enumerate() {
            let rp = format!("{p}.rules[{j}]");
            e.non_empty(format!("{rp}.name"), &rule.name);
            if rule.from.is_empty() {
                e.push(format!("{rp}.from"), ValidationErrorKind::EmptyFrom);
            }
            for (field, list) in [
                ("from", &rule.from),
                ("require", &rule.require),
                ("exclude", &rule.exclude),
            ] {
                for (k, principal) in list.iter().enumerate() {
                    check_principal(&format!("{rp}.{field}[{k}]"), principal, tenant, e);
                }
            }
            for (k, op) in rule.to.iter().enumerate() {
                let op_path = format!("{rp}.to[{k}]");
                for (m, method) in op.methods.iter().enumerate() {
                    if !is_method_token(method) {
                        e.push(
                            format!("{op_path}.methods[{m}]"),
                            ValidationErrorKind::InvalidMethod(method.clone()),
                        );
                    }
                }
                for (m, path) in op.paths.iter().enumerate() {
                    if !crate::path::is_normalized_rule_path(&path.value) {
                        e.push(
                            format!("{op_path}.paths[{m}].value"),
                            ValidationErrorKind::InvalidPath(path.value.clone()),
                        );
                    }
                }
                for (m, h) in op.hosts.iter().enumerate() {
                    if !valid_hostname(h) {
                        e.push(
                            format!("{op_path}.hosts[{m}]"),
                            ValidationErrorKind::InvalidHostname(h.clone()),
                        );
                    }
                }
                if op.ports.contains(&0) {
                    e.push(format!("{op_path}.ports"), ValidationErrorKind::InvalidPort);
                }
                if !op.methods.is_empty() || !op.paths.is_empty() {
                    for t in &pol.targets {
                        if let Some(r) = s.resource(&t.resource.namespace, &t.resource.name)
                            && r.protocol != ResourceProtocol::Http
                        {
                            e.push(
                                op_path.clone(),
                                ValidationErrorKind::HttpFieldsOnL4Target {
                                    resource: t.resource.to_string(),
                                    protocol: r.protocol,
                                },
                            );
                        }
                    }
                }
            }
            if let Some(schedule) = rule.when.as_ref().and_then(|w| w.schedule.as_ref())
                && let Err(msg) = crate::policy::compile_schedule(schedule)
            {
                e.push(
                    format!("{rp}.when.schedule"),
                    ValidationErrorKind::InvalidSchedule(msg),
                );
            }
        }
    }
}

fn policy_targets(p: &str, pol: &CompiledPolicy, s: &Snapshot, e: &mut Errors) {
    for (j, t) in pol.targets.iter().enumerate() {
        let tp = format!("{p}.targets[{j}]");
        let Some(r) = s.resource(&t.resource.namespace, &t.resource.name) else {
            e.push(
                format!("{tp}.resource"),
                ValidationErrorKind::UnknownResource(t.resource.to_string()),
            );
            continue;
        };
        if r.tenant != pol.tenant {
            e.push(
                format!("{tp}.resource"),
                ValidationErrorKind::CrossTenantTarget {
                    resource: t.resource.to_string(),
                    resource_tenant: r.tenant.clone(),
                },
            );
        }
        if let Some(section) = &t.section_name
            && !r.rules.iter().any(|rule| rule.name == *section)
        {
            e.push(
                format!("{tp}.sectionName"),
                ValidationErrorKind::UnknownSection {
                    resource: t.resource.to_string(),
                    section: section.clone(),
                },
            );
        }
    }
}

fn check_principal(p: &str, principal: &Principal, tenant: Option<&Tenant>, e: &mut Errors) {
    let idp_check = |e: &mut Errors,
                     field: &str,
                     idp: &Option<String>,
                     expected: &'static str,
                     ok: fn(&IdentityProviderKind) -> bool| {
        let (Some(idp), Some(tenant)) = (idp, tenant) else {
            return;
        };
        match tenant.identity_provider(idp) {
            None => e.push(
                format!("{p}.{field}.idp"),
                ValidationErrorKind::UnknownIdentityProvider {
                    idp: idp.clone(),
                    tenant: tenant.name.clone(),
                },
            ),
            Some(found) if !ok(&found.kind) => e.push(
                format!("{p}.{field}.idp"),
                ValidationErrorKind::WrongIdentityProviderType {
                    idp: idp.clone(),
                    expected,
                    found: found.kind.type_name(),
                },
            ),
            Some(_) => {}
        }
    };
    match principal {
        Principal::User(u) => {
            idp_check(e, "user", &u.idp, "oidc or jwt", |k| {
                matches!(
                    k,
                    IdentityProviderKind::Oidc(_) | IdentityProviderKind::Jwt(_)
                )
            });
            for (i, c) in u.claims.iter().enumerate() {
                e.non_empty(format!("{p}.user.claims[{i}].name"), &c.name);
                if c.values.is_empty() {
                    e.push(
                        format!("{p}.user.claims[{i}].values"),
                        ValidationErrorKind::Empty,
                    );
                }
            }
        }
        Principal::ClientCertificate(c) => {
            idp_check(e, "clientCertificate", &c.idp, "clientCertificate", |k| {
                matches!(k, IdentityProviderKind::ClientCertificate(_))
            });
            for (i, h) in c.spki_sha256.iter().enumerate() {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    e.push(
                        format!("{p}.clientCertificate.spkiSHA256[{i}]"),
                        ValidationErrorKind::InvalidIdentityProvider(
                            "spkiSHA256 must be 64 hex digits".into(),
                        ),
                    );
                }
            }
        }
        Principal::ApiKey(a) => idp_check(e, "apiKey", &a.idp, "apiKey", |k| {
            matches!(k, IdentityProviderKind::ApiKey(_))
        }),
        Principal::Site(site) => {
            if site.names.is_empty() {
                e.push(format!("{p}.site.names"), ValidationErrorKind::Empty);
            }
        }
        Principal::ServiceAccount(sa) => {
            e.non_empty(format!("{p}.serviceAccount.namespace"), &sa.namespace);
            for (i, n) in sa.names.iter().enumerate() {
                e.non_empty(format!("{p}.serviceAccount.names[{i}]"), n);
            }
        }
        Principal::SourceCidrs(c) => {
            if c.cidrs.is_empty() {
                e.push(format!("{p}.sourceCIDRs.cidrs"), ValidationErrorKind::Empty);
            }
            for (field, list) in [("cidrs", &c.cidrs), ("except", &c.except)] {
                for (i, v) in list.iter().enumerate() {
                    if let Err(err) = v.parse::<Cidr>() {
                        e.push(
                            format!("{p}.sourceCIDRs.{field}[{i}]"),
                            ValidationErrorKind::InvalidCidr(err),
                        );
                    }
                }
            }
        }
        Principal::Authenticated | Principal::Anonymous => {}
    }
}

/// A DNS name, optionally with a leading `*.` wildcard label; lower-case letters, digits and
/// hyphens, labels of 1-63 characters, at most 253 characters.
pub(crate) fn valid_hostname(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether tenant domain `domain` (exact or `*.` wildcard) covers `hostname` (exact or
/// wildcard). `*.acme.example` covers `a.acme.example`, `a.b.acme.example`,
/// `*.acme.example` and `*.b.acme.example`, but not `acme.example`.
pub(crate) fn domain_covers(domain: &str, hostname: &str) -> bool {
    match domain.strip_prefix("*.") {
        None => domain.eq_ignore_ascii_case(hostname),
        Some(suffix) => {
            let host = hostname.strip_prefix("*.").unwrap_or(hostname);
            if hostname.starts_with("*.") && host.eq_ignore_ascii_case(suffix) {
                return true;
            }
            crate::eval::host_matches(&domain.to_ascii_lowercase(), host)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(valid_hostname("a.acme.example"));
        assert!(valid_hostname("*.acme.example"));
        assert!(!valid_hostname("A.acme.example"));
        assert!(!valid_hostname("a..b"));
        assert!(!valid_hostname("-a.b"));
        assert!(!valid_hostname("*"));
        assert!(!valid_hostname("a.*.b"));
    }

    #[test]
    fn domains_cover() {
        assert!(domain_covers("*.acme.example", "a.acme.example"));
        assert!(domain_covers("*.acme.example", "a.b.acme.example"));
        assert!(domain_covers("*.acme.example", "*.acme.example"));
        assert!(domain_covers("*.acme.example", "*.b.acme.example"));
        assert!(!domain_covers("*.acme.example", "acme.example"));
        assert!(!domain_covers("*.acme.example", "evil.example"));
        assert!(domain_covers("app.acme.example", "app.acme.example"));
        assert!(!domain_covers("app.acme.example", "x.app.acme.example"));
    }
}

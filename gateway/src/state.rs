//! The compiled, immutable view of one snapshot that every request reads.
//!
//! ```text
//!   bytes --Snapshot::load--> Snapshot --Compiled::build--> Compiled (Arc, swapped atomically)
//!                                          |- PolicySet (the evaluator's index)
//!                                          |- per tenant: JWT verifiers, API-key verifiers,
//!                                          |  client-certificate verifiers (credential checks)
//!                                          |- per listener: TLS certificates for SNI
//!                                          '- per (resource, rule): a load balancer
//! ```
//!
//! Everything that can fail (parsing JWKS, API-key hashes, PEM keys, CA bundles) fails here,
//! once, when a snapshot is loaded, so a broken snapshot is refused as a whole and the last
//! good one keeps serving; the request path only looks things up.

use crate::balance::Balancer;
// foldhash, not std's SipHash: balancers and tenants are looked up on every request, by what
// the snapshot names, never by what a client sends (issue 19).
use foldhash::HashMap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustronaut_contract::PolicySet;
use rustronaut_contract::identity::apikey::{ApiKeyError, ApiKeyVerifier};
use rustronaut_contract::identity::client_ip::TrustedPeers;
use rustronaut_contract::identity::jwt::{Jwks, JwtError, JwtVerifier, JwtVerifierConfig};
use rustronaut_contract::snapshot::{
    ClientCertificateMode, CompiledResource, IdentityProviderKind, JwksSource, ListenerProtocol,
    ResourceProtocol, Snapshot, SnapshotError, TlsVersion,
};
use std::sync::Arc;

/// Why a snapshot could not be turned into a serving state.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `Snapshot::load` refused it (parse or validation).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// An inline JWKS that yields no usable key.
    #[error("tenant {tenant}: identity provider {idp}: {source}")]
    Jwt {
        /// Tenant.
        tenant: String,
        /// Provider.
        idp: String,
        /// Cause.
        source: JwtError,
    },
    /// An API-key provider with an unparseable hash or duplicate client.
    #[error("tenant {tenant}: identity provider {idp}: {source}")]
    ApiKey {
        /// Tenant.
        tenant: String,
        /// Provider.
        idp: String,
        /// Cause.
        source: ApiKeyError,
    },
    /// A CA bundle that cannot verify anything.
    #[error("{what}: invalid CA bundle: {reason}")]
    CaBundle {
        /// Where the bundle is (`tenant acme provider corp-ca`, `listener https`).
        what: String,
        /// Cause.
        reason: String,
    },
    /// A listener certificate or key that rustls cannot use.
    #[error("listener {listener}: certificate {name}: {reason}")]
    Certificate {
        /// Listener.
        listener: String,
        /// Certificate (Secret) name.
        name: String,
        /// Cause.
        reason: String,
    },
    /// A session key that cannot seal cookies.
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// The rustls configuration of a TLS-terminating TCP listener could not be built.
    #[error("listener {listener}: TLS configuration: {reason}")]
    TlsConfig {
        /// Listener.
        listener: String,
        /// Cause.
        reason: String,
    },
    /// An upstream address the gateway refuses to dial: an unspecified address (`0.0.0.0`,
    /// `::`) always, a loopback address unless the snapshot is a sidecar's.
    #[error("resource {resource}: upstream address {address} refused: {reason}")]
    UpstreamAddress {
        /// `namespace/name` of the Resource.
        resource: String,
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        reason: &'static str,
    },
}

impl BuildError {
    /// A short, stable label for the reload-failure metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Snapshot(SnapshotError::Json(_)) => "parse",
            Self::Snapshot(SnapshotError::MissingVersion)
            | Self::Snapshot(SnapshotError::UnsupportedVersion { .. }) => "version",
            Self::Snapshot(SnapshotError::Invalid(_)) => "invalid",
            Self::Jwt { .. } => "jwks",
            Self::ApiKey { .. } => "api_key",
            Self::CaBundle { .. } => "ca_bundle",
            Self::Certificate { .. } | Self::TlsConfig { .. } => "certificate",
            Self::Session(_) => "session_key",
            Self::UpstreamAddress { .. } => "upstream_address",
        }
    }
}

/// One API-key provider: the header it reads and its verifier.
#[derive(Debug)]
pub struct ApiKeyProvider {
    /// Header name, lower-case.
    pub header: String,
    /// Verifier over the stored hashes.
    pub verifier: ApiKeyVerifier,
}

/// One clientCertificate provider: a verifier that checks a chain against its CA only.
#[derive(Debug)]
pub struct CertProvider {
    /// Provider name.
    pub idp: String,
    /// Verifier rooted at the provider's CA bundle.
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// The credential checkers of one tenant. Only these are consulted for a request to one of
/// the tenant's Resources, so a credential from another tenant's provider never verifies.
#[derive(Debug, Default)]
pub struct TenantAuth {
    /// JWT providers with inline JWKS.
    pub jwt: Vec<JwtVerifier>,
    /// JWT providers with remote JWKS (names), verified with the keys [`crate::jwks`]
    /// fetched; until then their tokens are refused.
    pub remote_jwt: Vec<String>,
    /// Cookies that may carry a JWT (`cookieName` of the JWT providers), for browsers.
    pub jwt_cookies: Vec<String>,
    /// API-key providers.
    pub api_keys: Vec<ApiKeyProvider>,
    /// clientCertificate providers.
    pub certs: Vec<CertProvider>,
    /// Session and login-state cookie keys ([`crate::session`]); `None` when the tenant has
    /// no session keys, and then no OIDC login starts and no session cookie opens.
    pub session: Option<crate::session::TenantKeys>,
    /// Whether a Policy of the tenant names a `serviceAccount` principal: then tokens of the
    /// cluster's ServiceAccount issuer are verified for its Resources
    /// ([`crate::service_accounts`]).
    pub service_accounts: bool,
}

/// The credential checkers of a tenant the snapshot does not know: none. A static, so a
/// request for such a tenant borrows it rather than building and dropping one.
pub static NO_AUTH: TenantAuth = TenantAuth {
    jwt: Vec::new(),
    remote_jwt: Vec::new(),
    jwt_cookies: Vec::new(),
    api_keys: Vec::new(),
    certs: Vec::new(),
    session: None,
    service_accounts: false,
};

impl TenantAuth {
    /// Whether the tenant has any bearer-token provider (or names ServiceAccounts in a
    /// Policy), i.e. whether an `Authorization: Bearer` header is a credential for the
    /// gateway rather than for the upstream.
    pub fn takes_bearer_tokens(&self) -> bool {
        !self.jwt.is_empty() || !self.remote_jwt.is_empty() || self.service_accounts
    }
}

/// The certificates of one TLS listener, for SNI selection.
#[derive(Debug)]
pub struct ListenerCerts {
    /// `(hostnames, key)` in snapshot order; the first is the default for clients without
    /// SNI or with an unknown name.
    pub certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    /// Lowest TLS version.
    pub min_version: TlsVersion,
}

impl ListenerCerts {
    /// The certificate for `sni`: an exact hostname, then a `*.` wildcard covering one label,
    /// then the first certificate.
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            for (names, key) in &self.certs {
                if names.iter().any(|n| n.eq_ignore_ascii_case(&sni)) {
                    return Some(key.clone());
                }
            }
            for (names, key) in &self.certs {
                if names.iter().any(|n| wildcard_covers_one_label(n, &sni)) {
                    return Some(key.clone());
                }
            }
        }
        self.certs.first().map(|(_, k)| k.clone())
    }
}

fn wildcard_covers_one_label(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    covers_labels(suffix, host) && !host.as_bytes()[..host.len() - suffix.len() - 1].contains(&b'.')
}

/// Whether `host` is `<one or more labels>.<suffix>` (ASCII case-insensitive). Compares
/// bytes, so no input can split a character.
fn covers_labels(suffix: &str, host: &str) -> bool {
    let (h, s) = (host.as_bytes(), suffix.as_bytes());
    h.len() > s.len() + 1
        && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
        && h[h.len() - s.len() - 1] == b'.'
}

/// Everything the request path needs from one snapshot.
#[derive(Debug)]
pub struct Compiled {
    /// The snapshot itself.
    pub snapshot: Snapshot,
    /// `Snapshot::content_hash`, reported as the config version.
    pub version: String,
    /// The evaluator's index.
    pub policies: PolicySet,
    /// Credential checkers by tenant name.
    pub tenants: HashMap<String, TenantAuth>,
    /// TLS certificates by listener name.
    pub certs: HashMap<String, ListenerCerts>,
    /// Client-certificate verifiers by listener name, with whether a certificate is required;
    /// absent: the listener asks for none.
    pub client_verifiers: HashMap<String, (Arc<dyn ClientCertVerifier>, bool)>,
    /// Balancers by (resource index, rule index) for HTTP rules; `(resource index,
    /// [`L4_RULE`])` for the upstreams of a TCP, UDP or TLSPassthrough Resource, so the
    /// health checks and the balancer lookups treat both alike.
    pub balancers: HashMap<(usize, usize), Balancer>,
    /// Sidecar snapshots only: the balancers of [`Self::balancers`] narrowed to one
    /// listener, by (resource index, rule index or [`L4_RULE`], listener port). Read through
    /// [`Compiled::balancer`].
    pub pinned: HashMap<(usize, usize, u16), Balancer>,
    /// Whether any balancer here picks by least connections, the one reader of the
    /// requests in flight per address (`Shared::inflight` in `proxy`). Without one, which
    /// is the default, a request is not counted: the count took a lock and a map update
    /// when the upstream was picked and again when the request ended (issue 19). With one,
    /// every HTTP request of the snapshot is counted, whatever its own rule's algorithm,
    /// so an address shared with a round-robin rule shows its whole load.
    pub counts_in_flight: bool,
    /// rustls server configurations of the TLS-terminating TCP listeners, by name. Built per
    /// snapshot, so a certificate, CA or minimum-version change applies to the next
    /// connection.
    pub tcp_tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// `clientIPDetection.trustedPeerCIDRs`: the only TCP peers whose PROXY header or
    /// X-Forwarded-For is believed.
    pub trusted_peers: TrustedPeers,
    /// The Resources by hostname, read by [`Compiled::resource_for_host`] on every request
    /// and [`Compiled::resource_for_sni`] on every passthrough connection.
    hosts: HostIndex,
    /// What each request's decision line names, by Resource index: read through
    /// [`Compiled::labels`].
    labels: Vec<Labels>,
    /// Whether every name a decision line takes from this snapshot (each Resource's
    /// `namespace/name` and rule names, each Policy's and its rules' names) goes into a JSON
    /// string as it is: checked here once, so the line copies them without checking each
    /// on every request ([`crate::logs::RequestLine::plain_names`]; issue 19). Kubernetes
    /// names always do; a hand-written snapshot with a quote in a name is escaped as before.
    pub plain_names: bool,
}

/// The names a request's record carries for its Resource ([`crate::pipeline::Record`]),
/// built once per snapshot: a request takes a reference-counted copy instead of joining
/// `namespace/name` and copying its rule's name (two allocations per request, issue 19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// `namespace/name`.
    pub qualified: Arc<str>,
    /// The names of its HTTP rules, in order.
    pub rules: Vec<Arc<str>>,
}

impl Labels {
    fn new(r: &CompiledResource) -> Self {
        Self {
            qualified: format!("{}/{}", r.namespace, r.name).into(),
            rules: r
                .rules
                .iter()
                .map(|rule| Arc::from(rule.name.as_str()))
                .collect(),
        }
    }
}

/// The Resources' hostnames, lower-cased, each with the indices of the Resources that list
/// it, in snapshot order: exact names, and the suffixes of `*.` wildcards.
///
/// Why an index: finding a request's Resource compared its Host with every hostname of
/// every Resource, on every request: a cost that grows with the Resources a shared edge
/// gateway serves (issue 19; 357 instructions per request with the benchmark's one
/// Resource, `gateway/bench/instructions.sh`). With it, a lookup is one map probe for the
/// exact name and one per label for the wildcards, whatever the number of Resources.
#[derive(Debug, Default)]
struct HostIndex {
    /// Shared names: a request routed by an exact name takes its routed host from here
    /// ([`Compiled::route_for_host`]) instead of a copy of its own.
    exact: HashMap<Arc<str>, Vec<usize>>,
    wildcard: HashMap<String, Vec<usize>>,
}

impl HostIndex {
    /// From each Resource's hostnames, in snapshot order.
    fn new<'a>(hostnames: impl IntoIterator<Item = &'a [String]>) -> Self {
        let mut index = Self::default();
        for (i, names) in hostnames.into_iter().enumerate() {
            for h in names {
                let h = h.to_ascii_lowercase();
                let list = match h.strip_prefix("*.") {
                    Some(suffix) => index.wildcard.entry(suffix.to_string()).or_default(),
                    None => index.exact.entry(Arc::from(h)).or_default(),
                };
                // A Resource listing a name twice is one candidate.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        index
    }

    /// The first eligible Resource, in snapshot order, with `host` as a hostname; else the
    /// first eligible one with the longest wildcard suffix that covers it (one or more
    /// labels before the suffix, as in Policy `hosts`). `host` is compared without case.
    fn find(&self, host: &str, eligible: impl Fn(usize) -> bool) -> Option<(usize, HostName<'_>)> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let first = |list: Option<&Vec<usize>>| list?.iter().copied().find(|&i| eligible(i));
        if let Some((name, list)) = self.exact.get_key_value(host)
            && let Some(i) = first(Some(list))
        {
            return Some((i, HostName::Exact(name)));
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Longest suffix first: the one after the first label, then after each next dot.
        // A suffix covers the host when at least one label comes before it, so the whole
        // host is never one.
        host.match_indices('.')
            .filter(|&(dot, _)| dot > 0)
            .find_map(|(dot, _)| first(self.wildcard.get(&host[dot + 1..])))
            .map(|i| (i, HostName::Other))
    }
}

/// How a request's host matched its Resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostName<'a> {
    /// As one of the Resource's exact hostnames: this one, shared with the snapshot.
    Exact(&'a Arc<str>),
    /// By a wildcard, or (sidecars) by a Resource without hostnames.
    Other,
}

impl HostName<'_> {
    /// The routed host as a shared string: the snapshot's for an exact name, else a copy of
    /// `host`.
    pub fn shared(self, host: &str) -> Arc<str> {
        match self {
            HostName::Exact(name) => name.clone(),
            HostName::Other => Arc::from(host),
        }
    }
}

/// Refuses upstream addresses a gateway must not dial. An unspecified address (`0.0.0.0`,
/// `::`) is never an endpoint. A loopback address (`127.0.0.0/8`, `::1`, and their
/// IPv4-mapped forms) is the gateway's own pod: for an edge gateway that is its admin port
/// and its own listeners, never an application (the operator never writes one, see
/// `operator/src/cache/networks.rs`), so one in the snapshot is refused rather than
/// dialled. A sidecar's snapshot (`sidecar: true`) is the exception: its application *is*
/// on the pod's loopback. `allow_loopback` (`--allow-loopback-upstreams`) lifts the edge
/// rule for tests and local development, where every upstream runs on the host's loopback.
pub fn check_upstream_addresses(
    snapshot: &Snapshot,
    allow_loopback: bool,
) -> Result<(), BuildError> {
    use rustronaut_contract::snapshot::UpstreamKind;
    for r in &snapshot.resources {
        let lists = std::iter::once(&r.upstreams).chain(r.rules.iter().map(|u| &u.upstreams));
        for u in lists.flatten() {
            let UpstreamKind::Service(svc) = &u.kind else {
                continue;
            };
            for a in &svc.addresses {
                let ip = match a.ip() {
                    std::net::IpAddr::V6(v6) => v6
                        .to_ipv4_mapped()
                        .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                    v4 => v4,
                };
                let reason = if ip.is_unspecified() {
                    "an unspecified address is no endpoint"
                } else if ip.is_loopback() && !snapshot.sidecar && !allow_loopback {
                    "a loopback upstream is only dialled by a sidecar (snapshot.sidecar)"
                } else {
                    continue;
                };
                return Err(BuildError::UpstreamAddress {
                    resource: format!("{}/{}", r.namespace, r.name),
                    address: *a,
                    reason,
                });
            }
        }
    }
    Ok(())
}

/// The per-listener balancers of a sidecar snapshot ([`Compiled::balancer`]): for each
/// Resource, listener and rule, the upstreams named after the listener. A Resource with a
/// single listener whose upstreams are named otherwise (a hand-written snapshot) keeps them
/// all: with one port there is nothing to confuse. With several listeners, one without an
/// upstream of its name gets no balancer, and its requests a 503, never another port's
/// application.
fn pinned_balancers(snapshot: &Snapshot) -> HashMap<(usize, usize, u16), Balancer> {
    use rustronaut_contract::snapshot::UpstreamKind;
    let mut out = HashMap::default();
    for (ri, r) in snapshot.resources.iter().enumerate() {
        let rules: Vec<(usize, &[rustronaut_contract::snapshot::Upstream], _)> =
            if r.protocol == ResourceProtocol::Http {
                r.rules
                    .iter()
                    .enumerate()
                    .map(|(ui, rule)| (ui, &rule.upstreams[..], rule.load_balancing))
                    .collect()
            } else {
                vec![(L4_RULE, &r.upstreams[..], r.load_balancing)]
            };
        for name in &r.listeners {
            let Some(listener) = snapshot.listeners.iter().find(|l| &l.name == name) else {
                continue;
            };
            for (ui, upstreams, lb) in &rules {
                let named: Vec<_> = upstreams
                    .iter()
                    .filter(|u| matches!(&u.kind, UpstreamKind::Service(s) if &s.name == name))
                    .cloned()
                    .collect();
                let chosen = if named.is_empty() && r.listeners.len() == 1 {
                    upstreams.to_vec()
                } else {
                    named
                };
                if !chosen.is_empty() {
                    out.insert((ri, *ui, listener.port), Balancer::new(&chosen, *lb));
                }
            }
        }
    }
    out
}

/// The rule index under which an L4 Resource's balancer is kept in [`Compiled::balancers`].
pub const L4_RULE: usize = usize::MAX;

impl Compiled {
    /// Parses, validates and compiles `bytes`.
    pub fn load(bytes: &[u8]) -> Result<Self, BuildError> {
        Self::build(Snapshot::load(bytes)?)
    }

    /// Compiles an already validated snapshot.
    pub fn build(snapshot: Snapshot) -> Result<Self, BuildError> {
        let policies = PolicySet::from_snapshot(&snapshot);
        let mut tenants = HashMap::default();
        for t in &snapshot.tenants {
            let mut auth = tenant_auth(t)?;
            auth.service_accounts = policies.names_service_accounts(&t.name);
            tenants.insert(t.name.clone(), auth);
        }
        let mut certs = HashMap::default();
        let mut client_verifiers = HashMap::default();
        for l in &snapshot.listeners {
            if !matches!(l.protocol, ListenerProtocol::Https | ListenerProtocol::Tcp) {
                continue;
            }
            if let Some(cc) = &l.client_certificate
                && cc.mode != ClientCertificateMode::None
            {
                let optional = cc.mode == ClientCertificateMode::Optional;
                let verifier = client_verifier(&cc.ca_pem, optional).map_err(|reason| {
                    BuildError::CaBundle {
                        what: format!("listener {}", l.name),
                        reason,
                    }
                })?;
                client_verifiers.insert(l.name.clone(), (verifier, !optional));
            }
            let Some(tls) = &l.tls else { continue };
            let mut list = Vec::new();
            for c in &tls.certificates {
                let key = certified_key(&c.certificate_chain_pem, c.private_key_pem.expose())
                    .map_err(|reason| BuildError::Certificate {
                        listener: l.name.clone(),
                        name: c.name.clone(),
                        reason,
                    })?;
                list.push((c.hostnames.clone(), key));
            }
            certs.insert(
                l.name.clone(),
                ListenerCerts {
                    certs: list,
                    min_version: tls.min_version,
                },
            );
        }
        let mut tcp_tls = HashMap::default();
        for l in &snapshot.listeners {
            if l.protocol != ListenerProtocol::Tcp {
                continue;
            }
            let Some(listener_certs) = certs.get(&l.name) else {
                continue;
            };
            let config = tcp_server_config(
                listener_certs,
                client_verifiers.get(&l.name).map(|(v, _)| v.clone()),
            )
            .map_err(|reason| BuildError::TlsConfig {
                listener: l.name.clone(),
                reason,
            })?;
            tcp_tls.insert(l.name.clone(), config);
        }
        let mut balancers = HashMap::default();
        for (ri, r) in snapshot.resources.iter().enumerate() {
            if r.protocol != ResourceProtocol::Http {
                // Site upstreams go through the tunnel hub (`--tunnel-stream`).
                balancers.insert((ri, L4_RULE), Balancer::new(&r.upstreams, r.load_balancing));
                continue;
            }
            for (ui, rule) in r.rules.iter().enumerate() {
                balancers.insert(
                    (ri, ui),
                    Balancer::new(&rule.upstreams, rule.load_balancing),
                );
            }
        }
        let pinned = if snapshot.sidecar {
            pinned_balancers(&snapshot)
        } else {
            HashMap::default()
        };
        let counts_in_flight = balancers
            .values()
            .chain(pinned.values())
            .any(Balancer::counts_in_flight);
        // Validation refused unparseable entries; were one to slip through, it trusts no one.
        let trusted_peers = TrustedPeers::parse(&snapshot.client_ip_detection.trusted_peer_cidrs)
            .unwrap_or_default();
        let hosts = HostIndex::new(snapshot.resources.iter().map(|r| &r.hostnames[..]));
        let labels = snapshot.resources.iter().map(Labels::new).collect();
        let plain_names = snapshot
            .resources
            .iter()
            .flat_map(|r| {
                [&r.namespace, &r.name]
                    .into_iter()
                    .chain(r.rules.iter().map(|rule| &rule.name))
            })
            .chain(snapshot.policies.iter().flat_map(|p| {
                [&p.namespace, &p.name]
                    .into_iter()
                    .chain(p.rules.iter().map(|rule| &rule.name))
            }))
            .all(|n| !crate::logs::needs_escaping(n));
        Ok(Self {
            trusted_peers,
            labels,
            plain_names,
            version: snapshot.content_hash(),
            policies,
            snapshot,
            tenants,
            certs,
            client_verifiers,
            balancers,
            pinned,
            counts_in_flight,
            tcp_tls,
            hosts,
        })
    }

    /// The [`Labels`] of the Resource at `index` of the snapshot.
    ///
    /// # Panics
    /// `index` is not one of the snapshot's Resources.
    pub fn labels(&self, index: usize) -> &Labels {
        &self.labels[index]
    }

    /// The balancer of `rule` ([`L4_RULE`] for an L4 Resource) of `resource` for a
    /// connection accepted on the listener port `port`.
    ///
    /// In a sidecar snapshot a Resource may protect several application ports, one
    /// listener each, and its upstreams are named after the listener they belong to
    /// (`compile/src/sidecar.rs`): a connection to listener `L` goes to the upstream named
    /// `L` and never to another port of the application, so a caller allowed on one port
    /// cannot land on another. Elsewhere, the rule's upstreams.
    pub fn balancer(&self, resource: usize, rule: usize, port: u16) -> Option<&Balancer> {
        if self.snapshot.sidecar {
            self.pinned.get(&(resource, rule, port))
        } else {
            self.balancers.get(&(resource, rule))
        }
    }

    /// Whether a Policy of any tenant names a `serviceAccount` principal: only then does
    /// the gateway fetch the cluster's ServiceAccount issuer keys.
    pub fn names_service_accounts(&self) -> bool {
        self.tenants.values().any(|t| t.service_accounts)
    }

    /// The TCP or UDP Resource attached to `listener` on `port`.
    pub fn resource_for_port(
        &self,
        protocol: ResourceProtocol,
        listener: &str,
        port: u16,
    ) -> Option<(usize, &CompiledResource)> {
        self.snapshot.resources.iter().enumerate().find(|(_, r)| {
            r.protocol == protocol
                && r.listeners.iter().any(|l| l == listener)
                && r.ports.contains(&port)
        })
    }

    /// The TLSPassthrough Resource serving `sni` on one of `listeners` (the passthrough
    /// listeners sharing a port): an exact hostname first, then the longest `*.` wildcard.
    pub fn resource_for_sni(
        &self,
        listeners: &[&str],
        sni: &str,
    ) -> Option<(usize, &CompiledResource)> {
        self.best_by_host(sni, |r| {
            r.protocol == ResourceProtocol::TlsPassthrough
                && r.listeners.iter().any(|l| listeners.contains(&l.as_str()))
        })
        .map(|(i, r, _)| (i, r))
    }

    /// The HTTP Resource attached to `listener` that serves `host` (lower-case, no port, no
    /// trailing dot): an exact hostname first, then the longest matching `*.` wildcard. In a
    /// sidecar's snapshot, then a Resource without hostnames: it serves every Host (a sidecar
    /// is called by Service name, pod IP, or any other name of its pod).
    pub fn resource_for_host(
        &self,
        listener: &str,
        host: &str,
    ) -> Option<(usize, &CompiledResource)> {
        self.route_for_host(listener, host).map(|(i, r, _)| (i, r))
    }

    /// [`Self::resource_for_host`], with how the host matched.
    pub fn route_for_host(
        &self,
        listener: &str,
        host: &str,
    ) -> Option<(usize, &CompiledResource, HostName<'_>)> {
        let on_listener = |r: &CompiledResource| {
            r.protocol == ResourceProtocol::Http && r.listeners.iter().any(|l| l == listener)
        };
        self.best_by_host(host, on_listener).or_else(|| {
            if !self.snapshot.sidecar {
                return None;
            }
            self.snapshot
                .resources
                .iter()
                .enumerate()
                .find(|(_, r)| on_listener(r) && r.hostnames.is_empty())
                .map(|(i, r)| (i, r, HostName::Other))
        })
    }

    fn best_by_host(
        &self,
        host: &str,
        eligible: impl Fn(&CompiledResource) -> bool,
    ) -> Option<(usize, &CompiledResource, HostName<'_>)> {
        let resources = &self.snapshot.resources;
        let (i, name) = self.hosts.find(host, |i| eligible(&resources[i]))?;
        Some((i, &resources[i], name))
    }
}

fn tenant_auth(t: &rustronaut_contract::snapshot::Tenant) -> Result<TenantAuth, BuildError> {
    let mut out = TenantAuth::default();
    for p in &t.identity_providers {
        match &p.kind {
            IdentityProviderKind::Jwt(j) => {
                if let Some(c) = &j.cookie_name
                    && !out.jwt_cookies.contains(c)
                {
                    out.jwt_cookies.push(c.clone());
                }
                match &j.jwks {
                    JwksSource::Inline(doc) => {
                        let err = |source| BuildError::Jwt {
                            tenant: t.name.clone(),
                            idp: p.name.clone(),
                            source,
                        };
                        let jwks = Jwks::from_value(doc).map_err(err)?;
                        let v =
                            JwtVerifier::new(JwtVerifierConfig::from_provider(&p.name, j), jwks)
                                .map_err(err)?;
                        out.jwt.push(v);
                    }
                    JwksSource::Remote(_) => out.remote_jwt.push(p.name.clone()),
                }
            }
            IdentityProviderKind::ApiKey(a) => {
                let verifier = ApiKeyVerifier::from_provider(&p.name, a).map_err(|source| {
                    BuildError::ApiKey {
                        tenant: t.name.clone(),
                        idp: p.name.clone(),
                        source,
                    }
                })?;
                if verifier.unindexed() > 0 {
                    tracing::warn!(
                        tenant = %t.name,
                        idp = %p.name,
                        unindexed = verifier.unindexed(),
                        "API-key hashes without a lookup tag: each is computed for every presented key; print them again with `rustronaut apikey hash` to index them"
                    );
                }
                out.api_keys.push(ApiKeyProvider {
                    header: a.header.to_ascii_lowercase(),
                    verifier,
                });
            }
            IdentityProviderKind::ClientCertificate(c) => {
                let verifier =
                    client_verifier(&c.ca_pem, false).map_err(|reason| BuildError::CaBundle {
                        what: format!("tenant {} provider {}", t.name, p.name),
                        reason,
                    })?;
                out.certs.push(CertProvider {
                    idp: p.name.clone(),
                    verifier,
                });
            }
            // OIDC login is served by crate::oidc from the snapshot's provider settings;
            // what it needs compiled is the tenant's session keys, below.
            IdentityProviderKind::Oidc(_) => {}
        }
    }
    out.session = crate::session::TenantKeys::new(&t.name, &t.session)?;
    Ok(out)
}

/// A rustls client-certificate verifier rooted at the certificates of `ca_pem`; with
/// `optional`, clients without a certificate are let through the handshake (a presented but
/// invalid one still fails it).
pub fn client_verifier(
    ca_pem: &str,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no CA certificate".into());
    }
    let builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    );
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| e.to_string())
}

/// The rustls configuration of a TLS-terminating TCP listener: its certificates by SNI,
/// its client-certificate verifier (if any), the listener's minimum version enforced in
/// the handshake itself (there is no request phase to refuse in later, unlike HTTPS).
fn tcp_server_config(
    certs: &ListenerCerts,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match certs.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .map_err(|e| e.to_string())?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let resolver = StaticSni(ListenerCerts {
        certs: certs.certs.clone(),
        min_version: certs.min_version,
    });
    Ok(Arc::new(builder.with_cert_resolver(Arc::new(resolver))))
}

/// SNI selection over one snapshot's certificates (the snapshot owns the configuration,
/// so no store lookup is needed, unlike the HTTPS listeners' [`crate::tls::SniResolver`]).
#[derive(Debug)]
struct StaticSni(ListenerCerts);

impl rustls::server::ResolvesServerCert for StaticSni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.select(hello.server_name())
    }
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("certificate chain holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| format!("key does not match certificate: {e}"))?;
    Ok(Arc::new(ck))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn wildcard_certificate_covers_exactly_one_label() {
        assert!(wildcard_covers_one_label(
            "*.acme.example",
            "app.acme.example"
        ));
        assert!(!wildcard_covers_one_label(
            "*.acme.example",
            "a.b.acme.example"
        ));
        assert!(!wildcard_covers_one_label("*.acme.example", "acme.example"));
        assert!(!wildcard_covers_one_label(
            "*.acme.example",
            "xacme.example"
        ));
    }

    fn with_upstream(address: &str, sidecar: bool) -> Snapshot {
        let hostnames: Vec<&str> = if sidecar {
            vec![]
        } else {
            vec!["payments.shop.test"]
        };
        let v = serde_json::json!({
            "schemaVersion": 1,
            "gateway": {"namespace": "shop", "name": "payments"},
            "sidecar": sidecar,
            "listeners": [{"name": "http-8080", "port": 15006, "protocol": "HTTP"}],
            "tenants": [{"name": "acme", "domains": [], "identityProviders": []}],
            "resources": [{
                "namespace": "shop", "name": "payments", "tenant": "acme", "protocol": "HTTP",
                "listeners": ["http-8080"], "hostnames": hostnames,
                "rules": [{"name": "all", "upstreams": [{"kind": {"service": {
                    "name": "payments", "port": 8080, "addresses": [address]}}}]}]
            }],
        });
        Snapshot::load(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    #[test]
    fn requests_are_counted_in_flight_only_for_a_least_connections_rule() {
        let plain = with_upstream("10.0.0.1:80", false);
        assert!(!Compiled::build(plain.clone()).unwrap().counts_in_flight);
        let mut v = serde_json::to_value(&plain).unwrap();
        v["resources"][0]["rules"][0]["loadBalancing"] =
            serde_json::json!({"type": "LeastConnections"});
        let least = Snapshot::load(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(Compiled::build(least).unwrap().counts_in_flight);
    }

    /// The decision line copies a snapshot's names unchecked only when none of them needs
    /// escaping; one name that does (a hand-written snapshot) turns that off for all.
    #[test]
    fn names_are_plain_only_when_none_needs_escaping() {
        let mut plain = serde_json::to_value(with_upstream("10.0.0.1:80", false)).unwrap();
        plain["policies"] = serde_json::json!([{
            "namespace": "shop", "name": "payers", "tenant": "acme", "action": "Allow",
            "targets": [{"resource": {"namespace": "shop", "name": "payments"}}],
            "rules": [{"name": "sre", "from": [{"user": {"groups": ["sre"]}}]}]
        }]);
        let plain = Snapshot::load(&serde_json::to_vec(&plain).unwrap()).unwrap();
        assert!(Compiled::build(plain.clone()).unwrap().plain_names);
        // Each case renames in place (a Resource's name also in the Policy's target).
        let rule = &[&["resources", "0", "rules", "0", "name"][..]][..];
        let resource = &[
            &["resources", "0", "name"][..],
            &["policies", "0", "targets", "0", "resource", "name"][..],
        ][..];
        let policy_rule = &[&["policies", "0", "rules", "0", "name"][..]][..];
        let policy = &[&["policies", "0", "name"][..]][..];
        for (paths, name) in [
            (rule, "a\"b"),
            (resource, "app\\"),
            (policy_rule, "r\nule"),
            (policy, "p\u{1}"),
        ] {
            let mut v = serde_json::to_value(&plain).unwrap();
            for path in paths {
                let mut at = &mut v;
                for p in *path {
                    at = match p.parse::<usize>() {
                        Ok(i) => &mut at[i],
                        Err(_) => &mut at[*p],
                    };
                }
                assert!(at.is_string(), "{path:?}");
                *at = serde_json::json!(name);
            }
            let s = Snapshot::load(&serde_json::to_vec(&v).unwrap()).unwrap();
            assert!(!Compiled::build(s).unwrap().plain_names, "{paths:?}");
        }
    }

    /// A sidecar protecting two ports of one application, as compile/src/sidecar.rs
    /// writes it: one listener per port, one loopback upstream per listener, named after it.
    fn two_ports(protocol: &str, sidecar: bool) -> Compiled {
        let http = protocol == "HTTP";
        let upstream = |listener: &str, port: u16| {
            serde_json::json!({"kind": {"service": {"name": listener, "port": port,
                "addresses": [format!("127.0.0.1:{port}")]}}})
        };
        let ups = [upstream("port-15080", 8080), upstream("port-15081", 9090)];
        let mut r = serde_json::json!({
            "namespace": "shop", "name": "payments", "tenant": "acme", "protocol": protocol,
            "listeners": ["port-15080", "port-15081"],
        });
        if http {
            r["hostnames"] = serde_json::json!(if sidecar { vec![] } else { vec!["p.shop.test"] });
            r["rules"] = serde_json::json!([{"name": "all", "upstreams": ups}]);
        } else {
            r["ports"] = serde_json::json!([15080, 15081]);
            r["upstreams"] = serde_json::json!(ups);
        }
        let v = serde_json::json!({
            "schemaVersion": 1,
            "gateway": {"namespace": "shop", "name": "payments"},
            "sidecar": sidecar,
            "listeners": [{"name": "port-15080", "port": 15080, "protocol": protocol},
                          {"name": "port-15081", "port": 15081, "protocol": protocol}],
            "tenants": [{"name": "acme", "domains": [], "identityProviders": []}],
            "resources": [r],
        });
        Compiled::build(Snapshot::load(&serde_json::to_vec(&v).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn a_sidecar_listener_reaches_only_its_own_application_port() {
        for (protocol, rule) in [("HTTP", 0), ("TCP", L4_RULE)] {
            let c = two_ports(protocol, true);
            let reached = |port: u16| -> Vec<SocketAddr> {
                c.balancer(0, rule, port)
                    .unwrap_or_else(|| panic!("{protocol}: no balancer for {port}"))
                    .addresses()
                    .collect()
            };
            assert_eq!(
                reached(15080),
                ["127.0.0.1:8080".parse().unwrap()],
                "{protocol}"
            );
            assert_eq!(
                reached(15081),
                ["127.0.0.1:9090".parse().unwrap()],
                "{protocol}"
            );
            assert!(
                c.balancer(0, rule, 15082).is_none(),
                "{protocol}: not a listener"
            );
        }
        // An edge snapshot keeps the rule's upstreams whatever the listener.
        let edge = two_ports("HTTP", false);
        assert_eq!(edge.balancer(0, 0, 15080).unwrap().addresses().count(), 2);
    }

    #[test]
    fn a_single_port_sidecar_keeps_upstreams_named_otherwise() {
        let c = Compiled::build(with_upstream("127.0.0.1:8080", true)).unwrap();
        let addrs: Vec<SocketAddr> = c.balancer(0, 0, 15006).unwrap().addresses().collect();
        assert_eq!(addrs, ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn loopback_upstreams_only_in_sidecar_snapshots() {
        let refused = |addr: &str, sidecar: bool, allow: bool| match check_upstream_addresses(
            &with_upstream(addr, sidecar),
            allow,
        ) {
            Ok(()) => None,
            Err(e) => {
                assert_eq!(e.kind(), "upstream_address");
                Some(e.to_string())
            }
        };
        for a in [
            "127.0.0.1:8080",
            "127.0.0.53:53",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
        ] {
            let err = refused(a, false, false).unwrap_or_else(|| panic!("edge {a} accepted"));
            assert!(
                err.contains("shop/payments") && err.contains("sidecar"),
                "{err}"
            );
            assert_eq!(refused(a, true, false), None, "sidecar {a}");
            assert_eq!(
                refused(a, false, true),
                None,
                "--allow-loopback-upstreams {a}"
            );
        }
        for a in ["0.0.0.0:8080", "[::]:8080", "[::ffff:0.0.0.0]:80"] {
            for (sidecar, allow) in [(false, false), (true, false), (false, true), (true, true)] {
                let err = refused(a, sidecar, allow).expect("unspecified accepted");
                assert!(err.contains("unspecified"), "{err}");
            }
        }
        assert_eq!(refused("10.0.0.5:8080", false, false), None);
        assert_eq!(refused("10.0.0.5:8080", true, false), None);
    }

    /// The index finds what comparing the host with every hostname of every eligible
    /// Resource found (the scan it replaced, kept here as the reference): exact names before
    /// wildcards, the longest wildcard suffix, snapshot order between equals, no case, and
    /// ineligible Resources skipped, over hosts that match, nearly match and do not.
    #[test]
    fn the_host_index_finds_what_the_scan_over_every_resource_found() {
        fn scan(
            resources: &[Vec<String>],
            host: &str,
            eligible: &dyn Fn(usize) -> bool,
        ) -> Option<usize> {
            let mut best: Option<(usize, usize)> = None;
            for (i, names) in resources.iter().enumerate().filter(|(i, _)| eligible(*i)) {
                for h in names {
                    let score = if h.eq_ignore_ascii_case(host) {
                        usize::MAX
                    } else if let Some(suffix) = h.strip_prefix("*.") {
                        if !covers_labels(suffix, host) {
                            continue;
                        }
                        suffix.len()
                    } else {
                        continue;
                    };
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                }
            }
            best.map(|(_, i)| i)
        }
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let resources = vec![
            names(&["shop.example.com", "*.example.com"]),
            names(&["*.shop.example.com"]),
            names(&["Shop.Example.com", "api.example.com"]),
            names(&["*.EXAMPLE.com", "*.com"]),
            names(&["*.a.b.c.d", "x.a.b.c.d", "x.a.b.c.d"]),
            names(&[]),
            names(&["*.shop.example.com", "10.0.0.1"]),
        ];
        let index = HostIndex::new(resources.iter().map(|r| &r[..]));
        let hosts = [
            "shop.example.com",
            "SHOP.example.COM",
            "api.example.com",
            "a.shop.example.com",
            "a.b.shop.example.com",
            "example.com",
            "x.example.com",
            "other.com",
            "com",
            ".example.com",
            "..example.com",
            "a..example.com",
            "x.a.b.c.d",
            "y.x.a.b.c.d",
            "a.b.c.d",
            "10.0.0.1",
            "10.0.0.2",
            "",
            ".",
            "shop.example.com.",
        ];
        let eligibility: [&dyn Fn(usize) -> bool; 4] =
            [&|_| true, &|i| i % 2 == 1, &|i| i != 0 && i != 2, &|_| {
                false
            }];
        let mut found = 0;
        for host in hosts {
            for eligible in eligibility {
                let want = scan(&resources, host, eligible);
                let got = index.find(host, eligible);
                assert_eq!(got.map(|(i, _)| i), want, "{host:?}");
                // An exact match hands out the snapshot's name, which is the host's.
                if let Some((_, HostName::Exact(name))) = got {
                    assert_eq!(**name, host.to_ascii_lowercase(), "{host:?}");
                }
                found += usize::from(want.is_some());
            }
        }
        assert!(found > 30, "{found}");
        let exact = |host| match index.find(host, |_| true) {
            Some((_, HostName::Exact(name))) => Some(name.to_string()),
            _ => None,
        };
        assert_eq!(exact("api.example.com").as_deref(), Some("api.example.com"));
        assert_eq!(
            exact("SHOP.example.COM").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(exact("x.example.com"), None, "a wildcard's match");
        let shared = |host: &str| {
            let (_, name) = index.find(host, |_| true).unwrap();
            name.shared(&host.to_ascii_lowercase())
        };
        assert_eq!(&*shared("api.example.com"), "api.example.com");
        assert_eq!(&*shared("x.example.com"), "x.example.com");
    }

    #[test]
    fn a_sidecar_resource_without_hostnames_serves_every_host_on_its_listener() {
        let c = Compiled::build(with_upstream("127.0.0.1:8080", true)).unwrap();
        for host in ["payments", "payments.shop.svc.cluster.local", "10.1.2.3"] {
            let (i, r) = c.resource_for_host("http-8080", host).expect(host);
            assert_eq!((i, r.name.as_str()), (0, "payments"));
        }
        assert!(c.resource_for_host("other", "payments").is_none());
        // An edge snapshot needs hostnames, and routes by them only.
        let mut edge = serde_json::to_value(with_upstream("10.0.0.5:80", true)).unwrap();
        edge["sidecar"] = serde_json::json!(false);
        let err = Snapshot::load(&serde_json::to_vec(&edge).unwrap()).unwrap_err();
        assert!(err.to_string().contains("hostnames"), "{err}");
        let c = Compiled::build(with_upstream("10.0.0.5:80", false)).unwrap();
        assert!(
            c.resource_for_host("http-8080", "payments.shop.test")
                .is_some()
        );
        assert!(c.resource_for_host("http-8080", "payments").is_none());
    }
}

//! One Gateway's whole [`Snapshot`]: what the operator writes to `<gateway>-snapshot` and the
//! gateway pods load.
//!
//! ```text
//!  World + Gateway + GatewayInputs (TLS Secrets, Service endpoints, identity-provider Secrets)
//!    1. listeners          Gateway.spec.listeners, certificates from `inputs.tls`
//!    2. admitted tenants   Gateway.spec.tenants: Same | All | Selector
//!    3. resources          every Resource whose gatewayRefs name this Gateway, within its
//!                          tenant's quota (crate::quota), of an admitted tenant, hostnames inside the tenant's held domains, on a fitting
//!                          listener; Service upstreams resolved through `inputs.endpoints`
//!    4. tenants            identity providers with their Secret material (missing: dropped),
//!                          session signing keys from `inputs.session_keys` (crate::session)
//!    5. policies           of those tenants, targets narrowed to the resources of this gateway
//!    6. tunnel             sites with public keys (the spec's or generated ones from
//!                          `inputs.site_keys`), addresses in the pool (crate::tunnel);
//!                          allowed targets from the resources' upstreams
//!    7. validate           Snapshot::validate(); a problem inside one Resource, Policy or
//!                          identity provider quarantines that object and the build goes on
//! ```
//!
//! Failure policy, the heart of this module:
//! - **Per object, fail closed.** A Resource that may not attach, or is broken, is *left out*
//!   (not served, so unreachable). A Policy that cannot be resolved stays in the snapshot
//!   marked `unresolved`, which the evaluator treats as fail-closed (an Allow allows nothing,
//!   a Deny denies everything it targets); it is never dropped, because dropping a Deny would
//!   widen access. An identity provider whose Secret is missing is left out and the Policies
//!   naming it become unresolved. Each case is a [`Problem`] for the object's status.
//! - **Per gateway, keep the last good.** What the whole gateway depends on (a listener's TLS
//!   certificate, a Required client-certificate listener without any CA) is a [`BuildError`]:
//!   no snapshot is produced, and the operator leaves the previous one serving.
//!
//! Pure: no Kubernetes client; the operator gathers the inputs from its reflectors.

use crate::convert::{self, SecretSource};
use crate::quota::{OverQuota, over_quota};
use crate::world::World;
use kube::ResourceExt;
use rustronaut_contract::identity::cert::{certificate_identity, parse_pem_certificates};
use rustronaut_contract::policy::{CompiledPolicy, Principal};
use rustronaut_contract::snapshot::{self as cs, ObjectRef, Snapshot, ValidationError};
use rustronaut_crds::conditions::reasons;
use rustronaut_crds::gateway as g;
use rustronaut_crds::resource::{GatewayRef, Protocol};
use rustronaut_crds::tenancy::{Claims, ResourceIndex, policy_targets, selector_matches};
use rustronaut_crds::validate::hostname_within;
use rustronaut_crds::{Gateway, Resource};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// A certificate chain and its private key, as read from a kubernetes.io/tls Secret
/// (`tls.crt`, `tls.key`).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsKeyPair {
    /// PEM certificate chain, leaf first.
    pub certificate_chain_pem: String,
    /// PEM private key.
    pub private_key_pem: String,
}

impl std::fmt::Debug for TlsKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsKeyPair")
            .field("certificate_chain_pem", &self.certificate_chain_pem)
            .field("private_key_pem", &"[redacted]")
            .finish()
    }
}

/// A port of a Service: the key of resolved endpoints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// The Service port (what Resources name), not the target port.
    pub port: u16,
}

impl ServicePort {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, port: u16) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            port,
        }
    }
}

/// What a build needs from outside the rustronaut.io objects.
pub struct GatewayInputs<'a> {
    /// TLS Secrets by `namespace/name`.
    pub tls: BTreeMap<ObjectRef, TlsKeyPair>,
    /// Ready endpoints of Service ports (`ip:targetPort`). Absent: no ready endpoint known.
    pub endpoints: BTreeMap<ServicePort, Vec<SocketAddr>>,
    /// Identity-provider Secrets (OIDC client secrets, CA bundles, API-key hashes, JWKS).
    pub secrets: &'a dyn SecretSource,
    /// Public keys the operator generated for tunnel sites without `publicKey` (site name ->
    /// base64 key, from the `<gateway>-site-<name>` Secrets). A key in the spec always wins;
    /// a site with neither is left out of the tunnel until its key exists.
    pub site_keys: BTreeMap<String, String>,
    /// The data of each tenant's session key Secret (`<gateway>-session-<tenant>`), by
    /// tenant name, entry name -> raw bytes, as the operator created or read it. Only tenants
    /// with an OIDC provider get keys (crate::session); a tenant without an entry here has
    /// none, and OIDC browser login fails closed for it.
    pub session_keys: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// What happened to an object that has a [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impact {
    /// Not in the snapshot: a Resource that is not served, an identity provider nobody can
    /// authenticate with.
    LeftOut,
    /// In the snapshot but unresolved: a Policy that fails closed.
    FailsClosed,
    /// In the snapshot and working, with something missing (an upstream without endpoints,
    /// a site without a key).
    Degraded,
}

/// A problem with one object, for its status conditions and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Resource`, `Policy`, `Tenant` or `Gateway`.
    pub kind: &'static str,
    /// The object (`namespace` empty for a Tenant).
    pub object: ObjectRef,
    /// Condition reason, a constant of [`reasons`].
    pub reason: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// What the build did about it.
    pub impact: Impact,
}

impl Problem {
    /// Whether this is a problem of the object `kind` `namespace/name`.
    pub fn is_of(&self, kind: &str, namespace: &str, name: &str) -> bool {
        self.kind == kind && self.object.namespace == namespace && self.object.name == name
    }
}

/// Why no snapshot could be built for a Gateway. The operator keeps the last good snapshot.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A listener's certificate Secret is not there.
    #[error("listener {listener}: TLS Secret {secret} not found")]
    CertificateNotFound {
        /// Listener name.
        listener: String,
        /// The Secret.
        secret: ObjectRef,
    },
    /// A listener's certificate Secret holds no usable certificate or key.
    #[error("listener {listener}: TLS Secret {secret} is invalid: {message}")]
    InvalidCertificate {
        /// Listener name.
        listener: String,
        /// The Secret.
        secret: ObjectRef,
        /// What is wrong.
        message: String,
    },
    /// A listener field the snapshot cannot carry.
    #[error("listener {listener}: {message}")]
    InvalidListener {
        /// Listener name.
        listener: String,
        /// What is wrong.
        message: String,
    },
    /// The snapshot fails validation in a way no single object explains (conflicting
    /// listeners, a bad tunnel): the Gateway itself must change.
    #[error("the gateway configuration is invalid: {}", join(.0))]
    Invalid(Vec<ValidationError>),
    /// The Gateway is beyond its tenant's `quotas.gateways`: it gets no snapshot and no
    /// workload.
    #[error("{0}")]
    QuotaExceeded(String),
}

fn join(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl BuildError {
    /// The listener at fault, when the error is about one.
    pub fn listener(&self) -> Option<&str> {
        match self {
            Self::CertificateNotFound { listener, .. }
            | Self::InvalidCertificate { listener, .. }
            | Self::InvalidListener { listener, .. } => Some(listener),
            Self::Invalid(_) | Self::QuotaExceeded(_) => None,
        }
    }

    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CertificateNotFound { .. } | Self::InvalidCertificate { .. } => {
                reasons::INVALID_CERTIFICATE_REF
            }
            Self::InvalidListener { .. } | Self::Invalid(_) => reasons::INVALID_PARAMETERS,
            Self::QuotaExceeded(_) => reasons::QUOTA_EXCEEDED,
        }
    }
}

/// A successful build.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// The snapshot; it passes [`Snapshot::validate`].
    pub snapshot: Snapshot,
    /// Problems of individual objects (the snapshot was built without them, or with them
    /// failing closed).
    pub problems: Vec<Problem>,
    /// Listener name -> number of Resources attached to it.
    pub attached: BTreeMap<String, usize>,
    /// Listener name -> why it cannot complete TLS handshakes yet: cert-manager has not
    /// issued its certificate (`tls.issuerRef`, the Secret not there yet).
    pub pending: BTreeMap<String, String>,
}

/// Whether `secret` is the one cert-manager issues `listener`'s certificate into
/// (`tls.issuerRef` set, `certificateRefs[0]`).
fn issued_into(listener: &g::Listener, secret: &ObjectRef) -> bool {
    listener.tls.as_ref().is_some_and(|t| {
        t.issuer_ref.is_some()
            && t.certificate_refs
                .first()
                .is_some_and(|r| r.name == secret.name)
    })
}

impl BuildOutcome {
    /// The problems of one object.
    pub fn problems_of<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Problem> + 'a {
        self.problems
            .iter()
            .filter(move |p| p.is_of(kind, namespace, name))
    }
}

/// Whether `resource` names `gateway` (namespace defaults to the Resource's own).
pub fn refs_gateway<'a>(
    resource: &'a Resource,
    gateway: &'a ObjectRef,
) -> impl Iterator<Item = &'a GatewayRef> + 'a {
    let res_ns = resource.namespace().unwrap_or_default();
    resource.spec.gateway_refs.iter().filter(move |r| {
        r.name == gateway.name && r.namespace.as_deref().unwrap_or(&res_ns) == gateway.namespace
    })
}

/// The tenants `gateway` admits (Gateway.spec.tenants).
pub fn admitted_tenants(world: &World, gateway: &Gateway, claims: &Claims) -> BTreeSet<String> {
    world
        .tenants
        .iter()
        .filter(|t| admits(gateway, t, claims))
        .map(|t| t.name_any())
        .collect()
}

/// Whether `gateway`'s `spec.tenants` admits `tenant`: Same, the tenant holding the Gateway's
/// namespace; All, any; Selector, Tenants whose labels match (none without a selector, which
/// the CRD requires).
pub fn admits(gateway: &Gateway, tenant: &rustronaut_crds::Tenant, claims: &Claims) -> bool {
    match gateway.spec.tenants.from {
        g::TenantsFrom::Same => {
            let ns = gateway.namespace().unwrap_or_default();
            claims.tenant_of(&ns) == Some(tenant.name_any().as_str())
        }
        g::TenantsFrom::All => true,
        g::TenantsFrom::Selector => gateway
            .spec
            .tenants
            .selector
            .as_ref()
            .is_some_and(|sel| selector_matches(sel, tenant.labels())),
    }
}

/// Which identity providers of `t` lack Secret material (a missing Secret or key, a CA
/// bundle without certificates), with a message each: such a provider is left out of every
/// snapshot, and the Tenant's `ResolvedRefs` condition names it.
pub fn missing_idp_secrets(
    t: &rustronaut_crds::Tenant,
    secrets: &dyn SecretSource,
) -> BTreeMap<String, String> {
    let ns = t.spec.admin_namespace().unwrap_or_default();
    let describe = |name: &str, key: Option<&str>| match (secrets.data(ns, name), key) {
        (Some(_), Some(key)) => format!("Secret {ns}/{name} has no key {key}"),
        _ => format!("Secret {ns}/{name} not found"),
    };
    let need = |name: &str, key: &str| -> Result<String, String> {
        secrets
            .get(ns, name, key)
            .ok_or_else(|| describe(name, Some(key)))
    };
    let mut out = BTreeMap::new();
    for idp in &t.spec.identity_providers {
        let result: Result<(), String> = (|| {
            if let Some(o) = &idp.oidc {
                let r = &o.client_secret_ref;
                need(&r.name, r.key.as_deref().unwrap_or("clientSecret"))?;
            }
            if let Some(r) = idp.jwt.as_ref().and_then(|j| j.jwks_secret_ref.as_ref()) {
                need(&r.name, r.key.as_deref().unwrap_or("jwks.json"))?;
            }
            if let Some(c) = &idp.client_certificate {
                for r in &c.ca_certificate_refs {
                    let key = r.key.as_deref().unwrap_or("ca.crt");
                    let pem = need(&r.name, key)?;
                    match parse_pem_certificates(&pem) {
                        Ok(certs) if !certs.is_empty() => {}
                        Ok(_) => {
                            return Err(format!(
                                "Secret {ns}/{} key {key} holds no certificate",
                                r.name
                            ));
                        }
                        Err(e) => {
                            return Err(format!("Secret {ns}/{} key {key}: {e}", r.name));
                        }
                    }
                }
            }
            if let Some(a) = &idp.api_key {
                for r in &a.secret_refs {
                    if secrets.data(ns, &r.name).is_none() {
                        return Err(describe(&r.name, None));
                    }
                }
            }
            Ok(())
        })();
        if let Err(message) = result {
            out.insert(idp.name.clone(), message);
        }
    }
    out
}

/// The state of one build. Shared with [`crate::sidecar`], whose builds have no Gateway
/// (`gateway` None: no tunnel, no listener client certificates) and name the sidecar
/// Resource in `gw`.
pub(crate) struct Builder<'a> {
    pub(crate) world: &'a World,
    pub(crate) gateway: Option<&'a Gateway>,
    pub(crate) gw: ObjectRef,
    /// What session key Secrets are named after (`<this>-session-<tenant>`): the Gateway's
    /// name, or a sidecar Resource's snapshot Secret name (a Gateway of the same name as a
    /// sidecar Resource must not share its key Secrets).
    pub(crate) session_owner: String,
    pub(crate) inputs: &'a GatewayInputs<'a>,
    pub(crate) claims: Claims,
    pub(crate) over: OverQuota,
    pub(crate) problems: Vec<Problem>,
}

/// Builds the snapshot of `gateway`. See the module documentation for what is left out,
/// what fails closed and what fails the whole build.
pub fn gateway_snapshot(
    world: &World,
    gateway: &Gateway,
    inputs: &GatewayInputs<'_>,
) -> Result<BuildOutcome, BuildError> {
    let gw = ObjectRef::new(gateway.namespace().unwrap_or_default(), gateway.name_any());
    let mut b = Builder {
        world,
        gateway: Some(gateway),
        session_owner: gw.name.clone(),
        gw,
        inputs,
        claims: world.claims(),
        over: OverQuota::default(),
        problems: Vec::new(),
    };
    b.over = over_quota(world, &b.claims);
    if let Some(message) = b.over.gateways.get(&b.gw) {
        return Err(BuildError::QuotaExceeded(message.clone()));
    }
    let mut snapshot = Snapshot::new(b.gw.clone());
    if let Some(c) = &gateway.spec.client_ip_detection {
        snapshot.client_ip_detection = cs::ClientIpDetection {
            proxy_protocol: c.proxy_protocol,
            trusted_hops: u32::try_from(c.trusted_hops).unwrap_or(0),
            trusted_peer_cidrs: c.trusted_peer_cidrs.clone(),
        };
    }
    // A listener whose certificate cert-manager has yet to issue is bound without it
    // (`certificatesPending`; its handshakes fail until a later snapshot brings it, with no
    // restart); any other certificate problem fails the build (the last good snapshot stays).
    let mut pending = BTreeMap::new();
    for l in &gateway.spec.listeners {
        let (built, waiting) = b.listener(l)?;
        if let Some(secret) = waiting {
            let message = format!(
                "waiting for cert-manager to issue its certificate into Secret {secret} (kubectl describe certificate -n {} {})",
                secret.namespace, secret.name
            );
            b.gateway_problem(
                reasons::CERTIFICATE_PENDING,
                format!("listener {}: {message}", l.name),
            );
            pending.insert(l.name.clone(), message);
        }
        snapshot.listeners.push(built);
    }
    let admitted = admitted_tenants(world, gateway, &b.claims);
    if gateway.spec.tenants.from == g::TenantsFrom::Same && admitted.is_empty() {
        b.gateway_problem(
            reasons::NO_TENANT,
            format!(
                "tenants.from is Same but namespace {} belongs to no Tenant, so no Resource can attach",
                b.gw.namespace
            ),
        );
    }
    snapshot.resources = b.resources(&snapshot.listeners, &admitted);
    let used: BTreeSet<&str> = snapshot
        .resources
        .iter()
        .map(|r| r.tenant.as_str())
        .collect();
    let mut dropped_idps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for name in used {
        if let Some(t) = b.tenant(name, &mut dropped_idps) {
            snapshot.tenants.push(t);
        }
    }
    b.client_certificates(&mut snapshot)?;
    snapshot.policies = b.policies(&snapshot.resources, &dropped_idps);
    b.settle(&mut snapshot, &|_| false)?;
    let mut attached: BTreeMap<String, usize> = snapshot
        .listeners
        .iter()
        .map(|l| (l.name.clone(), 0))
        .collect();
    for r in &snapshot.resources {
        for l in &r.listeners {
            *attached.entry(l.clone()).or_default() += 1;
        }
    }
    Ok(BuildOutcome {
        snapshot,
        problems: b.problems,
        attached,
        pending,
    })
}

fn listener_protocol(p: g::ListenerProtocol) -> cs::ListenerProtocol {
    match p {
        g::ListenerProtocol::Http => cs::ListenerProtocol::Http,
        g::ListenerProtocol::Https => cs::ListenerProtocol::Https,
        g::ListenerProtocol::TlsPassthrough => cs::ListenerProtocol::TlsPassthrough,
        g::ListenerProtocol::Tcp => cs::ListenerProtocol::Tcp,
        g::ListenerProtocol::Udp => cs::ListenerProtocol::Udp,
    }
}

fn resource_protocol(p: Protocol) -> cs::ResourceProtocol {
    match p {
        Protocol::Http => cs::ResourceProtocol::Http,
        Protocol::TlsPassthrough => cs::ResourceProtocol::TlsPassthrough,
        Protocol::Tcp => cs::ResourceProtocol::Tcp,
        Protocol::Udp => cs::ResourceProtocol::Udp,
    }
}

/// Identity-provider names a compiled policy refers to.
fn policy_idps(p: &CompiledPolicy) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    for rule in &p.rules {
        for pr in rule.from.iter().chain(&rule.require).chain(&rule.exclude) {
            let idp = match pr {
                Principal::User(u) => u.idp.as_deref(),
                Principal::ClientCertificate(c) => c.idp.as_deref(),
                Principal::ApiKey(a) => a.idp.as_deref(),
                _ => None,
            };
            out.extend(idp);
        }
    }
    out
}

/// `resources[3].rules[0]` -> `("resources", 3)`.
fn top_index(path: &str) -> Option<(&str, usize)> {
    let (list, rest) = path.split_once('[')?;
    let (idx, _) = rest.split_once(']')?;
    Some((list, idx.parse().ok()?))
}

/// The indices of the Resources whose site upstreams produced the tunnel's allowed target at
/// `path` (`tunnel.sites[i].allowedTargets[j]...`); empty when the path names no target.
fn target_sources(s: &Snapshot, path: &str) -> Vec<usize> {
    let Some(("tunnel.sites", i)) = top_index(path) else {
        return Vec::new();
    };
    let rest = path.split_once("].").map_or("", |(_, r)| r);
    let Some(("allowedTargets", j)) = top_index(rest) else {
        return Vec::new();
    };
    let Some(site) = s.tunnel.as_ref().and_then(|t| t.sites.get(i)) else {
        return Vec::new();
    };
    let Some(target) = site.allowed_targets.get(j) else {
        return Vec::new();
    };
    let udp = target.protocol == cs::TransportProtocol::Udp;
    s.resources
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.tenant == site.tenant && (r.protocol == cs::ResourceProtocol::Udp) == udp
        })
        .filter(|(_, r)| {
            r.upstreams
                .iter()
                .chain(r.rules.iter().flat_map(|x| &x.upstreams))
                .any(|u| {
                    matches!(&u.kind, cs::UpstreamKind::Site(su)
                        if su.site == site.name && su.host == target.host)
                })
        })
        .map(|(i, _)| i)
        .collect()
}

impl Builder<'_> {
    /// The spec of the Gateway being built (None for a sidecar build).
    fn spec(&self) -> Option<&g::GatewaySpec> {
        self.gateway.map(|g| &g.spec)
    }

    pub(crate) fn problem(
        &mut self,
        kind: &'static str,
        object: ObjectRef,
        reason: &'static str,
        message: String,
        impact: Impact,
    ) {
        self.problems.push(Problem {
            kind,
            object,
            reason,
            message,
            impact,
        });
    }

    fn gateway_problem(&mut self, reason: &'static str, message: String) {
        let gw = self.gw.clone();
        self.problem("Gateway", gw, reason, message, Impact::Degraded);
    }

    /// The listener, and the Secret cert-manager has yet to issue its certificate into, if
    /// that is why one is missing.
    fn listener(&self, l: &g::Listener) -> Result<(cs::Listener, Option<ObjectRef>), BuildError> {
        let port = u16::try_from(l.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| BuildError::InvalidListener {
                listener: l.name.clone(),
                message: format!("port {} is not 1-65535", l.port),
            })?;
        let mut waiting = None;
        let tls = match &l.tls {
            None => None,
            Some(tls) => {
                let mut certificates = Vec::new();
                for r in &tls.certificate_refs {
                    let secret = ObjectRef::new(&self.gw.namespace, &r.name);
                    let Some(pair) = self.inputs.tls.get(&secret) else {
                        if issued_into(l, &secret) {
                            waiting = Some(secret);
                            continue;
                        }
                        return Err(BuildError::CertificateNotFound {
                            listener: l.name.clone(),
                            secret,
                        });
                    };
                    let invalid = |message: String| BuildError::InvalidCertificate {
                        listener: l.name.clone(),
                        secret: secret.clone(),
                        message,
                    };
                    let ders = parse_pem_certificates(&pair.certificate_chain_pem)
                        .map_err(|e| invalid(format!("tls.crt: {e}")))?;
                    let leaf = ders
                        .first()
                        .ok_or_else(|| invalid("tls.crt holds no certificate".into()))?;
                    let hostnames = certificate_identity("", leaf)
                        .map_err(|e| invalid(format!("tls.crt: {e}")))?
                        .san_dns_names;
                    if !pair.private_key_pem.contains("-----BEGIN ")
                        || !pair.private_key_pem.contains("PRIVATE KEY-----")
                    {
                        return Err(invalid("tls.key holds no PEM private key".into()));
                    }
                    certificates.push(cs::TlsCertificate {
                        name: r.name.clone(),
                        hostnames,
                        certificate_chain_pem: pair.certificate_chain_pem.clone(),
                        private_key_pem: cs::Sensitive::new(pair.private_key_pem.clone()),
                    });
                }
                Some(cs::ListenerTls {
                    certificates,
                    min_version: match tls.min_version {
                        g::TlsVersion::V1_2 => cs::TlsVersion::V1_2,
                        g::TlsVersion::V1_3 => cs::TlsVersion::V1_3,
                    },
                    certificates_pending: waiting.is_some(),
                })
            }
        };
        let listener = cs::Listener {
            name: l.name.clone(),
            port,
            protocol: listener_protocol(l.protocol),
            hostname: l.hostname.clone(),
            tls,
            // Filled by `client_certificates` once the tenants (and their CAs) are known.
            client_certificate: None,
        };
        Ok((listener, waiting))
    }

    /// The listeners `res` attaches to through `refs`, or why it cannot attach.
    fn attach(
        &self,
        res: &Resource,
        refs: &[&GatewayRef],
        listeners: &[cs::Listener],
    ) -> Result<Vec<String>, String> {
        let protocol = resource_protocol(res.spec.protocol);
        let by_host = matches!(
            protocol,
            cs::ResourceProtocol::Http | cs::ResourceProtocol::TlsPassthrough
        );
        let ports: BTreeSet<i32> = res.spec.ports.iter().map(|p| p.port).collect();
        let fits = |l: &cs::Listener| -> Result<(), String> {
            if !l.protocol.accepts(protocol) {
                return Err(format!(
                    "a {protocol:?} Resource cannot attach to {:?} listener {}",
                    l.protocol, l.name
                ));
            }
            if !by_host && !ports.contains(&i32::from(l.port)) {
                return Err(format!(
                    "listener {} listens on port {}, which is not among the Resource's ports",
                    l.name, l.port
                ));
            }
            if let (true, Some(lh)) = (by_host, &l.hostname)
                && !res.spec.hostnames.iter().any(|h| hostname_within(h, lh))
            {
                return Err(format!(
                    "none of the Resource's hostnames is within listener {}'s hostname {lh}",
                    l.name
                ));
            }
            Ok(())
        };
        let mut out = BTreeSet::new();
        for r in refs {
            match &r.listener {
                Some(name) => {
                    let l = listeners
                        .iter()
                        .find(|l| &l.name == name)
                        .ok_or_else(|| format!("Gateway {} has no listener {name}", self.gw))?;
                    fits(l)?;
                    out.insert(l.name.clone());
                }
                None => {
                    let fitting: Vec<String> = listeners
                        .iter()
                        .filter(|l| fits(l).is_ok())
                        .map(|l| l.name.clone())
                        .collect();
                    if fitting.is_empty() {
                        return Err(format!(
                            "no listener of Gateway {} accepts this {protocol:?} Resource",
                            self.gw
                        ));
                    }
                    out.extend(fitting);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A site's public key: from the spec, else the one the operator generated, if that one
    /// is usable. The generated key is read from a Secret in the Gateway's namespace, which
    /// more people than the Gateway's owner may be able to write: a value that is not a key,
    /// or that another site of this Gateway also has, leaves this site out (its Resources
    /// say why) rather than failing the whole snapshot.
    fn site_key(&self, s: &g::Site) -> Option<String> {
        use rustronaut_contract::identity::site::decode_public_key;
        if let Some(k) = &s.public_key {
            return Some(k.clone());
        }
        let generated = self.inputs.site_keys.get(&s.name)?;
        let key = decode_public_key(generated).ok()?;
        let clash = self
            .spec()
            .and_then(|g| g.tunnel.as_ref())
            .into_iter()
            .flat_map(|t| &t.sites)
            .filter(|o| o.name != s.name)
            .filter_map(|o| {
                o.public_key
                    .as_ref()
                    .or_else(|| self.inputs.site_keys.get(&o.name))
            })
            .any(|k| decode_public_key(k).is_ok_and(|k| k == key));
        (!clash).then(|| generated.clone())
    }

    /// Checks the site upstreams of `res` against this gateway's tunnel.
    fn check_sites(&self, res: &Resource, tenant: &str) -> Result<(), (&'static str, String)> {
        let gw = self.gw.to_string();
        let upstreams = res
            .spec
            .upstreams
            .iter()
            .chain(res.spec.rules.iter().flat_map(|r| &r.upstreams));
        for u in upstreams {
            let Some(site) = &u.site else { continue };
            if site.gateway != gw {
                return Err((
                    reasons::REF_NOT_PERMITTED,
                    format!(
                        "site {} is reached through Gateway {}, not {gw}; a Resource on several gateways can only use sites of each",
                        site.name, site.gateway
                    ),
                ));
            }
            let found = self
                .spec()
                .and_then(|g| g.tunnel.as_ref())
                .and_then(|t| t.sites.iter().find(|s| s.name == site.name));
            let Some(s) = found else {
                return Err((
                    reasons::SITE_NOT_FOUND,
                    format!("Gateway {gw} has no tunnel site {}", site.name),
                ));
            };
            if let Some(message) = self.over.sites.get(&(self.gw.clone(), s.name.clone())) {
                return Err((
                    reasons::QUOTA_EXCEEDED,
                    format!("site {}: {message}", s.name),
                ));
            }
            if s.tenant != tenant {
                return Err((
                    reasons::REF_NOT_PERMITTED,
                    format!(
                        "site {} belongs to tenant {}, not {tenant}",
                        site.name, s.tenant
                    ),
                ));
            }
            if self.site_key(s).is_none() {
                return Err((
                    reasons::SITE_NOT_FOUND,
                    format!(
                        "site {} has no publicKey and the operator has not generated one yet (or the generated one is not a key, or another site's)",
                        site.name
                    ),
                ));
            }
            if let Some(Ok(ip)) = u.host.as_deref().map(str::parse::<IpAddr>) {
                let inside = s.advertised_cidrs.iter().any(|c| {
                    c.parse::<rustronaut_contract::cidr::Cidr>()
                        .is_ok_and(|c| c.contains(ip))
                });
                if !inside {
                    return Err((
                        reasons::REF_NOT_PERMITTED,
                        format!(
                            "{ip} is not inside the advertisedCIDRs of site {} ({})",
                            site.name,
                            s.advertised_cidrs.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn resources(
        &mut self,
        listeners: &[cs::Listener],
        admitted: &BTreeSet<String>,
    ) -> Vec<cs::CompiledResource> {
        let mut candidates: Vec<&Resource> = self
            .world
            .resources
            .iter()
            .filter(|r| refs_gateway(r, &self.gw).next().is_some())
            .map(|r| &**r)
            .collect();
        // Oldest first, so on a hostname or port conflict the older Resource keeps it (the
        // validation pass drops the later claimant), the same answer on every replica.
        candidates.sort_by_key(|r| {
            let ts = r.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (ts.is_none(), ts, r.namespace(), r.name_any())
        });
        let mut out = Vec::new();
        for res in candidates {
            let ns = res.namespace().unwrap_or_default();
            let key = ObjectRef::new(&ns, res.name_any());
            let left_out = |b: &mut Self, reason, message| {
                b.problem("Resource", key.clone(), reason, message, Impact::LeftOut);
            };
            let Some(tenant) = self.claims.tenant_of(&ns).map(str::to_string) else {
                left_out(
                    self,
                    reasons::NO_TENANT,
                    format!("namespace {ns} belongs to no Tenant"),
                );
                continue;
            };
            if let Some(message) = self.over.resources.get(&key).cloned() {
                left_out(self, reasons::QUOTA_EXCEEDED, message);
                continue;
            }
            if !admitted.contains(&tenant) {
                left_out(
                    self,
                    reasons::NOT_ALLOWED_BY_GATEWAY,
                    format!(
                        "Gateway {} does not admit tenant {tenant} (spec.tenants)",
                        self.gw
                    ),
                );
                continue;
            }
            let domains: Vec<&str> = self.claims.domains_of(&tenant).collect();
            if let Some(h) = res
                .spec
                .hostnames
                .iter()
                .find(|h| !domains.iter().any(|d| hostname_within(h, d)))
            {
                left_out(
                    self,
                    reasons::HOSTNAME_OUTSIDE_TENANT,
                    format!(
                        "{h} is outside the domains tenant {tenant} holds ({})",
                        if domains.is_empty() {
                            "none".to_string()
                        } else {
                            domains.join(", ")
                        }
                    ),
                );
                continue;
            }
            let refs: Vec<&GatewayRef> = refs_gateway(res, &self.gw).collect();
            let attached = match self.attach(res, &refs, listeners) {
                Ok(l) => l,
                Err(message) => {
                    left_out(self, reasons::INVALID_PARAMETERS, message);
                    continue;
                }
            };
            if let Err((reason, message)) = self.check_sites(res, &tenant) {
                left_out(self, reason, message);
                continue;
            }
            let mut compiled = convert::resource(res, &tenant, attached);
            let mut missing = BTreeSet::new();
            let all = compiled.upstreams.iter_mut().chain(
                compiled
                    .rules
                    .iter_mut()
                    .flat_map(|r| r.upstreams.iter_mut()),
            );
            for u in all {
                if let cs::UpstreamKind::Service(s) = &mut u.kind {
                    let sp = ServicePort::new(&ns, &s.name, s.port);
                    match self.inputs.endpoints.get(&sp) {
                        Some(a) if !a.is_empty() => s.addresses = a.clone(),
                        _ => {
                            missing.insert(format!("{}:{}", s.name, s.port));
                        }
                    }
                }
            }
            if !missing.is_empty() {
                self.problem(
                    "Resource",
                    key.clone(),
                    reasons::BACKEND_NOT_FOUND,
                    format!(
                        "no ready endpoints for Service {} in {ns}; requests routed there get 503",
                        missing.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    Impact::Degraded,
                );
            }
            out.push(compiled);
        }
        out
    }
    /// Which identity providers of `t` lack Secret material, with a message each.
    fn missing_secrets(&self, t: &rustronaut_crds::Tenant) -> BTreeMap<String, String> {
        missing_idp_secrets(t, self.inputs.secrets)
    }

    /// The contract tenant `name`, without the identity providers whose Secrets are missing.
    pub(crate) fn tenant(
        &mut self,
        name: &str,
        dropped: &mut BTreeMap<String, BTreeMap<String, String>>,
    ) -> Option<cs::Tenant> {
        let world = self.world;
        let t = world.tenant(name)?;
        let missing = self.missing_secrets(t);
        let mut out = convert::tenant(t, self.inputs.secrets);
        out.domains = self.claims.domains_of(name).map(str::to_string).collect();
        out.identity_providers
            .retain(|idp| !missing.contains_key(&idp.name));
        for (idp, message) in &missing {
            self.problem(
                "Tenant",
                ObjectRef::new("", name),
                reasons::SECRET_NOT_FOUND,
                format!(
                    "identity provider {idp}: {message}; it is left out of Gateway {} and Policies naming it fail closed",
                    self.gw
                ),
                Impact::LeftOut,
            );
        }
        if !missing.is_empty() {
            dropped.insert(name.to_string(), missing);
        }
        if crate::session::wants_session_keys(t) {
            out.session.signing_keys = self.session_keys(name);
        }
        Some(out)
    }

    /// Tenant `name`'s signing keys from its session key Secret. Entries that are not keys
    /// are skipped, each a problem of the Tenant, and the other keys keep working.
    fn session_keys(&mut self, name: &str) -> Vec<cs::SessionKey> {
        let secret = crate::session::secret_name(&self.session_owner, name);
        let (keys, skipped) = self
            .inputs
            .session_keys
            .get(name)
            .map(crate::session::session_keys)
            .unwrap_or_default();
        for message in skipped {
            self.problem(
                "Tenant",
                ObjectRef::new("", name),
                reasons::INVALID_PARAMETERS,
                format!(
                    "session key Secret {}/{secret}: {message}; that entry is skipped",
                    self.gw.namespace
                ),
                Impact::Degraded,
            );
        }
        if keys.is_empty() {
            self.problem(
                "Tenant",
                ObjectRef::new("", name),
                reasons::SECRET_NOT_FOUND,
                format!(
                    "no valid session key in Secret {}/{secret}: OIDC browser login is off at Gateway {}",
                    self.gw.namespace, self.gw
                ),
                Impact::Degraded,
            );
        }
        keys
    }

    /// Client-certificate settings: the CA bundle is the union of the clientCertificate
    /// identity providers of the tenants on this gateway.
    fn client_certificates(&mut self, snapshot: &mut Snapshot) -> Result<(), BuildError> {
        let cas: Vec<&str> = snapshot
            .tenants
            .iter()
            .flat_map(|t| &t.identity_providers)
            .filter_map(|idp| match &idp.kind {
                cs::IdentityProviderKind::ClientCertificate(c) => Some(c.ca_pem.as_str()),
                _ => None,
            })
            .collect();
        let ca_pem = cas.join("\n");
        // Copied out of `self` (a shared reference), so the loop may report problems.
        let gateway = self.gateway;
        // By name, not position: a listener waiting for its certificate is not in the
        // snapshot.
        let specs = gateway.map_or(&[][..], |g| &g.spec.listeners[..]);
        for l in &mut snapshot.listeners {
            let Some(spec) = specs.iter().find(|s| s.name == l.name) else {
                continue;
            };
            let Some(cc) = &spec.client_certificate else {
                continue;
            };
            let mode = match cc.mode {
                g::ClientCertificateMode::Optional => cs::ClientCertificateMode::Optional,
                g::ClientCertificateMode::Required => cs::ClientCertificateMode::Required,
            };
            if ca_pem.is_empty() {
                if mode == cs::ClientCertificateMode::Required {
                    return Err(BuildError::InvalidListener {
                        listener: l.name.clone(),
                        message: "clientCertificate mode Required, but no tenant on this gateway has a usable clientCertificate identity provider, so no client could connect".into(),
                    });
                }
                // Optional with no CA to verify against: no certificate could authenticate
                // anyway, so not asking for one is the same outcome, and says so.
                self.gateway_problem(
                    reasons::INVALID_PARAMETERS,
                    format!(
                        "listener {}: clientCertificate is Optional but no tenant on this gateway has a usable clientCertificate identity provider; client certificates are not requested",
                        l.name
                    ),
                );
                continue;
            }
            l.client_certificate = Some(cs::ClientCertificateConfig {
                mode,
                ca_pem: ca_pem.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn policies(
        &mut self,
        resources: &[cs::CompiledResource],
        dropped_idps: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Vec<CompiledPolicy> {
        let here: BTreeMap<(&str, &str), &cs::CompiledResource> = resources
            .iter()
            .map(|r| ((r.namespace.as_str(), r.name.as_str()), r))
            .collect();
        let tenants: BTreeSet<&str> = resources.iter().map(|r| r.tenant.as_str()).collect();
        let world = self.world;
        let mut policies: Vec<_> = world.policies.iter().collect();
        policies.sort_by(|a, b| {
            rustronaut_crds::tenancy::by_namespace_and_name(&a.metadata, &b.metadata)
        });
        let index = ResourceIndex::new(&world.resources);
        let mut out = Vec::new();
        for p in policies {
            let ns = p.namespace().unwrap_or_default();
            let key = ObjectRef::new(&ns, p.name_any());
            let Some(tenant) = self.claims.tenant_of(&ns).map(str::to_string) else {
                continue;
            };
            if !tenants.contains(tenant.as_str()) {
                continue;
            }
            let tenant_obj = world.tenant(&tenant);
            let admin_ns = tenant_obj.and_then(|t| t.spec.admin_namespace());
            let (all_targets, _) =
                policy_targets(p, &index, &self.claims, admin_ns, &world.namespaces);
            let mut targets = Vec::new();
            for t in all_targets {
                let Some(r) = here.get(&(t.namespace.as_str(), t.name.as_str())) else {
                    // Not on this gateway (or left out of it): nothing to enforce here.
                    continue;
                };
                if let Some(section) = &t.section
                    && !r.rules.iter().any(|rule| &rule.name == section)
                {
                    self.problem(
                        "Policy",
                        key.clone(),
                        reasons::TARGET_NOT_FOUND,
                        format!(
                            "Resource {}/{} has no rule {section}; that target is ignored",
                            t.namespace, t.name
                        ),
                        Impact::Degraded,
                    );
                    continue;
                }
                targets.push(t);
            }
            if targets.is_empty() {
                continue;
            }
            let mut compiled = convert::policy(p, &tenant, &targets);
            let mut reason = reasons::INVALID;
            if let Some(t) = tenant_obj {
                for problem in rustronaut_crds::validate::policy(&p.spec, &t.spec) {
                    reason = problem.reason;
                    compiled.unresolved.push(problem.to_string());
                }
            }
            let mut protocols: Vec<Protocol> = Vec::new();
            for t in &targets {
                let found = index.get(&t.namespace, &t.name);
                if let Some(r) = found
                    && !protocols.contains(&r.spec.protocol)
                {
                    protocols.push(r.spec.protocol);
                }
            }
            for proto in protocols {
                for problem in rustronaut_crds::validate::policy_for_target(&p.spec, proto) {
                    reason = problem.reason;
                    compiled.unresolved.push(problem.to_string());
                }
            }
            if let Some(dropped) = dropped_idps.get(&tenant) {
                let names: Vec<String> = policy_idps(&compiled)
                    .into_iter()
                    .filter(|n| dropped.contains_key(*n))
                    .map(str::to_string)
                    .collect();
                for name in names {
                    reason = reasons::SECRET_NOT_FOUND;
                    compiled.unresolved.push(format!(
                        "identity provider {name} is unavailable: {}",
                        dropped[&name]
                    ));
                }
            }
            if let Some(message) = self.over.policies.get(&key) {
                reason = reasons::QUOTA_EXCEEDED;
                compiled.unresolved.push(message.clone());
            }
            if !compiled.unresolved.is_empty() {
                self.problem(
                    "Policy",
                    key,
                    reason,
                    format!(
                        "the policy fails closed: {}",
                        compiled.unresolved.join("; ")
                    ),
                    Impact::FailsClosed,
                );
            }
            out.push(compiled);
        }
        out
    }

    /// The tunnel of the snapshot: sites with a key, each allowed exactly the targets the
    /// Resources in the snapshot reach through it.
    fn tunnel(&self, resources: &[cs::CompiledResource]) -> Option<cs::Tunnel> {
        let t = self.spec()?.tunnel.as_ref()?;
        // Addresses over every site of the spec, keyed or not, so a site keeps its address
        // when its key appears.
        let addresses = t
            .address_pool
            .parse::<rustronaut_contract::cidr::Cidr>()
            .map(|pool| {
                crate::tunnel::site_addresses(&pool, t.sites.iter().map(|s| s.name.as_str()))
            })
            .unwrap_or_default();
        let mut sites = Vec::new();
        for s in &t.sites {
            // Beyond its tenant's site quota: no peer, so the hub accepts no tunnel from it.
            if self
                .over
                .sites
                .contains_key(&(self.gw.clone(), s.name.clone()))
            {
                continue;
            }
            let Some(public_key) = self.site_key(s) else {
                continue;
            };
            // (host, is UDP) -> ports.
            let mut targets: BTreeMap<(String, bool), BTreeSet<u16>> = BTreeMap::new();
            for r in resources.iter().filter(|r| r.tenant == s.tenant) {
                let udp = r.protocol == cs::ResourceProtocol::Udp;
                let all = r
                    .upstreams
                    .iter()
                    .chain(r.rules.iter().flat_map(|x| &x.upstreams));
                for u in all {
                    if let cs::UpstreamKind::Site(su) = &u.kind
                        && su.site == s.name
                    {
                        targets
                            .entry((su.host.clone(), udp))
                            .or_default()
                            .insert(su.port);
                    }
                }
            }
            sites.push(cs::TunnelSite {
                name: s.name.clone(),
                tenant: s.tenant.clone(),
                public_key,
                tunnel_address: addresses.get(&s.name).map(IpAddr::to_string),
                advertised_cidrs: s.advertised_cidrs.clone(),
                allowed_targets: targets
                    .into_iter()
                    .map(|((host, udp), ports)| cs::AllowedTarget {
                        host,
                        ports: ports.into_iter().collect(),
                        protocol: if udp {
                            cs::TransportProtocol::Udp
                        } else {
                            cs::TransportProtocol::Tcp
                        },
                    })
                    .collect(),
            });
        }
        Some(cs::Tunnel {
            listen_port: u16::try_from(t.listen_port).unwrap_or(0),
            address_pool: t.address_pool.clone(),
            sites,
        })
    }

    /// Validates, quarantining the objects validation blames, until the snapshot is valid
    /// or a problem remains that no single object explains.
    ///
    /// `exempt` names the validation errors this kind of build expects and accepts (a
    /// sidecar's HTTP Resource has no hostnames: the pod's sidecar serves every Host).
    pub(crate) fn settle(
        &mut self,
        s: &mut Snapshot,
        exempt: &dyn Fn(&ValidationError) -> bool,
    ) -> Result<(), BuildError> {
        // Each round removes or marks at least one object, so this terminates; the bound
        // only guards against a bug turning it into a hot loop.
        for _ in 0..=(s.resources.len() + s.policies.len() + 8) {
            s.tunnel = self.tunnel(&s.resources);
            let errors = validate_except(s, exempt);
            if errors.is_empty() {
                return Ok(());
            }
            let mut drop_resources = BTreeMap::new();
            let mut fail_policies: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            let mut drop_idps = BTreeMap::new();
            let mut fatal = Vec::new();
            for e in errors {
                match top_index(&e.path) {
                    Some(("resources", i)) if i < s.resources.len() => {
                        drop_resources.entry(i).or_insert_with(|| e.to_string());
                    }
                    Some(("policies", i))
                        if i < s.policies.len() && s.policies[i].unresolved.is_empty() =>
                    {
                        fail_policies.entry(i).or_default().push(e.to_string());
                    }
                    // allowedTargets are derived from the Resources' site upstreams: the
                    // Resources that produced a bad target are at fault, not the Gateway.
                    Some(("tunnel.sites", _)) if !target_sources(s, &e.path).is_empty() => {
                        for i in target_sources(s, &e.path) {
                            drop_resources.entry(i).or_insert_with(|| e.to_string());
                        }
                    }
                    Some(("tenants", i)) if i < s.tenants.len() => {
                        let rest = e.path.split_once("].").map_or("", |(_, r)| r);
                        match top_index(rest) {
                            Some(("identityProviders", j)) => {
                                drop_idps.entry((i, j)).or_insert_with(|| e.to_string());
                            }
                            _ => fatal.push(e),
                        }
                    }
                    _ => fatal.push(e),
                }
            }
            if !fatal.is_empty() {
                return Err(BuildError::Invalid(fatal));
            }
            for ((i, j), message) in drop_idps.into_iter().rev() {
                let t = &mut s.tenants[i];
                let idp = t.identity_providers.remove(j);
                self.problem(
                    "Tenant",
                    ObjectRef::new("", &t.name),
                    reasons::INVALID,
                    format!(
                        "identity provider {} is invalid ({message}); it is left out of Gateway {} and Policies naming it fail closed",
                        idp.name, self.gw
                    ),
                    Impact::LeftOut,
                );
            }
            for (i, messages) in fail_policies {
                let p = &mut s.policies[i];
                p.unresolved.extend(messages.iter().cloned());
                let key = p.key();
                self.problem(
                    "Policy",
                    key,
                    reasons::INVALID,
                    format!("the policy fails closed: {}", messages.join("; ")),
                    Impact::FailsClosed,
                );
            }
            for (i, message) in drop_resources.into_iter().rev() {
                let r = s.resources.remove(i);
                // What was degraded about it no longer matters: it is not served at all.
                self.problems.retain(|p| {
                    !(p.kind == "Resource" && p.object == r.key() && p.impact == Impact::Degraded)
                });
                let reason = if message.contains("also claimed by Resource") {
                    reasons::HOSTNAME_CONFLICT
                } else {
                    reasons::INVALID
                };
                self.problem(
                    "Resource",
                    r.key(),
                    reason,
                    format!("left out of Gateway {}: {message}", self.gw),
                    Impact::LeftOut,
                );
            }
            // Targets of left-out Resources go; a policy with nothing left here goes too
            // (it enforces nothing on this gateway).
            let keys: BTreeSet<ObjectRef> = s.resources.iter().map(|r| r.key()).collect();
            for p in &mut s.policies {
                p.targets.retain(|t| keys.contains(&t.resource));
            }
            s.policies.retain(|p| !p.targets.is_empty());
        }
        let errors = validate_except(s, exempt);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BuildError::Invalid(errors))
        }
    }
}

/// The problems [`Snapshot::validate`] finds in `s`, but those `exempt` accepts.
fn validate_except(
    s: &Snapshot,
    exempt: &dyn Fn(&ValidationError) -> bool,
) -> Vec<ValidationError> {
    match s.validate() {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_iter().filter(|e| !exempt(e)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::SecretMap;
    use rustronaut_contract::eval::{Effect, Request, evaluate};
    use rustronaut_contract::identity::{Identity, UserIdentity};
    use rustronaut_contract::policy::PolicySet;
    use serde_json::json;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::SystemTime;

    /// A self-signed test CA (contract's fixture): a valid certificate for PEM fields.
    const CERT: &str = include_str!("../../contract/tests/fixtures/ca.pem");
    /// A PKCS#8 test key (its private half is public in the repository).
    const KEY: &str = include_str!("../../contract/tests/fixtures/ec-p256.pem");

    fn examples() -> World {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let manifests = rustronaut_crds::manifests::load(&dir).unwrap();
        World::from_manifests(&manifests).unwrap()
    }

    fn secrets() -> SecretMap {
        let hash = rustronaut_contract::identity::apikey::hash_api_key(
            "globex-key-0123456789abcdefghij",
            b"0123456789abcdef",
        )
        .unwrap();
        let mut s = SecretMap::default();
        s.insert("acme-admin", "okta-client", [("clientSecret", "s3cret")])
            .insert("acme-admin", "corp-ca", [("ca.crt", CERT)])
            .insert("acme-admin", "partner-keys", [("globex", hash.as_str())]);
        s
    }

    fn inputs(secrets: &SecretMap) -> GatewayInputs<'_> {
        let tls = BTreeMap::from([(
            ObjectRef::new("rtn-system", "acme-wildcard-tls"),
            TlsKeyPair {
                certificate_chain_pem: CERT.into(),
                private_key_pem: KEY.into(),
            },
        )]);
        let endpoints = BTreeMap::from([
            (
                ServicePort::new("acme-apps", "grafana", 3000),
                vec!["10.0.0.5:3000".parse().unwrap()],
            ),
            (
                ServicePort::new("acme-apps", "postgres", 5432),
                vec!["10.0.0.7:5432".parse().unwrap()],
            ),
        ]);
        GatewayInputs {
            tls,
            endpoints,
            secrets,
            site_keys: BTreeMap::new(),
            // What the operator passes: acme has an OIDC provider, so a generated key.
            session_keys: BTreeMap::from([(
                "acme".to_string(),
                BTreeMap::from([(
                    "key-20261201000000".to_string(),
                    b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_vec(),
                )]),
            )]),
        }
    }

    fn gateway<'a>(world: &'a World, name: &str) -> &'a Gateway {
        world
            .gateways
            .iter()
            .find(|g| g.name_any() == name)
            .unwrap()
    }

    fn build(world: &World, secrets: &SecretMap) -> Result<BuildOutcome, BuildError> {
        gateway_snapshot(world, gateway(world, "edge"), &inputs(secrets))
    }

    fn names<T>(list: &[T], f: impl Fn(&T) -> String) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(f).collect();
        v.sort();
        v
    }

    fn resource(value: serde_json::Value) -> Resource {
        serde_json::from_value(value).unwrap()
    }

    fn user(idp: &str, email: &str) -> Identity {
        let mut id = Identity::anonymous(Some("192.0.2.1".parse().unwrap()));
        id.user = Some(std::sync::Arc::new(UserIdentity {
            idp: idp.into(),
            subject: email.into(),
            email: Some(email.into()),
            groups: Vec::new(),
            claims: Default::default(),
            scopes: Vec::new(),
            known_claims: None,
            derived: Default::default(),
        }));
        id
    }

    /// The effect of GET `path` on grafana's `ui` rule for `id`, as the gateway would decide.
    fn grafana_ui(snapshot: &Snapshot, id: &Identity) -> Effect {
        let set = PolicySet::compile(&snapshot.tenants, &snapshot.resources, &snapshot.policies);
        let path = rustronaut_contract::path::normalize("/d/abc").unwrap().path;
        let req = Request::new("acme-apps", "grafana", id)
            .section("ui")
            .http("GET", &path);
        evaluate(&set, &req, SystemTime::now(), "t").effect
    }

    #[test]
    fn the_examples_build_a_whole_valid_snapshot() {
        let world = examples();
        let out = build(&world, &secrets()).unwrap();
        let s = &out.snapshot;
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.gateway, ObjectRef::new("rtn-system", "edge"));
        assert_eq!(
            names(&s.listeners, |l| l.name.clone()),
            ["https", "postgres"]
        );
        let https = s.listeners.iter().find(|l| l.name == "https").unwrap();
        assert_eq!(
            https.tls.as_ref().unwrap().certificates[0].name,
            "acme-wildcard-tls"
        );
        let cc = https.client_certificate.as_ref().unwrap();
        assert_eq!(cc.mode, cs::ClientCertificateMode::Optional);
        assert!(cc.ca_pem.contains("BEGIN CERTIFICATE"), "corp-ca is the CA");
        assert_eq!(
            names(&s.resources, |r| r.key().to_string()),
            ["acme-apps/grafana", "acme-apps/postgres", "acme-apps/wiki"]
        );
        assert_eq!(
            names(&s.policies, |p| p.name.clone()),
            [
                "grafana-admin-api",
                "grafana-api",
                "grafana-ui",
                "postgres-deployer",
                "sre-corporate-networks-only",
                "wiki-access"
            ]
        );
        assert!(s.policies.iter().all(|p| p.unresolved.is_empty()));
        let acme = s.tenant("acme").unwrap();
        assert_eq!(acme.domains, ["*.acme.example"]);
        assert_eq!(acme.identity_providers.len(), 4);
        let partners = acme.identity_provider("partners").unwrap();
        let cs::IdentityProviderKind::ApiKey(a) = &partners.kind else {
            panic!("partners is an API-key provider")
        };
        assert_eq!(a.keys.len(), 1);
        assert_eq!(a.keys[0].client_id, "globex");

        // Service upstreams resolved; the canary has no endpoints and says so.
        let grafana = s.resource("acme-apps", "grafana").unwrap();
        let cs::UpstreamKind::Service(svc) = &grafana.rules[0].upstreams[0].kind else {
            panic!("a Service upstream")
        };
        assert_eq!(
            svc.addresses,
            ["10.0.0.5:3000".parse::<SocketAddr>().unwrap()]
        );
        let degraded: Vec<_> = out
            .problems_of("Resource", "acme-apps", "grafana")
            .collect();
        assert_eq!(degraded.len(), 1, "{degraded:?}");
        assert_eq!(degraded[0].reason, reasons::BACKEND_NOT_FOUND);
        assert_eq!(degraded[0].impact, Impact::Degraded);
        assert!(degraded[0].message.contains("grafana-canary:3000"));

        // The wiki's site upstream is exactly what the dc1 connector may open.
        let tunnel = s.tunnel.as_ref().unwrap();
        assert_eq!(tunnel.sites.len(), 1);
        assert_eq!(
            tunnel.sites[0].allowed_targets,
            [cs::AllowedTarget {
                host: "10.1.2.3".into(),
                ports: vec![8080],
                protocol: cs::TransportProtocol::Tcp,
            }]
        );
        let pool: rustronaut_contract::cidr::Cidr = tunnel.address_pool.parse().unwrap();
        assert_eq!(
            tunnel.sites[0].tunnel_address,
            Some(crate::tunnel::site_addresses(&pool, ["dc1"])["dc1"].to_string())
        );
        assert_eq!(out.attached["https"], 2);
        assert_eq!(out.attached["postgres"], 1);
        assert!(
            out.problems.iter().all(|p| p.impact == Impact::Degraded),
            "{:?}",
            out.problems
        );

        // What the operator writes is what the gateway loads, and the build is deterministic.
        let loaded = Snapshot::load(&s.to_json()).unwrap();
        assert_eq!(&loaded, s);
        let again = build(&world, &secrets()).unwrap();
        assert_eq!(again.snapshot.content_hash(), s.content_hash());
        // And it decides like the policies say.
        assert_eq!(
            grafana_ui(s, &user("okta", "bob@acme.example")),
            Effect::Allow
        );
        assert_eq!(
            grafana_ui(s, &user("okta", "eve@evil.example")),
            Effect::Deny
        );
    }

    #[test]
    fn a_missing_tls_secret_fails_the_whole_build() {
        let world = examples();
        let secrets = secrets();
        let mut inputs = inputs(&secrets);
        inputs.tls.clear();
        let err = gateway_snapshot(&world, gateway(&world, "edge"), &inputs).unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_CERTIFICATE_REF);
        assert_eq!(err.listener(), Some("https"));
        assert_eq!(
            err.to_string(),
            "listener https: TLS Secret rtn-system/acme-wildcard-tls not found"
        );

        inputs.tls.insert(
            ObjectRef::new("rtn-system", "acme-wildcard-tls"),
            TlsKeyPair {
                certificate_chain_pem: CERT.into(),
                private_key_pem: "not a key".into(),
            },
        );
        let err = gateway_snapshot(&world, gateway(&world, "edge"), &inputs).unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_CERTIFICATE_REF);
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }

    /// With `tls.issuerRef`, a Secret cert-manager has not issued yet does not fail the build:
    /// the listener is there, marked `certificatesPending`, and reported; once issued it is
    /// served; any other missing Secret of the same listener still fails the build.
    #[test]
    fn a_listener_waiting_for_cert_manager_is_bound_and_reported() {
        let world = examples();
        let mut gw = gateway(&world, "edge").clone();
        let https = gw
            .spec
            .listeners
            .iter_mut()
            .find(|l| l.name == "https")
            .unwrap();
        https.tls.as_mut().unwrap().issuer_ref = Some(g::IssuerRef {
            name: "ca".into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        });
        let secrets = secrets();
        let mut inputs = inputs(&secrets);
        inputs.tls.clear();
        let out = gateway_snapshot(&world, &gw, &inputs).unwrap();
        assert_eq!(out.snapshot.validate(), Ok(()));
        // Bound without a certificate (a later snapshot brings it, no restart needed).
        let https = |out: &BuildOutcome| {
            let l = out
                .snapshot
                .listeners
                .iter()
                .find(|l| l.name == "https")
                .unwrap();
            let tls = l.tls.clone().unwrap();
            (tls.certificates.len(), tls.certificates_pending)
        };
        assert_eq!(https(&out), (0, true));
        assert!(out.snapshot.listeners.iter().any(|l| l.name == "postgres"));
        assert_eq!(
            out.pending.get("https").map(String::as_str),
            Some(
                "waiting for cert-manager to issue its certificate into Secret rtn-system/acme-wildcard-tls (kubectl describe certificate -n rtn-system acme-wildcard-tls)"
            )
        );
        let p: Vec<_> = out.problems_of("Gateway", "rtn-system", "edge").collect();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].reason, reasons::CERTIFICATE_PENDING);

        inputs.tls.insert(
            ObjectRef::new("rtn-system", "acme-wildcard-tls"),
            TlsKeyPair {
                certificate_chain_pem: CERT.into(),
                private_key_pem: KEY.into(),
            },
        );
        let out = gateway_snapshot(&world, &gw, &inputs).unwrap();
        assert!(out.pending.is_empty());
        assert_eq!(https(&out), (1, false));

        let https = gw
            .spec
            .listeners
            .iter_mut()
            .find(|l| l.name == "https")
            .unwrap();
        https
            .tls
            .as_mut()
            .unwrap()
            .certificate_refs
            .push(rustronaut_crds::common::SecretRef {
                name: "by-hand".into(),
            });
        let err = gateway_snapshot(&world, &gw, &inputs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "listener https: TLS Secret rtn-system/by-hand not found"
        );
    }

    #[test]
    fn a_missing_identity_provider_secret_is_reported_and_fails_closed() {
        let world = examples();
        let mut secrets = secrets();
        secrets
            .0
            .remove(&("acme-admin".to_string(), "okta-client".to_string()));
        let out = build(&world, &secrets).unwrap();
        let s = &out.snapshot;
        assert_eq!(s.validate(), Ok(()));
        let acme = s.tenant("acme").unwrap();
        assert!(acme.identity_provider("okta").is_none(), "left out");
        assert!(acme.identity_provider("ci").is_some(), "the others stay");
        let tenant: Vec<_> = out.problems_of("Tenant", "", "acme").collect();
        assert_eq!(tenant.len(), 1);
        assert_eq!(tenant[0].reason, reasons::SECRET_NOT_FOUND);
        assert!(
            tenant[0]
                .message
                .contains("Secret acme-admin/okta-client not found"),
            "{}",
            tenant[0].message
        );
        // Every policy naming okta is in the snapshot, unresolved: it fails closed.
        for name in [
            "grafana-ui",
            "grafana-api",
            "grafana-admin-api",
            "wiki-access",
        ] {
            let p = s.policies.iter().find(|p| p.name == name).unwrap();
            assert!(!p.unresolved.is_empty(), "{name} must fail closed");
            let problem: Vec<_> = out.problems_of("Policy", "acme-apps", name).collect();
            assert_eq!(problem[0].impact, Impact::FailsClosed);
            assert_eq!(problem[0].reason, reasons::SECRET_NOT_FOUND);
        }
        let p = s.policies.iter().find(|p| p.name == "postgres-deployer");
        assert!(p.unwrap().unresolved.is_empty(), "untouched");
        assert_eq!(
            grafana_ui(s, &user("okta", "bob@acme.example")),
            Effect::Deny
        );

        // A key that is missing from an existing Secret says which key.
        secrets.insert("acme-admin", "okta-client", [("other", "x")]);
        let out = build(&world, &secrets).unwrap();
        let tenant: Vec<_> = out.problems_of("Tenant", "", "acme").collect();
        assert!(
            tenant[0]
                .message
                .contains("Secret acme-admin/okta-client has no key clientSecret"),
            "{}",
            tenant[0].message
        );
    }

    fn tenant(name: &str, namespaces: &[&str], domains: &[&str]) -> rustronaut_crds::Tenant {
        serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {"namespaces": namespaces, "domains": domains}
        }))
        .unwrap()
    }

    fn http_resource(ns: &str, name: &str, host: &str, gw: &str) -> Resource {
        let (gw_ns, gw_name) = gw.split_once('/').unwrap();
        resource(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "gatewayRefs": [{"namespace": gw_ns, "name": gw_name}],
                "protocol": "HTTP",
                "hostnames": [host],
                "rules": [{"name": "all", "upstreams": [{"service": {"name": name, "port": 80}}]}]
            }
        }))
    }

    #[test]
    fn over_quota_resources_are_left_out_and_policies_fail_closed() {
        let mut world = examples();
        // grafana, orders (a sidecar Resource: counted, never in a Gateway's snapshot) and
        // postgres fit; wiki does not.
        Arc::make_mut(&mut world.tenants[0]).spec.quotas = Some(rustronaut_crds::tenant::Quotas {
            resources: Some(3),
            policies: Some(1),
            ..Default::default()
        });
        let out = build(&world, &secrets()).unwrap();
        assert_eq!(out.snapshot.validate(), Ok(()));
        // No creationTimestamps in files: namespace/name order decides.
        assert_eq!(
            names(&out.snapshot.resources, |r| r.name.clone()),
            ["grafana", "postgres"]
        );
        let p: Vec<_> = out.problems_of("Resource", "acme-apps", "wiki").collect();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].reason, p[0].impact),
            (reasons::QUOTA_EXCEEDED, Impact::LeftOut)
        );
        assert!(
            p[0].message.contains("spec.quotas.resources"),
            "{}",
            p[0].message
        );
        let mut policies: Vec<_> = out.snapshot.policies.iter().collect();
        policies.sort_by_key(|p| (p.namespace.clone(), p.name.clone()));
        assert!(
            policies[0].unresolved.is_empty(),
            "the first is within quota"
        );
        for p in &policies[1..] {
            assert!(
                p.unresolved
                    .iter()
                    .any(|u| u.contains("spec.quotas.policies")),
                "{} fails closed, never dropped",
                p.name
            );
            let problem: Vec<_> = out.problems_of("Policy", &p.namespace, &p.name).collect();
            assert_eq!(problem.last().unwrap().reason, reasons::QUOTA_EXCEEDED);
            assert_eq!(problem.last().unwrap().impact, Impact::FailsClosed);
        }
    }

    #[test]
    fn resources_that_may_not_attach_are_left_out_and_reported() {
        let mut world = examples();
        world.tenants.push(Arc::new(tenant(
            "globex",
            &["globex-apps"],
            &["*.globex.example"],
        )));
        // Tenant admission: the edge gateway admits every tenant; a Same gateway in acme's
        // namespace admits acme only.
        let mut same = gateway(&world, "edge").clone();
        same.metadata.namespace = Some("acme-apps".into());
        same.metadata.name = Some("own".into());
        same.spec.tenants = Default::default();
        same.spec.tunnel = None;
        same.spec.listeners.retain(|l| l.name == "https");
        same.spec.listeners[0]
            .tls
            .as_mut()
            .unwrap()
            .certificate_refs[0]
            .name = "tls".into();
        world.gateways.push(Arc::new(same.clone()));
        world.resources.extend(
            [
                http_resource("acme-apps", "mine", "mine.acme.example", "acme-apps/own"),
                http_resource(
                    "globex-apps",
                    "theirs",
                    "app.globex.example",
                    "acme-apps/own",
                ),
                http_resource("nowhere", "orphan", "orphan.acme.example", "acme-apps/own"),
                http_resource(
                    "acme-apps",
                    "outside",
                    "app.globex.example",
                    "acme-apps/own",
                ),
            ]
            .map(Arc::new),
        );
        let secrets = secrets();
        let mut inputs = inputs(&secrets);
        inputs.tls.insert(
            ObjectRef::new("acme-apps", "tls"),
            TlsKeyPair {
                certificate_chain_pem: CERT.into(),
                private_key_pem: KEY.into(),
            },
        );
        let out = gateway_snapshot(&world, &same, &inputs).unwrap();
        assert_eq!(out.snapshot.validate(), Ok(()));
        assert_eq!(
            names(&out.snapshot.resources, |r| r.name.clone()),
            ["mine"],
            "{:?}",
            out.problems
        );
        let reason = |ns: &str, name: &str| {
            let p: Vec<_> = out.problems_of("Resource", ns, name).collect();
            assert_eq!(p.len(), 1, "{ns}/{name}: {p:?}");
            assert_eq!(p[0].impact, Impact::LeftOut);
            (p[0].reason, p[0].message.clone())
        };
        let (r, m) = reason("globex-apps", "theirs");
        assert_eq!(r, reasons::NOT_ALLOWED_BY_GATEWAY);
        assert!(m.contains("does not admit tenant globex"), "{m}");
        assert_eq!(reason("nowhere", "orphan").0, reasons::NO_TENANT);
        assert_eq!(
            reason("acme-apps", "outside").0,
            reasons::HOSTNAME_OUTSIDE_TENANT
        );
        assert!(out.snapshot.policies.is_empty(), "no policy targets `mine`");
        assert_eq!(out.snapshot.tenants.len(), 1);

        // Policies of resources on other gateways never reach this one: the edge snapshot
        // has none of `mine`, and the own snapshot has none of grafana's.
        let edge = build(&world, &secrets).unwrap();
        assert!(edge.snapshot.resource("acme-apps", "mine").is_none());
        assert!(
            edge.problems_of("Resource", "acme-apps", "mine")
                .next()
                .is_none()
        );
    }

    #[test]
    fn a_listener_or_port_mismatch_and_a_foreign_site_leave_the_resource_out() {
        let mut world = examples();
        let mut bad_listener = http_resource(
            "acme-apps",
            "nolistener",
            "x.acme.example",
            "rtn-system/edge",
        );
        bad_listener.spec.gateway_refs[0].listener = Some("postgres".into());
        let mut foreign_site =
            http_resource("acme-apps", "remote", "r.acme.example", "rtn-system/edge");
        foreign_site.spec.rules[0].upstreams = vec![serde_json::from_value(json!({
            "site": {"gateway": "rtn-system/other", "name": "dc1"}, "host": "10.1.2.4", "port": 80
        }))
        .unwrap()];
        let mut outside_cidr =
            http_resource("acme-apps", "far", "far.acme.example", "rtn-system/edge");
        outside_cidr.spec.rules[0].upstreams = vec![serde_json::from_value(json!({
            "site": {"gateway": "rtn-system/edge", "name": "dc1"}, "host": "192.168.1.1", "port": 80
        }))
        .unwrap()];
        world
            .resources
            .extend([bad_listener, foreign_site, outside_cidr].map(Arc::new));
        let out = build(&world, &secrets()).unwrap();
        assert_eq!(out.snapshot.validate(), Ok(()));
        assert_eq!(out.snapshot.resources.len(), 3, "only the examples");
        let first = |name: &str| {
            out.problems_of("Resource", "acme-apps", name)
                .next()
                .unwrap()
                .clone()
        };
        let p = first("nolistener");
        assert_eq!(p.reason, reasons::INVALID_PARAMETERS);
        assert!(
            p.message.contains("cannot attach to Tcp listener postgres"),
            "{}",
            p.message
        );
        assert_eq!(first("remote").reason, reasons::REF_NOT_PERMITTED);
        let p = first("far");
        assert!(p.message.contains("advertisedCIDRs"), "{}", p.message);
        // The connector is not told to open anything for a left-out Resource.
        let site = &out.snapshot.tunnel.as_ref().unwrap().sites[0];
        assert!(site.allowed_targets.iter().all(|t| t.host == "10.1.2.3"));
    }

    /// Issue 14, item 2: a site host the snapshot refuses (upper case, underscore, wildcard)
    /// used to fail the whole build at `tunnel.sites[..].allowedTargets[..]`, freezing every
    /// tenant's revocations behind the last good snapshot.
    #[test]
    fn an_invalid_site_host_leaves_only_its_resource_out() {
        let mut world = examples();
        let mut broken = Vec::new();
        for (name, host) in [
            ("upper", "DB.corp.example"),
            ("underscore", "a_b"),
            ("wild", "*.corp.example"),
        ] {
            let mut r = http_resource(
                "acme-apps",
                name,
                &format!("{name}.acme.example"),
                "rtn-system/edge",
            );
            r.spec.rules[0].upstreams = vec![serde_json::from_value(json!({
                "site": {"gateway": "rtn-system/edge", "name": "dc1"}, "host": host, "port": 5432
            }))
            .unwrap()];
            broken.push(r);
        }
        world.resources.extend(broken.into_iter().map(Arc::new));
        // A revocation made at the same time: the wiki policy is deleted.
        world.policies.retain(|p| p.name_any() != "wiki-access");

        let out = build(&world, &secrets()).expect("one bad Resource does not fail the gateway");
        assert_eq!(out.snapshot.validate(), Ok(()));
        assert_eq!(
            names(&out.snapshot.resources, |r| r.name.clone()),
            ["grafana", "postgres", "wiki"]
        );
        for name in ["upper", "underscore", "wild"] {
            let p: Vec<_> = out.problems_of("Resource", "acme-apps", name).collect();
            assert_eq!(p.len(), 1, "{name}: {p:?}");
            assert_eq!(p[0].reason, reasons::INVALID, "{name}");
            assert_eq!(p[0].impact, Impact::LeftOut, "{name}");
            assert!(
                p[0].message.contains("invalid hostname"),
                "{}",
                p[0].message
            );
        }
        assert!(
            out.snapshot
                .policies
                .iter()
                .all(|p| p.name != "wiki-access"),
            "the deleted policy is gone from the new snapshot"
        );
        let site = &out.snapshot.tunnel.as_ref().unwrap().sites[0];
        assert!(
            site.allowed_targets.iter().all(|t| t.host == "10.1.2.3"),
            "{:?}",
            site.allowed_targets
        );
    }

    #[test]
    fn a_site_without_public_key_uses_the_generated_one() {
        let mut world = examples();
        let edge = Arc::make_mut(
            world
                .gateways
                .iter_mut()
                .find(|g| g.name_any() == "edge")
                .unwrap(),
        );
        let site = &mut edge.spec.tunnel.as_mut().unwrap().sites[0];
        let spec_key = site.public_key.take().unwrap();
        let secrets = secrets();

        // No key yet: the site is not in the tunnel and its Resource says why.
        let out = build(&world, &secrets).unwrap();
        assert!(out.snapshot.tunnel.as_ref().unwrap().sites.is_empty());
        let p = out
            .problems
            .iter()
            .find(|p| p.reason == reasons::SITE_NOT_FOUND)
            .expect("a Resource using dc1 is left out");
        assert!(p.message.contains("not generated one yet"), "{}", p.message);

        // The generated key is used, at the address the site has either way.
        let mut inputs = inputs(&secrets);
        inputs.site_keys.insert("dc1".into(), spec_key.clone());
        let out = gateway_snapshot(&world, gateway(&world, "edge"), &inputs).unwrap();
        assert_eq!(out.snapshot.validate(), Ok(()));
        let tunnel = out.snapshot.tunnel.as_ref().unwrap();
        assert_eq!(tunnel.sites.len(), 1);
        assert_eq!(tunnel.sites[0].public_key, spec_key);
        assert!(tunnel.sites[0].tunnel_address.is_some());
        assert!(!tunnel.sites[0].allowed_targets.is_empty());

        // A generated value that is not a key, or is another site's key, leaves only this
        // site out: the rest of the snapshot is built.
        for bad in ["not-a-key", "AAAA", spec_key.as_str()] {
            let mut world = examples();
            let edge = Arc::make_mut(
                world
                    .gateways
                    .iter_mut()
                    .find(|g| g.name_any() == "edge")
                    .unwrap(),
            );
            let t = edge.spec.tunnel.as_mut().unwrap();
            t.sites[0].public_key = None;
            let mut other = t.sites[0].clone();
            other.name = "dc2".into();
            other.public_key = Some(spec_key.clone());
            t.sites.push(other);
            let mut inputs = self::inputs(&secrets);
            inputs.site_keys.insert("dc1".into(), bad.into());
            let out = gateway_snapshot(&world, gateway(&world, "edge"), &inputs)
                .unwrap_or_else(|e| panic!("{bad}: {e}"));
            assert_eq!(out.snapshot.validate(), Ok(()));
            let sites = &out.snapshot.tunnel.as_ref().unwrap().sites;
            assert_eq!(names(sites, |s| s.name.clone()), ["dc2"], "{bad}");
            assert!(
                out.problems
                    .iter()
                    .any(|p| p.reason == reasons::SITE_NOT_FOUND),
                "{bad}: {:?}",
                out.problems
            );
        }

        // A key in the spec wins over a generated one.
        let other = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        inputs.site_keys.insert("dc1".into(), other.into());
        let world = examples();
        let out = gateway_snapshot(&world, gateway(&world, "edge"), &inputs).unwrap();
        assert_eq!(
            out.snapshot.tunnel.as_ref().unwrap().sites[0].public_key,
            spec_key
        );
    }

    #[test]
    fn gateways_and_sites_beyond_their_tenants_quota_are_not_served() {
        let mut world = examples();
        let site_tenant = gateway(&world, "edge").spec.tunnel.as_ref().unwrap().sites[0]
            .tenant
            .clone();
        let t = Arc::make_mut(
            world
                .tenants
                .iter_mut()
                .find(|t| t.name_any() == site_tenant)
                .unwrap(),
        );
        t.spec.quotas = Some(rustronaut_crds::tenant::Quotas {
            sites: Some(0),
            ..Default::default()
        });
        let out = build(&world, &secrets()).unwrap();
        assert!(
            out.snapshot.tunnel.as_ref().unwrap().sites.is_empty(),
            "a site over quota gets no peer"
        );
        let p = out
            .problems
            .iter()
            .find(|p| p.reason == reasons::QUOTA_EXCEEDED)
            .expect("the Resource reaching through dc1 is left out, naming the quota");
        assert!(p.message.contains("spec.quotas.sites"), "{}", p.message);

        // A Gateway over its tenant's quota gets no snapshot at all. (The example's Gateway
        // lives in a platform namespace; let the tenant hold it.)
        let edge_ns = gateway(&world, "edge").namespace().unwrap();
        let t = Arc::make_mut(
            world
                .tenants
                .iter_mut()
                .find(|t| t.name_any() == site_tenant)
                .unwrap(),
        );
        t.spec.namespaces.push(edge_ns.clone());
        t.spec.quotas = Some(rustronaut_crds::tenant::Quotas {
            gateways: Some(0),
            ..Default::default()
        });
        let secrets = secrets();
        let err = gateway_snapshot(&world, gateway(&world, "edge"), &inputs(&secrets))
            .expect_err("over quota");
        assert_eq!(err.reason(), reasons::QUOTA_EXCEEDED);
        assert!(err.to_string().contains("spec.quotas.gateways"), "{err}");
    }

    #[test]
    fn on_a_hostname_conflict_the_older_resource_keeps_it() {
        let mut world = examples();
        let mut copy = world
            .resources
            .iter()
            .find(|r| r.name_any() == "grafana")
            .map(|r| (**r).clone())
            .unwrap();
        copy.metadata.name = Some("grafana-copy".into());
        // grafana (no timestamp, as in a dry run) sorts after timestamped objects, so give
        // both timestamps: the copy is younger.
        let ts = |s: i64| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(s).unwrap(),
            ))
        };
        copy.metadata.creation_timestamp = ts(2_000_000_000);
        for r in &mut world.resources {
            Arc::make_mut(r).metadata.creation_timestamp = ts(1_700_000_000);
        }
        world.resources.insert(0, Arc::new(copy));
        let out = build(&world, &secrets()).unwrap();
        assert!(out.snapshot.resource("acme-apps", "grafana").is_some());
        assert!(out.snapshot.resource("acme-apps", "grafana-copy").is_none());
        let p: Vec<_> = out
            .problems_of("Resource", "acme-apps", "grafana-copy")
            .collect();
        assert_eq!(p.len(), 1, "only why it is left out: {p:?}");
        assert_eq!(p[0].reason, reasons::HOSTNAME_CONFLICT, "{p:?}");
        assert_eq!(p[0].impact, Impact::LeftOut);
        // The team=sre selector policy selected the copy too; here it targets grafana only.
        let sel = out
            .snapshot
            .policies
            .iter()
            .find(|p| p.name == "sre-corporate-networks-only")
            .unwrap();
        assert_eq!(sel.targets.len(), 1);
    }

    #[test]
    fn a_broken_policy_fails_closed_and_is_never_dropped() {
        let mut world = examples();
        // A Deny naming an identity provider the tenant does not have: it stays, unresolved,
        // so it denies everything it targets (dropping it would widen access).
        let deny: rustronaut_crds::Policy = serde_json::from_value(json!({
            "apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
            "metadata": {"name": "deny-bad", "namespace": "acme-apps"},
            "spec": {
                "targetRefs": [{"kind": "Resource", "name": "grafana"}],
                "action": "Deny",
                "rules": [{"name": "r", "from": [{"user": {"idp": "nope"}}]}]
            }
        }))
        .unwrap();
        world.policies.push(Arc::new(deny));
        let out = build(&world, &secrets()).unwrap();
        let p = out
            .snapshot
            .policies
            .iter()
            .find(|p| p.name == "deny-bad")
            .unwrap();
        assert!(!p.unresolved.is_empty());
        let problem = out
            .problems_of("Policy", "acme-apps", "deny-bad")
            .next()
            .unwrap();
        assert_eq!(problem.reason, reasons::IDENTITY_PROVIDER_NOT_FOUND);
        assert_eq!(problem.impact, Impact::FailsClosed);
        assert_eq!(
            grafana_ui(&out.snapshot, &user("okta", "bob@acme.example")),
            Effect::Deny
        );
    }

    #[test]
    fn required_client_certificates_without_a_ca_fail_the_build() {
        let mut world = examples();
        let mut secrets = secrets();
        secrets
            .0
            .remove(&("acme-admin".to_string(), "corp-ca".to_string()));
        // Optional: certificates are simply not requested, and the gateway says why.
        let out = build(&world, &secrets).unwrap();
        let https = out
            .snapshot
            .listeners
            .iter()
            .find(|l| l.name == "https")
            .unwrap();
        assert!(https.client_certificate.is_none());
        assert!(
            out.problems_of("Gateway", "rtn-system", "edge")
                .any(|p| p.message.contains("not requested"))
        );
        // Required: nobody could connect; refuse to build.
        let gw = Arc::make_mut(
            world
                .gateways
                .iter_mut()
                .find(|g| g.name_any() == "edge")
                .unwrap(),
        );
        gw.spec.listeners[0].client_certificate = Some(g::ClientCertificate {
            mode: g::ClientCertificateMode::Required,
        });
        let err = build(&world, &secrets).unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_PARAMETERS);
        assert!(err.to_string().contains("Required"), "{err}");
    }

    /// Issue 14, item 9: a Gateway that believes PROXY headers or X-Forwarded-For without
    /// saying from which peers is refused with a message naming the field (its last snapshot
    /// keeps serving), never compiled to "trust every peer".
    #[test]
    fn forwarded_client_addresses_need_trusted_peers() {
        let mut world = examples();
        let secrets = secrets();
        let gw = Arc::make_mut(
            world
                .gateways
                .iter_mut()
                .find(|g| g.name_any() == "edge")
                .unwrap(),
        );
        gw.spec.client_ip_detection = Some(g::ClientIpDetection {
            trusted_hops: 1,
            ..Default::default()
        });
        let err = build(&world, &secrets).unwrap_err();
        assert_eq!(err.reason(), reasons::INVALID_PARAMETERS);
        assert!(
            err.to_string()
                .contains("clientIPDetection.trustedPeerCIDRs"),
            "{err}"
        );
        let gw = Arc::make_mut(
            world
                .gateways
                .iter_mut()
                .find(|g| g.name_any() == "edge")
                .unwrap(),
        );
        gw.spec.client_ip_detection = Some(g::ClientIpDetection {
            proxy_protocol: false,
            trusted_hops: 1,
            trusted_peer_cidrs: vec!["10.0.0.0/8".into()],
        });
        let out = build(&world, &secrets).unwrap();
        assert_eq!(
            out.snapshot.client_ip_detection.trusted_peer_cidrs,
            vec!["10.0.0.0/8"]
        );
    }

    #[test]
    fn session_keys_come_from_the_input_newest_first_bad_entries_skipped() {
        use base64::Engine;
        let b64 = |fill: u8| base64::engine::general_purpose::STANDARD.encode([fill; 32]);
        let world = examples();
        let secrets = secrets();
        let acme = |out: &BuildOutcome| {
            out.snapshot
                .tenants
                .iter()
                .find(|t| t.name == "acme")
                .unwrap()
                .session
                .clone()
        };
        // The test default: the one generated key.
        let out = build(&world, &secrets).unwrap();
        let ids: Vec<String> = acme(&out)
            .signing_keys
            .iter()
            .map(|k| k.id.clone())
            .collect();
        assert_eq!(ids, ["20261201000000"]);
        assert_eq!(out.problems_of("Tenant", "", "acme").count(), 0);
        // No Secret (yet): no keys, login fails closed, and the Tenant hears why.
        let mut inputs = inputs(&secrets);
        inputs.session_keys.clear();
        let out = gateway_snapshot(&world, gateway(&world, "edge"), &inputs).unwrap();
        assert!(acme(&out).signing_keys.is_empty());
        let p: Vec<_> = out.problems_of("Tenant", "", "acme").collect();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].impact, Impact::Degraded);
        assert!(
            p[0].message
                .contains("no valid session key in Secret rtn-system/edge-session-acme"),
            "{}",
            p[0].message
        );

        inputs.session_keys.insert(
            "acme".into(),
            BTreeMap::from([
                ("key-20261201022800".into(), b64(1).into_bytes()),
                ("key-20270301000000".into(), b64(2).into_bytes()),
                ("key-oops".into(), b"short".to_vec()),
            ]),
        );
        let out = gateway_snapshot(&world, gateway(&world, "edge"), &inputs).unwrap();
        assert_eq!(out.snapshot.validate(), Ok(()), "the gateway accepts them");
        let session = acme(&out);
        let ids: Vec<&str> = session.signing_keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["20270301000000", "20261201022800"], "newest signs");
        assert_eq!(session.signing_keys[0].secret.expose(), b64(2));
        assert_eq!(
            session.duration_seconds,
            8 * 3600,
            "the spec's duration stays"
        );
        let p: Vec<_> = out.problems_of("Tenant", "", "acme").collect();
        assert_eq!(p.len(), 1, "only the bad entry: {p:?}");
        assert_eq!(
            (p[0].reason, p[0].impact),
            (reasons::INVALID_PARAMETERS, Impact::Degraded)
        );
        assert!(p[0].message.contains("entry key-oops"), "{}", p[0].message);
        assert!(!p[0].message.contains("short"), "never the value");

        // Without an OIDC provider the tenant gets no keys, whatever the input holds.
        let mut world = world;
        Arc::make_mut(&mut world.tenants[0])
            .spec
            .identity_providers
            .retain(|i| i.oidc.is_none());
        let out = gateway_snapshot(&world, gateway(&world, "edge"), &inputs).unwrap();
        assert!(acme(&out).signing_keys.is_empty());
        assert_eq!(out.problems_of("Tenant", "", "acme").count(), 0);
    }
}

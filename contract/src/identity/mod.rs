//! Who is calling: the [`Identity`] the evaluator sees, and the pure functions that establish
//! it from bytes and a time: JWTs ([`jwt`], with a verified-token [`cache`]), API keys
//! ([`apikey`]), client certificates ([`cert`]), WireGuard sites ([`site`]), Kubernetes
//! ServiceAccount tokens ([`serviceaccount`]) and the client
//! address ([`client_ip`]: PROXY protocol, X-Forwarded-For).
//!
//! ```text
//!  request bytes --> credentials presented? --no--> Identity { source_ip, .. } (anonymous)
//!                        | yes
//!                        v
//!                verify against the Resource's tenant's providers
//!                        | valid                         | invalid
//!                        v                               v
//!                Identity { user / client_certificate    401 (never reaches the evaluator,
//!                  / api_key / site, source_ip }         never falls back to anonymous)
//! ```
//!
//! **Invalid credentials never reach the evaluator.** A credential that is present but
//! invalid (bad signature, expired, unknown key) makes the gateway answer 401; it is not
//! dropped to evaluate the request as anonymous, or an `anonymous: true` Allow would let an
//! expired token through and a Deny naming that user would be dodged by corrupting the token.
//! So an `Identity` only ever holds verified facts. The gateway verifies credentials against
//! the providers of the requested Resource's tenant only, so provider names in an identity
//! are that tenant's.
//!
//! No function here reads a clock, the filesystem or the network: time is an argument, keys
//! and CA bundles come from the snapshot (or a JWKS the caller fetched).

pub mod apikey;
pub mod cache;
pub mod cert;
pub mod client_ip;
pub mod jwt;
pub mod serviceaccount;
pub mod site;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Verified facts about the caller of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    /// A user or machine from an OIDC session or a bearer JWT. Shared, not copied: the
    /// token cache holds one verified identity per token and every request of that token
    /// points at it (a deep copy of the claims map cost the gateway about 29 allocator calls
    /// per request, issue 19).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<std::sync::Arc<UserIdentity>>,
    /// A verified TLS client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CertificateIdentity>,
    /// A verified API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyIdentity>,
    /// The WireGuard site the request arrived through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteIdentity>,
    /// A Kubernetes ServiceAccount, from a token the cluster's service-account issuer
    /// signed ([`serviceaccount`]). Never set from a tenant's identity provider, whatever its
    /// token's `sub` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountIdentity>,
    /// The client address, after PROXY protocol / trusted X-Forwarded-For resolution.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sourceIP")]
    pub source_ip: Option<IpAddr>,
}

impl Identity {
    /// An anonymous caller at `source_ip`.
    pub fn anonymous(source_ip: Option<IpAddr>) -> Self {
        Self {
            source_ip,
            ..Self::default()
        }
    }

    /// Whether any credential was verified: a user, a client certificate, an API key, a
    /// site (a WireGuard peer is authenticated by its key) or a ServiceAccount. A source
    /// address alone is not.
    pub fn authenticated(&self) -> bool {
        self.user.is_some()
            || self.client_certificate.is_some()
            || self.api_key.is_some()
            || self.site.is_some()
            || self.service_account.is_some()
    }
}

/// A user or machine authenticated by an OIDC or JWT provider.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserIdentity {
    /// Provider name (in the Resource's tenant).
    pub idp: String,
    /// `sub`.
    pub subject: String,
    /// Email, only when the provider marked it verified (`email_verified: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Groups (from the provider's groups claim).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Top-level claims with string, number, boolean or string-list values, as strings.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
    /// OAuth scopes (`scope`, space-separated, or `scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `None` (a bearer token): every claim and scope of the token is here, and a claim not
    /// in [`Self::claims`] is absent. `Some(names)` (a browser session): the session carries
    /// only the claims named here (those the tenant's policies named when the user logged
    /// in, within a size bound) and no scopes; any other claim, and every scope, is
    /// **unknown**, and a rule on it fails closed (a Deny on it denies, an Allow requiring
    /// it does not allow). Without this, a Deny on a claim never matched a session user
    /// whom it denied with a bearer token (issue 14, item 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_claims: Option<BTreeSet<String>>,
    /// What a consumer derives from this user once and keeps with it ([`Derived`]): not
    /// part of the identity.
    #[serde(skip)]
    pub derived: Derived,
}

/// Values a consumer of a [`UserIdentity`] derives from it once and keeps with it: the
/// gateway's identity headers and log summary, which every request of a cached token
/// needs and which cost several allocations to build (issue 19). A `UserIdentity` is
/// immutable once it is shared behind its `Arc`, so values made from it stay true, and they
/// live as long as the token cache's entry, never past the token's expiry. Not part of the
/// identity: never serialized, equal to any other, and a clone starts empty (a cloned
/// identity may be changed, so it derives its own).
#[derive(Default)]
pub struct Derived(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl Derived {
    /// The value kept here, made by `make` on first use; `None` if another type was kept
    /// first (one consumer per process keeps one type).
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> Option<&T> {
        self.0.get_or_init(|| Box::new(make())).downcast_ref()
    }
}

impl Clone for Derived {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Derived(kept)"
        } else {
            "Derived(empty)"
        })
    }
}

impl UserIdentity {
    /// Whether the identity says whether claim `name` is present (see
    /// [`Self::known_claims`]).
    pub fn claim_known(&self, name: &str) -> bool {
        self.known_claims.as_ref().is_none_or(|k| k.contains(name))
    }
}

/// Facts from a verified client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateIdentity {
    /// The clientCertificate provider whose CA verified it.
    pub idp: String,
    /// URI SANs.
    #[serde(default, rename = "sanURIs")]
    pub san_uris: Vec<String>,
    /// DNS SANs.
    #[serde(default, rename = "sanDNSNames")]
    pub san_dns_names: Vec<String>,
    /// Email SANs.
    #[serde(default)]
    pub san_emails: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo, lower-case hex.
    #[serde(default, rename = "spkiSHA256")]
    pub spki_sha256: String,
}

/// A verified API-key client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyIdentity {
    /// The apiKey provider.
    pub idp: String,
    /// The client.
    #[serde(rename = "clientID")]
    pub client_id: String,
}

/// A WireGuard site, identified by its public key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteIdentity {
    /// Site name.
    pub name: String,
    /// The site's tenant: a `site` principal only matches sites of the policy's tenant.
    pub tenant: String,
}

/// A Kubernetes ServiceAccount of the cluster the gateway runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountIdentity {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
}

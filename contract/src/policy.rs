//! Policies as the operator compiles them ([`CompiledPolicy`], part of the snapshot), and the
//! [`PolicySet`]: the same policies checked, pre-parsed and indexed by target so that
//! evaluation ([`crate::eval`]) does no parsing, no allocation on the allow path, and looks
//! only at the policies of the requested Resource (10,000 policies cost what the handful
//! targeting one Resource cost).
//!
//! ```text
//!  CompiledPolicy (JSON) --compile--> Policy (CIDRs parsed, emails lower-cased, time zone
//!  looked up, idp references checked against the policy's own tenant)
//!      --index--> per Resource: rule lists for "whole Resource" and per sectionName, in a
//!                 fixed order (namespace/name), deny and allow apart
//! ```
//!
//! Semantics (ARCHITECTURE.md "Policy semantics", CRDS.md Policy), enforced here and in eval:
//! - A Policy applies only to Resources of its own tenant. A target in another tenant is
//!   dropped (and reported as a problem), whatever the snapshot says.
//! - Principal fields are ANDed; the values inside one list are ORed ("any of these groups"),
//!   with two exceptions where AND is the only sensible reading: `claims` (every listed claim
//!   must carry one of its values) and `scopes` (the token must carry every listed scope, as
//!   OAuth scopes are permissions and a rule naming two needs both).
//! - **Unresolved policies fail closed.** A policy is unresolved when the operator says so
//!   (`unresolved` non-empty) or when compiling it here fails: unknown or wrong-type identity
//!   provider, bad CIDR, bad schedule or time zone, path not in normal form, a rule with an
//!   empty `from`, no rules, HTTP fields (methods, paths) on a policy that targets a TCP/UDP/
//!   TLSPassthrough Resource, unknown tenant. Then:
//!   - an unresolved **Deny** denies every request to everything it targets: we cannot tell
//!     which requests its author meant to refuse, and refusing all of them is the only choice
//!     that never lets through something that was meant to be denied;
//!   - an unresolved **Allow** never allows: dropping it can only remove access, never add
//!     it. It does not deny either: one team's typo in an Allow must not lock out everyone
//!     that other, valid Allows admit;
//!   - the granularity is the whole policy, not the rule: a policy is reviewed as a unit, and
//!     half-applying it could give effects its author never saw together.

use crate::cidr::Cidr;
use crate::snapshot::{
    CompiledResource, IdentityProviderKind, ObjectRef, PathMatch, ResourceProtocol, Snapshot,
    Tenant,
};
// foldhash, not std's SipHash: the evaluator looks these maps up on every request, by names
// from the snapshot, never by what a client sends (issue 19).
use foldhash::HashMap;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Why part of a policy could not be compiled. Each makes the policy unresolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The operator marked the policy unresolved.
    #[error("unresolved by the operator: {0}")]
    MarkedUnresolved(String),
    /// The policy's tenant is not in the snapshot.
    #[error("tenant {0:?} not found")]
    UnknownTenant(String),
    /// No rules.
    #[error("policy has no rules")]
    NoRules,
    /// A rule without principals in `from`.
    #[error("rule {0:?}: from needs at least one principal")]
    EmptyFrom(String),
    /// A `serviceAccount` principal with an empty namespace or an empty name.
    #[error("rule {0:?}: serviceAccount needs a namespace and non-empty names")]
    EmptyServiceAccount(String),
    /// A principal names a provider the tenant does not have.
    #[error("rule {rule:?}: identity provider {idp:?} not found in tenant {tenant:?}")]
    UnknownIdentityProvider {
        /// Rule name.
        rule: String,
        /// Provider name.
        idp: String,
        /// Tenant.
        tenant: String,
    },
    /// A principal names a provider of the wrong type.
    #[error(
        "rule {rule:?}: identity provider {idp:?} is of type {found}, {principal} needs {expected}"
    )]
    WrongIdentityProviderType {
        /// Rule name.
        rule: String,
        /// Provider name.
        idp: String,
        /// Principal kind.
        principal: &'static str,
        /// What it needs.
        expected: &'static str,
        /// What the provider is.
        found: &'static str,
    },
    /// A CIDR did not parse.
    #[error("rule {rule:?}: {source}")]
    InvalidCidr {
        /// Rule name.
        rule: String,
        /// The parse error.
        source: crate::cidr::CidrError,
    },
    /// A schedule did not parse.
    #[error("rule {rule:?}: invalid schedule: {message}")]
    InvalidSchedule {
        /// Rule name.
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// A path value is not in normal form.
    #[error(
        "rule {rule:?}: path {value:?} must start with '/' and have no empty, '.' or '..' segments, '%', '?' or '#'"
    )]
    InvalidPath {
        /// Rule name.
        rule: String,
        /// The value.
        value: String,
    },
    /// A method is not an HTTP token.
    #[error("rule {rule:?}: invalid HTTP method {method:?}")]
    InvalidMethod {
        /// Rule name.
        rule: String,
        /// The method.
        method: String,
    },
    /// Methods or paths on a policy targeting a non-HTTP Resource.
    #[error(
        "rule {rule:?}: methods and paths only apply to HTTP Resources, and {resource} is {protocol:?}"
    )]
    HttpFieldsOnL4Target {
        /// Rule name.
        rule: String,
        /// The target.
        resource: ObjectRef,
        /// Its protocol.
        protocol: ResourceProtocol,
    },
}

/// A problem found while building a [`PolicySet`]: the policy it concerns and what is wrong.
/// Reported (status conditions, logs); the set is still built, failing closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileProblem {
    /// The policy.
    pub policy: ObjectRef,
    /// What is wrong.
    pub kind: CompileProblemKind,
}

/// What a [`CompileProblem`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileProblemKind {
    /// The policy is unresolved and fails closed.
    Unresolved(PolicyError),
    /// A target names a Resource that is not in the set; the target is ignored.
    UnknownTarget(ObjectRef),
    /// A target names a Resource of another tenant; the target is ignored.
    CrossTenantTarget(ObjectRef),
    /// A target names a sectionName the Resource does not have; no request can reach it.
    UnknownSection(ObjectRef, String),
}

impl fmt::Display for CompileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            CompileProblemKind::Unresolved(e) => {
                write!(f, "policy {}: fails closed: {e}", self.policy)
            }
            CompileProblemKind::UnknownTarget(r) => {
                write!(f, "policy {}: target Resource {r} not found", self.policy)
            }
            CompileProblemKind::CrossTenantTarget(r) => write!(
                f,
                "policy {}: target Resource {r} belongs to another tenant; ignored",
                self.policy
            ),
            CompileProblemKind::UnknownSection(r, s) => {
                write!(f, "policy {}: Resource {r} has no rule {s:?}", self.policy)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Wire types (part of the snapshot).
// ---------------------------------------------------------------------------------------

/// A Policy as the gateway enforces it. JSON:
/// ```text
/// { namespace, name, tenant, action: Allow|Deny, mode: Enforce|DryRun,
///   targets: [{resource: {namespace, name}, sectionName?}],
///   rules: [{name, from: [Principal], require: [Principal], exclude: [Principal],
///            to: [{methods[], paths: [{type, value}], hosts[], ports[]}],
///            when?: {schedule?: {days, from, to, timeZone}}}],
///   session?: {durationSeconds}, unresolved: ["reason", ...] }
/// Principal = {user: {idp?, subjects[], emails[], emailDomains[], groups[],
///                     claims: [{name, values[]}], scopes[]}}
///           | {clientCertificate: {idp?, sanURIs[], sanDNSNames[], sanEmails[], spkiSHA256[]}}
///           | {apiKey: {idp?, clientIDs[]}} | {site: {names[]}}
///           | {serviceAccount: {namespace, names[]}}
///           | {sourceCIDRs: {cidrs[], except[]}} | "authenticated" | "anonymous"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledPolicy {
    /// Namespace of the Policy.
    pub namespace: String,
    /// Name of the Policy.
    pub name: String,
    /// Tenant owning the namespace.
    pub tenant: String,
    /// Allow or Deny.
    pub action: PolicyAction,
    /// Enforce or DryRun. Default: Enforce.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Resolved targets (targetRefs and selectors, expanded by the operator).
    #[serde(default)]
    pub targets: Vec<PolicyTarget>,
    /// Rules; the policy matches when any rule does.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// Shorter session for requests this policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<PolicySession>,
    /// Why the operator could not resolve the policy. Non-empty: the policy fails closed.
    #[serde(default)]
    pub unresolved: Vec<String>,
}

impl CompiledPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
}

/// Allow or Deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyAction {
    /// Grants access when a rule matches.
    Allow,
    /// Refuses access when a rule matches, whatever any Allow says.
    Deny,
}

/// Enforcement mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyMode {
    /// Decides.
    #[default]
    Enforce,
    /// Evaluated in the shadow pass and reported, never enforced.
    DryRun,
}

/// A resolved target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTarget {
    /// The Resource.
    pub resource: ObjectRef,
    /// A rule of the Resource; absent: the whole Resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// Session override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySession {
    /// Maximum age of the login for requests this policy allows.
    pub duration_seconds: u64,
}

/// One rule: matches when `to AND when AND (any from) AND (all require) AND NOT (any exclude)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Name, reported in decisions.
    pub name: String,
    /// Principals, any of which must match; at least one.
    pub from: Vec<Principal>,
    /// Principals that must all match too.
    #[serde(default)]
    pub require: Vec<Principal>,
    /// Principals none of which may match.
    #[serde(default)]
    pub exclude: Vec<Principal>,
    /// Operations, any of which must match. Empty: every operation.
    #[serde(default)]
    pub to: Vec<Operation>,
    /// Time conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
}

/// Who: exactly one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Principal {
    /// A user or machine authenticated by an OIDC or JWT provider.
    User(UserPrincipal),
    /// A verified TLS client certificate.
    ClientCertificate(CertificatePrincipal),
    /// An API-key client.
    ApiKey(ApiKeyPrincipal),
    /// Traffic arriving through a WireGuard site of the policy's tenant.
    Site(SitePrincipal),
    /// A Kubernetes ServiceAccount of this cluster, proven by a projected token the API
    /// server's service-account issuer signed (never by a tenant's identity provider).
    ServiceAccount(ServiceAccountPrincipal),
    /// Client addresses.
    #[serde(rename = "sourceCIDRs")]
    SourceCidrs(SourceCidrs),
    /// Any authenticated caller (user, certificate, API key or site).
    Authenticated,
    /// Any caller at all, authenticated or not.
    Anonymous,
}

/// A user. Fields ANDed; values in a list ORed, except `claims` and `scopes` (all required).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPrincipal {
    /// Provider name; absent: any OIDC/JWT provider of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    /// `sub` values.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Email addresses (case-insensitive).
    #[serde(default)]
    pub emails: Vec<String>,
    /// Email domains (case-insensitive, exact domain after `@`).
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Groups; any one suffices.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Claims; every one must carry one of its values.
    #[serde(default)]
    pub claims: Vec<ClaimMatch>,
    /// Scopes; the token must carry every one.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A claim condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimMatch {
    /// Top-level claim name.
    pub name: String,
    /// Accepted values; a list-valued claim matches when it contains any.
    pub values: Vec<String>,
}

/// A client certificate. Fields ANDed; values in a list ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatePrincipal {
    /// Provider name; absent: any clientCertificate provider of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    /// URI SANs (exact).
    #[serde(default, rename = "sanURIs")]
    pub san_uris: Vec<String>,
    /// DNS SANs (case-insensitive, exact).
    #[serde(default, rename = "sanDNSNames")]
    pub san_dns_names: Vec<String>,
    /// Email SANs (case-insensitive).
    #[serde(default)]
    pub san_emails: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo, hex (case-insensitive).
    #[serde(default, rename = "spkiSHA256")]
    pub spki_sha256: Vec<String>,
}

/// An API-key client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyPrincipal {
    /// Provider name; absent: any apiKey provider of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    /// Client IDs; empty: any client of the provider.
    #[serde(default, rename = "clientIDs")]
    pub client_ids: Vec<String>,
}

/// WireGuard sites.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SitePrincipal {
    /// Site names.
    pub names: Vec<String>,
}

/// ServiceAccounts of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountPrincipal {
    /// Namespace of the ServiceAccounts.
    pub namespace: String,
    /// ServiceAccount names; empty: every ServiceAccount of the namespace.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Client address ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceCidrs {
    /// Ranges that match.
    pub cidrs: Vec<String>,
    /// Ranges carved out of `cidrs`.
    #[serde(default)]
    pub except: Vec<String>,
}

/// An operation. Fields ANDed, values in a list ORed; an empty field matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP methods (exact, case-sensitive as in RFC 9110).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Paths, compared with the normalised request path.
    #[serde(default)]
    pub paths: Vec<PathMatch>,
    /// Hosts (exact or `*.` wildcard covering one or more labels; case-insensitive).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Ports (the listener port).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Time conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct When {
    /// A weekly window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// A weekly window: on the listed days, from `from` (inclusive) to `to` (exclusive), local time
/// in `timeZone`. When `from` is after `to` the window crosses midnight and belongs to the day
/// it starts on (`Fri 22:00-06:00` covers Friday night into Saturday morning).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// `Mon-Fri`, `Mon,Wed,Fri`, or a list `["Mon", "Wed"]`. Ranges may wrap (`Fri-Mon`).
    pub days: Days,
    /// Start, `HH:MM`.
    pub from: String,
    /// End, `HH:MM`.
    pub to: String,
    /// IANA time zone. Default: UTC.
    #[serde(default = "default_tz")]
    pub time_zone: String,
}

fn default_tz() -> String {
    "UTC".into()
}

/// Days of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Days {
    /// `Mon-Fri` or `Mon,Wed,Fri`.
    Spec(String),
    /// `["Mon", "Wed"]`.
    List(Vec<String>),
}

// ---------------------------------------------------------------------------------------
// Compiled form.
// ---------------------------------------------------------------------------------------

/// `namespace/name` of a policy, cheap to clone into decisions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) key: PolicyRef,
    pub(crate) tenant: Arc<str>,
    pub(crate) action: PolicyAction,
    pub(crate) mode: PolicyMode,
    pub(crate) rules: Vec<Rule>,
    /// `session.durationSeconds`.
    pub(crate) session_seconds: Option<u64>,
    /// First reason it fails closed, if it does.
    pub(crate) unresolved: Option<PolicyError>,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) from: Vec<Matcher>,
    pub(crate) require: Vec<Matcher>,
    pub(crate) exclude: Vec<Matcher>,
    pub(crate) to: Vec<Op>,
    pub(crate) schedule: Option<Window>,
}

#[derive(Debug)]
pub(crate) enum Matcher {
    User(UserMatcher),
    Certificate(CertMatcher),
    ApiKey {
        idp: Option<String>,
        client_ids: Vec<String>,
    },
    Site(Vec<String>),
    ServiceAccount {
        namespace: String,
        names: Vec<String>,
    },
    Cidrs {
        cidrs: Vec<Cidr>,
        except: Vec<Cidr>,
    },
    Authenticated,
    Anonymous,
}

#[derive(Debug)]
pub(crate) struct UserMatcher {
    pub(crate) idp: Option<String>,
    pub(crate) subjects: Vec<String>,
    /// Lower-cased.
    pub(crate) emails: Vec<String>,
    /// Lower-cased.
    pub(crate) email_domains: Vec<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) claims: Vec<ClaimMatch>,
    pub(crate) scopes: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct CertMatcher {
    pub(crate) idp: Option<String>,
    pub(crate) san_uris: Vec<String>,
    /// Lower-cased.
    pub(crate) san_dns_names: Vec<String>,
    /// Lower-cased.
    pub(crate) san_emails: Vec<String>,
    /// Lower-cased hex.
    pub(crate) spki_sha256: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) methods: Vec<String>,
    pub(crate) paths: Vec<PathMatch>,
    /// Lower-cased; `*.x` wildcards kept as written.
    pub(crate) hosts: Vec<String>,
    pub(crate) ports: Vec<u16>,
}

/// A compiled weekly window.
#[derive(Debug)]
pub(crate) struct Window {
    /// Bit 0 = Monday .. bit 6 = Sunday.
    pub(crate) days: u8,
    /// Minutes after local midnight.
    pub(crate) from: u16,
    pub(crate) to: u16,
    pub(crate) tz: TimeZone,
}

/// The rule lists for one (Resource, section): indices into `PolicySet::policies`, in rank
/// order (namespace, then name), Deny and Allow apart.
#[derive(Debug, Default, Clone)]
pub(crate) struct Lists {
    pub(crate) deny: Vec<u32>,
    pub(crate) allow: Vec<u32>,
    pub(crate) has_enforced: bool,
    pub(crate) has_dry_run: bool,
}

#[derive(Debug)]
pub(crate) struct ResourceEntry {
    pub(crate) tenant: Arc<str>,
    pub(crate) protocol: ResourceProtocol,
    /// Policies targeting the whole Resource.
    pub(crate) whole: Lists,
    /// Per section: whole-Resource policies plus those naming the section.
    pub(crate) sections: HashMap<String, Lists>,
}

#[derive(Debug, Default)]
pub(crate) struct TenantInfo {
    /// Names of OIDC providers, sorted: where browsers can be sent to log in.
    pub(crate) oidc: Vec<Arc<str>>,
    /// Claims the tenant's policies name, sorted: what a browser session must carry
    /// ([`PolicySet::session_claims`]).
    pub(crate) session_claims: Vec<String>,
    /// Whether a policy of the tenant names a `serviceAccount` principal
    /// ([`PolicySet::names_service_accounts`]).
    pub(crate) service_accounts: bool,
}

/// Policies checked, pre-parsed and indexed by target. Build one per snapshot (it is
/// immutable; share it behind an `Arc` and swap it atomically with the snapshot).
#[derive(Debug, Default)]
pub struct PolicySet {
    pub(crate) policies: Vec<Policy>,
    pub(crate) resources: HashMap<String, HashMap<String, ResourceEntry>>,
    pub(crate) tenants: HashMap<String, TenantInfo>,
    problems: Vec<CompileProblem>,
}

impl PolicySet {
    /// Compiles the policies of a snapshot.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self::compile(&snapshot.tenants, &snapshot.resources, &snapshot.policies)
    }

    /// Compiles policies against tenants (for identity-provider references) and resources
    /// (for targets). Never fails: what cannot be compiled fails closed and is listed in
    /// [`Self::problems`]. The result does not depend on the order of any input list.
    pub fn compile(
        tenants: &[Tenant],
        resources: &[CompiledResource],
        policies: &[CompiledPolicy],
    ) -> Self {
        // Tenants by name; with duplicate names (an invalid snapshot) the first in a sorted
        // order wins, so the result still does not depend on input order.
        let mut sorted_tenants: Vec<&Tenant> = tenants.iter().collect();
        sorted_tenants
            .sort_by_cached_key(|t| (t.name.clone(), serde_json::to_string(t).unwrap_or_default()));
        let mut tenant_map: HashMap<&str, &Tenant> = HashMap::default();
        for t in &sorted_tenants {
            tenant_map.entry(t.name.as_str()).or_insert(t);
        }

        // Rank: (namespace, name); exact duplicates (an invalid snapshot) are ordered by their
        // JSON so that even then the result does not depend on input order.
        let mut order: Vec<&CompiledPolicy> = policies.iter().collect();
        order.sort_by(|a, b| {
            (a.namespace.as_str(), a.name.as_str())
                .cmp(&(b.namespace.as_str(), b.name.as_str()))
                .then_with(|| {
                    serde_json::to_string(a)
                        .unwrap_or_default()
                        .cmp(&serde_json::to_string(b).unwrap_or_default())
                })
        });

        // Resources: (ns, name) -> protocol, tenant, rule names. Duplicates: the first in a
        // sorted order wins, so the result is still order-independent.
        let mut sorted_resources: Vec<&CompiledResource> = resources.iter().collect();
        sorted_resources.sort_by(|a, b| {
            (a.namespace.as_str(), a.name.as_str()).cmp(&(b.namespace.as_str(), b.name.as_str()))
        });
        let mut index: HashMap<String, HashMap<String, ResourceEntry>> = HashMap::default();
        for r in &sorted_resources {
            let by_name = index.entry(r.namespace.clone()).or_default();
            by_name
                .entry(r.name.clone())
                .or_insert_with(|| ResourceEntry {
                    tenant: Arc::from(r.tenant.as_str()),
                    protocol: r.protocol,
                    whole: Lists::default(),
                    sections: r
                        .rules
                        .iter()
                        .map(|rule| (rule.name.clone(), Lists::default()))
                        .collect(),
                });
        }

        let mut problems = Vec::new();
        let mut compiled = Vec::with_capacity(order.len());
        for p in order {
            let key = p.key();
            let tenant = tenant_map.get(p.tenant.as_str()).copied();
            let mut unresolved = compile_check_operator_marks(p)
                .or_else(|| {
                    tenant
                        .is_none()
                        .then(|| PolicyError::UnknownTenant(p.tenant.clone()))
                })
                .or_else(|| p.rules.is_empty().then_some(PolicyError::NoRules));
            let mut rules = Vec::with_capacity(p.rules.len());
            for rule in &p.rules {
                match compile_rule(rule, tenant) {
                    Ok(r) => rules.push(r),
                    Err(e) => {
                        unresolved.get_or_insert(e);
                    }
                }
            }
            // HTTP fields on a non-HTTP target.
            if unresolved.is_none() {
                'targets: for t in &p.targets {
                    let Some(entry) = index
                        .get(&t.resource.namespace)
                        .and_then(|m| m.get(&t.resource.name))
                    else {
                        continue;
                    };
                    if entry.protocol == ResourceProtocol::Http || *entry.tenant != *p.tenant {
                        continue;
                    }
                    for rule in &p.rules {
                        if rule
                            .to
                            .iter()
                            .any(|op| !op.methods.is_empty() || !op.paths.is_empty())
                        {
                            unresolved = Some(PolicyError::HttpFieldsOnL4Target {
                                rule: rule.name.clone(),
                                resource: t.resource.clone(),
                                protocol: entry.protocol,
                            });
                            break 'targets;
                        }
                    }
                }
            }
            if let Some(e) = &unresolved {
                problems.push(CompileProblem {
                    policy: key.clone(),
                    kind: CompileProblemKind::Unresolved(e.clone()),
                });
            }
            compiled.push((
                p,
                Policy {
                    key: PolicyRef {
                        namespace: Arc::from(p.namespace.as_str()),
                        name: Arc::from(p.name.as_str()),
                    },
                    tenant: Arc::from(p.tenant.as_str()),
                    action: p.action,
                    mode: p.mode,
                    rules,
                    session_seconds: p.session.as_ref().map(|s| s.duration_seconds),
                    unresolved,
                },
            ));
        }

        // Index targets. Policies are visited in rank order, so every list stays sorted.
        let mut set_policies = Vec::with_capacity(compiled.len());
        for (i, (wire, policy)) in compiled.into_iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            let mut seen: Vec<(&str, &str, Option<&str>)> = Vec::new();
            for t in &wire.targets {
                let dedup = (
                    t.resource.namespace.as_str(),
                    t.resource.name.as_str(),
                    t.section_name.as_deref(),
                );
                if seen.contains(&dedup) {
                    continue;
                }
                seen.push(dedup);
                let Some(entry) = index
                    .get_mut(&t.resource.namespace)
                    .and_then(|m| m.get_mut(&t.resource.name))
                else {
                    problems.push(CompileProblem {
                        policy: wire.key(),
                        kind: CompileProblemKind::UnknownTarget(t.resource.clone()),
                    });
                    continue;
                };
                if entry.tenant != policy.tenant {
                    problems.push(CompileProblem {
                        policy: wire.key(),
                        kind: CompileProblemKind::CrossTenantTarget(t.resource.clone()),
                    });
                    continue;
                }
                match &t.section_name {
                    None => {
                        push(&mut entry.whole, idx, &policy);
                        for lists in entry.sections.values_mut() {
                            push(lists, idx, &policy);
                        }
                    }
                    Some(section) => match entry.sections.get_mut(section) {
                        Some(lists) => push(lists, idx, &policy),
                        None => problems.push(CompileProblem {
                            policy: wire.key(),
                            kind: CompileProblemKind::UnknownSection(
                                t.resource.clone(),
                                section.clone(),
                            ),
                        }),
                    },
                }
            }
            set_policies.push(policy);
        }
        // A whole-Resource target and a section target of the same policy would list it twice
        // in the section; remove adjacent duplicates (lists are in rank order).
        for by_name in index.values_mut() {
            for entry in by_name.values_mut() {
                for lists in entry.sections.values_mut() {
                    lists.deny.dedup();
                    lists.allow.dedup();
                }
            }
        }

        let tenants_info = tenant_map
            .values()
            .map(|t| {
                let mut oidc: Vec<Arc<str>> = t
                    .identity_providers
                    .iter()
                    .filter(|p| matches!(p.kind, IdentityProviderKind::Oidc(_)))
                    .map(|p| Arc::from(p.name.as_str()))
                    .collect();
                oidc.sort();
                oidc.dedup();
                let session_claims = claims_named(
                    set_policies
                        .iter()
                        .filter(|p: &&Policy| *p.tenant == *t.name),
                );
                let service_accounts = set_policies
                    .iter()
                    .filter(|p: &&Policy| *p.tenant == *t.name)
                    .flat_map(|p| &p.rules)
                    .flat_map(|r| r.from.iter().chain(&r.require).chain(&r.exclude))
                    .any(|m| matches!(m, Matcher::ServiceAccount { .. }));
                (
                    t.name.clone(),
                    TenantInfo {
                        oidc,
                        session_claims,
                        service_accounts,
                    },
                )
            })
            .collect();

        problems.sort_by(|a, b| {
            a.policy
                .cmp(&b.policy)
                .then_with(|| a.to_string().cmp(&b.to_string()))
        });
        problems.dedup();
        Self {
            policies: set_policies,
            resources: index,
            tenants: tenants_info,
            problems,
        }
    }

    /// What could not be compiled or resolved (each policy listed fails closed or has a
    /// target ignored), sorted by policy.
    pub fn problems(&self) -> &[CompileProblem] {
        &self.problems
    }

    /// Number of policies in the set.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set has no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether any enforcing Allow policy that is resolved targets the Resource (or one of its
    /// sections): what the Resource's `Reachable` condition reports.
    pub fn reachable(&self, namespace: &str, name: &str) -> bool {
        let Some(entry) = self.resource_entry(namespace, name) else {
            return false;
        };
        std::iter::once(&entry.whole)
            .chain(entry.sections.values())
            .flat_map(|l| l.allow.iter())
            .any(|&i| {
                let p = &self.policies[i as usize];
                p.mode == PolicyMode::Enforce && p.unresolved.is_none()
            })
    }

    pub(crate) fn resource_entry(&self, namespace: &str, name: &str) -> Option<&ResourceEntry> {
        self.resources.get(namespace)?.get(name)
    }

    /// The claims the policies of `tenant` name (in any mode, any clause), sorted, plus
    /// `email` when one names `emails` or `emailDomains` (a restricting clause reads the raw
    /// `email` claim, see [`crate::eval`]): what a browser session of that tenant must carry
    /// for its policies to decide as they would for a bearer token. Empty for an unknown
    /// tenant.
    pub fn session_claims(&self, tenant: &str) -> &[String] {
        self.tenants
            .get(tenant)
            .map_or(&[], |t| t.session_claims.as_slice())
    }

    /// Whether a policy of `tenant` (any mode, any clause) names a `serviceAccount`
    /// principal: only then does the gateway verify ServiceAccount tokens for the tenant's
    /// Resources (and treat an `Authorization: Bearer` as a credential even without a JWT
    /// provider). False for an unknown tenant.
    pub fn names_service_accounts(&self, tenant: &str) -> bool {
        self.tenants.get(tenant).is_some_and(|t| t.service_accounts)
    }
}

/// See [`PolicySet::session_claims`].
fn claims_named<'a>(policies: impl Iterator<Item = &'a Policy>) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for p in policies {
        for r in &p.rules {
            for m in r.from.iter().chain(&r.require).chain(&r.exclude) {
                if let Matcher::User(u) = m {
                    out.extend(u.claims.iter().map(|c| c.name.clone()));
                    if !u.emails.is_empty() || !u.email_domains.is_empty() {
                        out.insert("email".to_string());
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

fn push(lists: &mut Lists, idx: u32, policy: &Policy) {
    match policy.action {
        PolicyAction::Deny => lists.deny.push(idx),
        PolicyAction::Allow => lists.allow.push(idx),
    }
    match policy.mode {
        PolicyMode::Enforce => lists.has_enforced = true,
        PolicyMode::DryRun => lists.has_dry_run = true,
    }
}

fn compile_check_operator_marks(p: &CompiledPolicy) -> Option<PolicyError> {
    p.unresolved
        .first()
        .map(|reason| PolicyError::MarkedUnresolved(reason.clone()))
}

fn compile_rule(rule: &PolicyRule, tenant: Option<&Tenant>) -> Result<Rule, PolicyError> {
    if rule.from.is_empty() {
        return Err(PolicyError::EmptyFrom(rule.name.clone()));
    }
    let principals = |list: &[Principal]| -> Result<Vec<Matcher>, PolicyError> {
        list.iter()
            .map(|p| compile_principal(p, &rule.name, tenant))
            .collect()
    };
    let to = rule
        .to
        .iter()
        .map(|op| compile_op(op, &rule.name))
        .collect::<Result<_, _>>()?;
    let schedule = match rule.when.as_ref().and_then(|w| w.schedule.as_ref()) {
        Some(s) => Some(
            compile_schedule(s).map_err(|message| PolicyError::InvalidSchedule {
                rule: rule.name.clone(),
                message,
            })?,
        ),
        None => None,
    };
    Ok(Rule {
        name: Arc::from(rule.name.as_str()),
        from: principals(&rule.from)?,
        require: principals(&rule.require)?,
        exclude: principals(&rule.exclude)?,
        to,
        schedule,
    })
}

fn check_idp(
    idp: Option<&String>,
    rule: &str,
    tenant: Option<&Tenant>,
    principal: &'static str,
    expected: &'static str,
    ok: fn(&IdentityProviderKind) -> bool,
) -> Result<(), PolicyError> {
    let Some(idp) = idp else { return Ok(()) };
    let Some(tenant) = tenant else {
        // Unknown tenant is reported on its own.
        return Ok(());
    };
    match tenant.identity_provider(idp) {
        None => Err(PolicyError::UnknownIdentityProvider {
            rule: rule.to_string(),
            idp: idp.clone(),
            tenant: tenant.name.clone(),
        }),
        Some(p) if !ok(&p.kind) => Err(PolicyError::WrongIdentityProviderType {
            rule: rule.to_string(),
            idp: idp.clone(),
            principal,
            expected,
            found: p.kind.type_name(),
        }),
        Some(_) => Ok(()),
    }
}

fn compile_principal(
    p: &Principal,
    rule: &str,
    tenant: Option<&Tenant>,
) -> Result<Matcher, PolicyError> {
    let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>();
    Ok(match p {
        Principal::User(u) => {
            check_idp(u.idp.as_ref(), rule, tenant, "user", "oidc or jwt", |k| {
                matches!(
                    k,
                    IdentityProviderKind::Oidc(_) | IdentityProviderKind::Jwt(_)
                )
            })?;
            Matcher::User(UserMatcher {
                idp: u.idp.clone(),
                subjects: u.subjects.clone(),
                emails: lower(&u.emails),
                email_domains: u
                    .email_domains
                    .iter()
                    .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                    .collect(),
                groups: u.groups.clone(),
                claims: u.claims.clone(),
                scopes: u.scopes.clone(),
            })
        }
        Principal::ClientCertificate(c) => {
            check_idp(
                c.idp.as_ref(),
                rule,
                tenant,
                "clientCertificate",
                "clientCertificate",
                |k| matches!(k, IdentityProviderKind::ClientCertificate(_)),
            )?;
            Matcher::Certificate(CertMatcher {
                idp: c.idp.clone(),
                san_uris: c.san_uris.clone(),
                san_dns_names: lower(&c.san_dns_names),
                san_emails: lower(&c.san_emails),
                spki_sha256: lower(&c.spki_sha256),
            })
        }
        Principal::ApiKey(a) => {
            check_idp(a.idp.as_ref(), rule, tenant, "apiKey", "apiKey", |k| {
                matches!(k, IdentityProviderKind::ApiKey(_))
            })?;
            Matcher::ApiKey {
                idp: a.idp.clone(),
                client_ids: a.client_ids.clone(),
            }
        }
        Principal::Site(s) => Matcher::Site(s.names.clone()),
        Principal::ServiceAccount(s) => {
            if s.namespace.is_empty() || s.names.iter().any(String::is_empty) {
                return Err(PolicyError::EmptyServiceAccount(rule.to_string()));
            }
            Matcher::ServiceAccount {
                namespace: s.namespace.clone(),
                names: s.names.clone(),
            }
        }
        Principal::SourceCidrs(s) => {
            let parse = |v: &[String]| -> Result<Vec<Cidr>, PolicyError> {
                v.iter()
                    .map(|c| {
                        c.parse().map_err(|source| PolicyError::InvalidCidr {
                            rule: rule.to_string(),
                            source,
                        })
                    })
                    .collect()
            };
            Matcher::Cidrs {
                cidrs: parse(&s.cidrs)?,
                except: parse(&s.except)?,
            }
        }
        Principal::Authenticated => Matcher::Authenticated,
        Principal::Anonymous => Matcher::Anonymous,
    })
}

/// Whether `m` is an HTTP method token (RFC 9110 `token`).
pub(crate) fn is_method_token(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 32
        && m.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn compile_op(op: &Operation, rule: &str) -> Result<Op, PolicyError> {
    for m in &op.methods {
        if !is_method_token(m) {
            return Err(PolicyError::InvalidMethod {
                rule: rule.to_string(),
                method: m.clone(),
            });
        }
    }
    for p in &op.paths {
        if !crate::path::is_normalized_rule_path(&p.value) {
            return Err(PolicyError::InvalidPath {
                rule: rule.to_string(),
                value: p.value.clone(),
            });
        }
    }
    Ok(Op {
        methods: op.methods.clone(),
        paths: op.paths.clone(),
        hosts: op
            .hosts
            .iter()
            .map(|h| h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase())
            .collect(),
        ports: op.ports.clone(),
    })
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn day_index(name: &str) -> Result<u8, String> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name.trim()))
        .map(|i| i as u8)
        .ok_or_else(|| format!("unknown day {name:?} (use Mon Tue Wed Thu Fri Sat Sun)"))
}

/// Parses `Mon-Fri`, `Mon,Wed`, `["Mon","Tue"]` into a bit set (bit 0 = Monday).
pub(crate) fn parse_days(days: &Days) -> Result<u8, String> {
    let items: Vec<&str> = match days {
        Days::Spec(s) => s.split(',').collect(),
        Days::List(l) => l.iter().map(String::as_str).collect(),
    };
    if items.is_empty() || items.iter().all(|s| s.trim().is_empty()) {
        return Err("days is empty".into());
    }
    let mut mask = 0u8;
    for item in items {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a)?, day_index(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day_index(item)?,
        }
    }
    Ok(mask)
}

/// Parses `HH:MM` (24h) into minutes after midnight.
pub(crate) fn parse_hhmm(s: &str) -> Result<u16, String> {
    let bad = || format!("invalid time {s:?}: use HH:MM, 00:00 to 23:59");
    let b = s.as_bytes();
    if b.len() != 5
        || b[2] != b':'
        || !b
            .iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit())
    {
        return Err(bad());
    }
    let h = u16::from(b[0] - b'0') * 10 + u16::from(b[1] - b'0');
    let m = u16::from(b[3] - b'0') * 10 + u16::from(b[4] - b'0');
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub(crate) fn compile_schedule(s: &Schedule) -> Result<Window, String> {
    let days = parse_days(&s.days)?;
    let from = parse_hhmm(&s.from)?;
    let to = parse_hhmm(&s.to)?;
    if from == to {
        return Err("from and to must differ".into());
    }
    // The bundled database, never the filesystem: same answer on every machine.
    let tz = jiff::tz::TimeZoneDatabase::bundled()
        .get(&s.time_zone)
        .map_err(|_| format!("unknown time zone {:?}", s.time_zone))?;
    Ok(Window { days, from, to, tz })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse() {
        assert_eq!(
            parse_days(&Days::Spec("Mon-Fri".into())).unwrap(),
            0b0011111
        );
        assert_eq!(
            parse_days(&Days::Spec("Sat,Sun".into())).unwrap(),
            0b1100000
        );
        assert_eq!(
            parse_days(&Days::Spec("Fri-Mon".into())).unwrap(),
            0b1110001
        );
        assert_eq!(
            parse_days(&Days::List(vec!["Mon".into(), "Wed".into()])).unwrap(),
            0b0000101
        );
        assert_eq!(parse_days(&Days::Spec("Wed".into())).unwrap(), 0b0000100);
        assert!(parse_days(&Days::Spec("Funday".into())).is_err());
        assert!(parse_days(&Days::Spec("".into())).is_err());
        assert!(parse_days(&Days::List(vec![])).is_err());
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_hhmm("00:00").unwrap(), 0);
        assert_eq!(parse_hhmm("07:30").unwrap(), 450);
        assert_eq!(parse_hhmm("23:59").unwrap(), 1439);
        for bad in ["24:00", "7:30", "07:60", "0730", "07-30", "ab:cd", "07:3０"] {
            assert!(parse_hhmm(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn methods() {
        assert!(is_method_token("GET"));
        assert!(is_method_token("PROPFIND"));
        assert!(!is_method_token(""));
        assert!(!is_method_token("GE T"));
        assert!(!is_method_token("GET\r\n"));
    }
}

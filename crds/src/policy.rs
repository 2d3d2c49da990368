//! `Policy` (namespaced): who may reach which Resources, under which conditions.
//!
//! Semantics (order-independent, so GitOps never depends on apply order; see ARCHITECTURE.md):
//! any matching Deny denies; else any matching Allow allows; else deny. A rule matches when
//! `to AND when AND (any from) AND (all require) AND NOT (any exclude)`. DryRun policies are
//! evaluated and reported, never enforced. Embedded `tests` are run by the operator (and by
//! `rustronaut policy test` in CI) against the whole effective policy set of each target.

use crate::common::{
    Condition, DURATION_PATTERN, HOSTNAME_PATTERN, HttpMethod, LABEL_PATTERN, NAME_PATTERN,
    PathMatch,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The Policy spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "rustronaut.io",
    version = "v1alpha1",
    kind = "Policy",
    doc = "Who may reach which Resources, under which conditions. Deny overrides Allow; without a matching Allow, access is denied.",
    plural = "policies",
    shortname = "rtnpol",
    category = "rustronaut",
    namespaced,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Tests","type":"string","jsonPath":".status.conditions[?(@.type==\"TestsPassed\")].status","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.targetRefs) > 0 || has(self.targetSelector)").message("a Policy needs targetRefs or targetSelector"))]
#[x_kube(validation = Rule::new("!has(self.namespaceSelector) || has(self.targetSelector)").message("namespaceSelector widens targetSelector and needs it"))]
pub struct PolicySpec {
    /// Resources this Policy applies to, in its own namespace. Union with targetSelector.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub target_refs: Vec<TargetRef>,
    /// Resources (in this namespace) whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Only for Policies in the tenant's adminNamespace: also select the Resources matching
    /// targetSelector in those of the tenant's namespaces whose Namespace labels match this
    /// selector (never beyond the tenant). A namespace whose labels the operator does not know
    /// yet is selected by a Deny and not by an Allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Allow or Deny.
    pub action: PolicyAction,
    /// Enforce, or DryRun to see what the Policy would do without enforcing it. Default: Enforce.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Rules; the Policy matches a request when any rule does.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rules: Vec<PolicyRule>,
    /// Shorter OIDC session for requests this Policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<PolicySession>,
    /// Expected decisions, checked against the whole effective policy set of the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tests: Vec<PolicyTest>,
}

/// A target Resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Kind of the target. Default: Resource.
    #[serde(default)]
    pub kind: TargetKind,
    /// Name of the Resource.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// A rule of the Resource (HTTP only). Absent: the whole Resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub section_name: Option<String>,
}

/// Kinds a Policy can target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TargetKind {
    /// A Resource.
    #[default]
    Resource,
}

/// Allow or Deny.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyAction {
    /// Grants access when a rule matches (union with other Allows).
    Allow,
    /// Refuses access when a rule matches, whatever any Allow says.
    Deny,
}

/// Enforcement mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum PolicyMode {
    /// The Policy decides.
    #[default]
    Enforce,
    /// The Policy is evaluated and its would-be effect logged and counted, never enforced.
    DryRun,
}

/// One rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Rule name, reported in decisions and logs.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
    /// Principals, any of which must match. There is no implicit "anyone": use
    /// `anonymous: true` or `authenticated: true` explicitly.
    #[schemars(length(min = 1, max = 32))]
    pub from: Vec<Principal>,
    /// Principals that must all match as well (e.g. an MFA claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub require: Vec<Principal>,
    /// Principals none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub exclude: Vec<Principal>,
    /// Operations, any of which must match. Empty: every operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub to: Vec<Operation>,
    /// Time conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
}

/// Who: exactly one of the fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.user), has(self.clientCertificate), has(self.apiKey), has(self.site), has(self.serviceAccount), has(self.sourceCIDRs), has(self.authenticated), has(self.anonymous)].filter(x, x).size() == 1").message("a principal is exactly one of user, clientCertificate, apiKey, site, serviceAccount, sourceCIDRs, authenticated, anonymous"))]
pub struct Principal {
    /// A user or machine authenticated by an OIDC or JWT provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Box<UserPrincipal>>,
    /// A TLS client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<Box<CertificatePrincipal>>,
    /// An API key client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Box<ApiKeyPrincipal>>,
    /// Traffic arriving through a WireGuard site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<SitePrincipal>,
    /// A workload of this cluster running as one of these Kubernetes ServiceAccounts,
    /// proven by its projected token (audience `rustronaut.io`) signed by the API server's
    /// service-account issuer. A tenant identity provider's token never matches it, whatever
    /// its `sub` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<Box<ServiceAccountPrincipal>>,
    /// Client addresses (after trusted-proxy resolution).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "sourceCIDRs"
    )]
    pub source_cidrs: Option<SourceCidrs>,
    /// Any authenticated caller. Must be true when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == true").message("authenticated must be true when set"))]
    pub authenticated: Option<bool>,
    /// Any caller, authenticated or not. Must be true when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == true").message("anonymous must be true when set"))]
    pub anonymous: Option<bool>,
}

/// A user. Fields are ANDed; the values inside one list are ORed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.idp) || size(self.subjects) + size(self.emails) + size(self.emailDomains) + size(self.groups) + size(self.claims) + size(self.scopes) > 0").message("user needs at least one of idp, subjects, emails, emailDomains, groups, claims, scopes"))]
pub struct UserPrincipal {
    /// Identity provider (by name in the Tenant). Absent: any of the tenant's OIDC/JWT providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub idp: Option<String>,
    /// `sub` claim values.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub subjects: Vec<String>,
    /// Verified email addresses (compared case-insensitively).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 3, max = 254)))]
    pub emails: Vec<String>,
    /// Email domains, e.g. `acme.example`.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), regex(pattern = HOSTNAME_PATTERN)))]
    pub email_domains: Vec<String>,
    /// Groups (from the provider's groups claim); any one suffices.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub groups: Vec<String>,
    /// Claims, all of which must carry one of the listed values.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub claims: Vec<ClaimMatch>,
    /// OAuth scopes, all of which the token must carry.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 128)))]
    pub scopes: Vec<String>,
}

/// A claim condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimMatch {
    /// Claim name (top-level claim of the token).
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Accepted values; a list-valued claim matches when it contains any of them.
    #[schemars(length(min = 1, max = 32), inner(length(max = 256)))]
    pub values: Vec<String>,
}

/// A client certificate. Fields are ANDed; values inside a list are ORed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificatePrincipal {
    /// Identity provider of type clientCertificate. Absent: any such provider of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub idp: Option<String>,
    /// URI SANs, e.g. SPIFFE IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "sanURIs")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 2048)))]
    pub san_uris: Vec<String>,
    /// DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "sanDNSNames")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub san_dns_names: Vec<String>,
    /// Email SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 3, max = 254)))]
    pub san_emails: Vec<String>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, hex (pins one key).
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "spkiSHA256")]
    #[schemars(
        length(max = 32),
        inner(length(min = 64, max = 64), regex(pattern = "^[0-9a-f]{64}$"))
    )]
    pub spki_sha256: Vec<String>,
}

/// An API-key client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyPrincipal {
    /// Identity provider of type apiKey. Absent: any such provider of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub idp: Option<String>,
    /// Client IDs (keys of the provider's Secrets). Empty: any client of the provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "clientIDs")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub client_ids: Vec<String>,
}

/// Traffic from WireGuard sites.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SitePrincipal {
    /// Site names (of the tenant's Gateways' tunnels).
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN)))]
    pub names: Vec<String>,
}

/// ServiceAccounts of one namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountPrincipal {
    /// Namespace of the ServiceAccounts (any namespace of the cluster: admitting callers
    /// from another team's namespace is this Policy's decision).
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub namespace: String,
    /// ServiceAccount names. Empty: every ServiceAccount of the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253), regex(pattern = NAME_PATTERN)))]
    pub names: Vec<String>,
}

/// Client address ranges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SourceCidrs {
    /// Ranges that match.
    #[schemars(length(min = 1, max = 64), inner(length(min = 2, max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("cidrs must be CIDRs such as 10.0.0.0/8"))]
    pub cidrs: Vec<String>,
    /// Ranges carved out of cidrs.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 2, max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("except must be CIDRs such as 10.0.0.0/24"))]
    pub except: Vec<String>,
}

/// What: an operation on the target. Fields are ANDed; values inside a list are ORed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// HTTP methods (HTTP targets only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,
    /// Paths (HTTP targets only), compared after normalisation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub paths: Vec<PathMatch>,
    /// Ports (TCP/UDP targets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
}

/// Time conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct When {
    /// A weekly window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// A weekly time window in a time zone. `from` may be after `to` for windows across midnight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.from != self.to").message("from and to must differ"))]
pub struct Schedule {
    /// Days, as a range `Mon-Fri` or a list `Mon,Wed,Fri` (Mon Tue Wed Thu Fri Sat Sun).
    #[schemars(
        length(min = 3, max = 27),
        regex(
            pattern = r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun)((-(Mon|Tue|Wed|Thu|Fri|Sat|Sun))|(,(Mon|Tue|Wed|Thu|Fri|Sat|Sun))*)$"
        )
    )]
    pub days: String,
    /// Start, `HH:MM` (24h), inclusive.
    #[schemars(
        length(min = 5, max = 5),
        regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    )]
    pub from: String,
    /// End, `HH:MM` (24h), exclusive.
    #[schemars(
        length(min = 5, max = 5),
        regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    )]
    pub to: String,
    /// IANA time zone, e.g. `Europe/Berlin`. Default: UTC.
    #[serde(default = "default_tz")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$")
    )]
    pub time_zone: String,
}

/// Session override.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySession {
    /// Maximum age of the login for requests this Policy allows, e.g. `4h`.
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    pub duration: String,
}

/// An embedded test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTest {
    /// Test name.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
    /// Expected outcome of the whole effective policy set (not just this Policy).
    pub expect: PolicyAction,
    /// The request.
    #[serde(default)]
    pub request: TestRequest,
}

/// A request for a test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TestRequest {
    /// Target Resource name. Default: the Policy's first targetRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub resource: Option<String>,
    /// Rule of the Resource. Default: the rule the request's path and method route to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub section_name: Option<String>,
    /// Who is calling. Absent: an anonymous caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Box<TestIdentity>>,
    /// HTTP method. Default: GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Path. Default: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub path: Option<String>,
    /// Port (TCP/UDP targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Client address. Default: 192.0.2.1.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sourceIP")]
    #[schemars(length(min = 2, max = 45))]
    pub source_ip: Option<String>,
    /// Evaluation time, RFC 3339. Default: Wednesday 2025-01-01T12:00:00Z.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 20, max = 40))]
    pub time: Option<String>,
}

/// The caller of a test request: any combination of credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TestIdentity {
    /// An OIDC/JWT user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<TestUser>,
    /// A client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<TestCertificate>,
    /// An API key client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<TestApiKey>,
    /// A WireGuard site name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub site: Option<String>,
    /// A Kubernetes ServiceAccount (as its verified token would say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<TestServiceAccount>,
}

/// A test ServiceAccount.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TestServiceAccount {
    /// Namespace.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// ServiceAccount name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A test user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TestUser {
    /// Provider name.
    #[schemars(length(min = 1, max = 63))]
    pub idp: String,
    /// `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub subject: Option<String>,
    /// Email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254))]
    pub email: Option<String>,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub groups: Vec<String>,
    /// Other claims (name to values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: BTreeMap<String, Vec<String>>,
    /// Scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 128)))]
    pub scopes: Vec<String>,
}

/// A test client certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TestCertificate {
    /// Provider name.
    #[schemars(length(min = 1, max = 63))]
    pub idp: String,
    /// URI SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "sanURIs")]
    #[schemars(length(max = 16), inner(length(max = 2048)))]
    pub san_uris: Vec<String>,
    /// DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "sanDNSNames")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    pub san_dns_names: Vec<String>,
    /// Email SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 254)))]
    pub san_emails: Vec<String>,
}

/// A test API-key client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TestApiKey {
    /// Provider name.
    #[schemars(length(min = 1, max = 63))]
    pub idp: String,
    /// Client ID.
    #[serde(rename = "clientID")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id: String,
}

/// Observed state of a Policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Accepted, ResolvedRefs, Programmed, TestsPassed, Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Resolved targets and the Gateways serving them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub targets: Vec<PolicyTargetStatus>,
}

/// A resolved target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetStatus {
    /// `namespace/name` of the Resource.
    #[schemars(length(max = 320))]
    pub resource: String,
    /// Rule, if targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub section_name: Option<String>,
    /// Gateways (`namespace/name`) enforcing it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = 320)))]
    pub gateways: Vec<String>,
}

fn default_tz() -> String {
    "UTC".into()
}

//! `Tenant` (cluster-scoped): an organisation, the namespaces and domains it owns exclusively,
//! the identity providers its policies may name, and its quotas.
//!
//! Identity providers only *authenticate*; who is allowed is always a Policy's decision. That
//! split lets one provider serve many policies and keeps every allow rule visible in Policies.

use crate::common::{
    Condition, DURATION_PATTERN, HOSTNAME_PATTERN, LABEL_PATTERN, SecretKeyRef, SecretRef,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Tenant spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "rustronaut.io",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "An organisation: the namespaces and domains it owns exclusively, its identity providers and quotas.",
    plural = "tenants",
    shortname = "rtntenant",
    shortname = "tnt",
    category = "rustronaut",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces","priority":1}"#,
    printcolumn = r#"{"name":"Domains","type":"string","jsonPath":".spec.domains"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.adminNamespace) || self.adminNamespace in self.namespaces").message("adminNamespace must be one of namespaces"))]
pub struct TenantSpec {
    /// Namespaces this tenant owns. Claims are exclusive: when two Tenants claim one namespace,
    /// the older Tenant keeps it and the other gets Accepted=False/NamespaceClaimed. Resources
    /// and Policies are only honoured in these namespaces.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub namespaces: Vec<String>,

    /// Namespace for tenant-wide Policies and for the Secrets the identity providers name.
    /// Policies here may select Resources in every namespace of the tenant. Default: the first
    /// entry of namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub admin_namespace: Option<String>,

    /// DNS names this tenant's Resources may use, exact (`app.acme.example`) or wildcard
    /// (`*.acme.example`, which covers one or more labels). Claims are exclusive, oldest wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253), regex(pattern = HOSTNAME_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub domains: Vec<String>,

    /// Who may administer this tenant's objects: the operator binds these users and groups to
    /// an admin Role in each of the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admins: Option<TenantAdmins>,

    /// How people and machines prove who they are. Policies name providers by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub identity_providers: Vec<IdentityProvider>,

    /// Browser sessions created by OIDC login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSpec>,

    /// Upper bounds on what the tenant may create. Absent fields are unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,
}

/// Users and groups that administer a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantAdmins {
    /// Kubernetes groups (as the API server authenticates them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
    /// Kubernetes user names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub users: Vec<String>,
}

/// One identity provider: exactly one of `oidc`, `jwt`, `clientCertificate`, `apiKey`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.oidc), has(self.jwt), has(self.clientCertificate), has(self.apiKey)].filter(x, x).size() == 1").message("exactly one of oidc, jwt, clientCertificate, apiKey must be set"))]
pub struct IdentityProvider {
    /// Name that Policies use to refer to this provider; unique within the tenant.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_PATTERN))]
    pub name: String,
    /// Browser login with OpenID Connect (authorization code flow with PKCE at the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcProvider>,
    /// Bearer JWTs (machine clients, or tokens minted by another system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtProvider>,
    /// TLS client certificates issued by the tenant's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateProvider>,
    /// Static API keys, stored as salted hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyProvider>,
}

/// OpenID Connect provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcProvider {
    /// Issuer URL; discovery is read from `<issuer>/.well-known/openid-configuration`. Must be
    /// https: tokens and discovery over plain HTTP could be forged on the path.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && isURL(self)").message("issuer must be an https URL"))]
    pub issuer: String,
    /// OAuth2 client ID registered with the provider.
    #[serde(rename = "clientID")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// Secret (in the tenant's adminNamespace) holding the client secret. Default key:
    /// `clientSecret`.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes to request. Default: openid, email, profile.
    #[serde(default = "default_scopes")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 128)))]
    pub scopes: Vec<String>,
    /// Claim holding the user's groups. Default: `groups`.
    #[serde(default = "default_groups_claim")]
    #[schemars(length(min = 1, max = 128))]
    pub groups_claim: String,
}

/// A JWT issuer whose tokens are accepted as bearer credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.remoteJWKS) != has(self.jwksSecretRef)").message("exactly one of remoteJWKS, jwksSecretRef must be set"))]
pub struct JwtProvider {
    /// Expected `iss` claim.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    pub audiences: Vec<String>,
    /// Where to fetch the signing keys. The gateway caches them and refetches on an unknown
    /// `kid`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "remoteJWKS"
    )]
    pub remote_jwks: Option<RemoteJwks>,
    /// A Secret (in the tenant's adminNamespace) holding the JWKS document, for issuers the
    /// gateways cannot reach. Default key: `jwks.json`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "jwksSecretRef"
    )]
    pub jwks_secret_ref: Option<SecretKeyRef>,
    /// Claim holding the caller's groups. Default: `groups`.
    #[serde(default = "default_groups_claim")]
    #[schemars(length(min = 1, max = 128))]
    pub groups_claim: String,
    /// A cookie that may carry the token, for browsers (which cannot add an Authorization
    /// header to a navigation). `Authorization: Bearer` wins when both are sent; the cookie
    /// is removed before the request reaches the upstream, so the token is not leaked to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    )]
    pub cookie_name: Option<String>,
}

/// A remote JWKS endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// https URL of the JWKS document.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && isURL(self)").message("JWKS uri must be an https URL"))]
    pub uri: String,
}

/// Client certificates signed by one of the given CAs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateProvider {
    /// Secrets (in the tenant's adminNamespace) holding PEM CA bundles. Default key: `ca.crt`.
    #[schemars(length(min = 1, max = 8))]
    pub ca_certificate_refs: Vec<SecretKeyRef>,
}

/// API keys presented in a request header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyProvider {
    /// Secrets (in the tenant's adminNamespace) whose data maps a client ID to a salted hash of
    /// its key (`rustronaut apikey hash`); plaintext keys are never stored.
    #[schemars(length(min = 1, max = 8))]
    pub secret_refs: Vec<SecretRef>,
    /// Header carrying the key. Default: `X-Api-Key`.
    #[serde(default = "default_api_key_header")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub header: String,
}

/// Browser session settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// How long a login lasts, e.g. `8h`. Default: 8h.
    #[serde(default = "default_session_duration")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    pub duration: String,
}

/// Quotas, checked by the operator when an object attaches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Maximum number of Resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub resources: Option<i32>,
    /// Maximum number of Policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub policies: Option<i32>,
    /// Maximum number of Gateways in the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub gateways: Option<i32>,
    /// Maximum number of tunnel sites across all Gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub sites: Option<i32>,
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Accepted (claims held), ResolvedRefs (provider Secrets found), Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current usage, for comparison with quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Quotas>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_api_key_header() -> String {
    "X-Api-Key".into()
}
fn default_session_duration() -> String {
    "8h".into()
}

impl TenantSpec {
    /// The effective admin namespace: `adminNamespace`, else the first claimed namespace.
    pub fn admin_namespace(&self) -> Option<&str> {
        self.admin_namespace
            .as_deref()
            .or_else(|| self.namespaces.first().map(String::as_str))
    }
}

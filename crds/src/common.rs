//! Small types every kind shares: references, durations, HTTP methods, path matches.
//!
//! Bounds (`maxLength`, `maxItems`) are on every string and list, not for tidiness: the API
//! server estimates the worst-case cost of each CEL rule from them and refuses a CRD whose rules
//! could cost too much. They also cap what one object can make the operator and gateways do.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a Kubernetes object name (RFC 1123 subdomain).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
/// Pattern of a DNS label (namespace names, list keys).
pub const LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of a hostname, optionally a wildcard (`*.example.com`).
pub const HOSTNAME_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of a duration: one or more `<number><unit>` with units ms, s, m, h (`90s`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A reference to a Secret in the namespace the referring object designates (the Tenant's
/// adminNamespace for Tenant fields, the object's own namespace otherwise).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Key inside the Secret. The default depends on the field; see its description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// A reference to a Secret by name only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
}

/// HTTP request methods a rule can match.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
        }
    }
}

/// How a path is compared, as in Gateway API's HTTPRoute. Both compare the normalised path
/// (percent-decoding, dot segments and repeated slashes resolved), so `/api/../admin` is
/// `/admin` for matching exactly as it is for forwarding.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value on a segment boundary: `/api` matches `/api` and
    /// `/api/x`, not `/apix`.
    #[default]
    PathPrefix,
}

/// A path condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.value.contains('//') && !self.value.contains('/./') && !self.value.contains('/../') && !self.value.endsWith('/..') && !self.value.endsWith('/.')").message("path must be normalised: no empty, '.' or '..' segments"))]
pub struct PathMatch {
    /// How to compare. Default: PathPrefix.
    #[serde(default, rename = "type")]
    pub type_: PathMatchType,
    /// The path to compare with; starts with `/`.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^?#%\s]*$"))]
    pub value: String,
}

/// Standard Kubernetes condition type, shared by every status.
pub type Condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

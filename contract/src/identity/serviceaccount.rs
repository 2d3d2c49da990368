//! Kubernetes ServiceAccount tokens: a workload in the cluster proves which ServiceAccount
//! it runs as with a projected token (audience [`AUDIENCE`]) that the API server's
//! service-account issuer signed. The gateway verifies it offline, against the issuer's
//! public keys (OIDC discovery + JWKS, fetched through the gateway's Kubernetes client),
//! with the same JWT code as every other bearer token ([`super::jwt`]); no TokenReview per
//! request.
//!
//! ```text
//!  token --JwtVerifier (issuer = discovered, aud ∋ rustronaut.io, exp/nbf/iat, signature)-->
//!    sub = system:serviceaccount:<ns>:<name>
//!    kubernetes.io = {namespace: <ns>, serviceaccount: {name: <name>}}  --must agree-->
//!  ServiceAccountIdentity { namespace, name }
//! ```
//!
//! Only this verifier ever yields a [`ServiceAccountIdentity`]: a tenant's JWT provider whose
//! token says `sub: system:serviceaccount:...` yields a user, which a `serviceAccount`
//! principal never matches (no issuer confusion).

use super::ServiceAccountIdentity;
use super::cache::TokenCache;
use super::jwt::{DEFAULT_CLOCK_SKEW, Jwks, JwtError, JwtVerifier, JwtVerifierConfig};
use serde_json::Value;

/// The audience a token must carry: a token minted for the API server (or any other
/// audience) is refused, so a token stolen from elsewhere is not a key here.
pub const AUDIENCE: &str = "rustronaut.io";
/// The provider name recorded in the verifier's settings (never a tenant provider's name:
/// tenant provider names are DNS labels, this one has a colon).
pub const ISSUER_NAME: &str = "kubernetes:serviceaccounts";
/// The `sub` prefix of ServiceAccount tokens.
pub const SUBJECT_PREFIX: &str = "system:serviceaccount:";
/// The path of the API server's OIDC discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The path of the API server's JWKS. Fetched from the API server the client talks to: the
/// discovery document's `jwks_uri` names the issuer's host, which need not resolve or be
/// trusted from where the gateway runs.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// Why a ServiceAccount token was refused (every variant means 401), or the issuer's
/// documents could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAccountError {
    /// The JWT checks failed (signature, issuer, audience, time, ...).
    #[error(transparent)]
    Token(#[from] JwtError),
    /// `sub` is not `system:serviceaccount:<namespace>:<name>`.
    #[error("subject {0:?} is not a ServiceAccount")]
    NotAServiceAccount(String),
    /// The `kubernetes.io` claim is absent or does not name the same account as `sub`.
    #[error("the kubernetes.io claim does not name the ServiceAccount of the subject {0:?}")]
    ClaimMismatch(String),
    /// The discovery document is not JSON with a non-empty `issuer`.
    #[error("invalid OIDC discovery document: {0}")]
    Discovery(String),
}

/// The `issuer` of an OIDC discovery document.
pub fn issuer_from_discovery(bytes: &[u8]) -> Result<String, ServiceAccountError> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| ServiceAccountError::Discovery(e.to_string()))?;
    match v.get("issuer").and_then(Value::as_str) {
        Some(i) if !i.is_empty() => Ok(i.to_string()),
        _ => Err(ServiceAccountError::Discovery(
            "no non-empty \"issuer\"".into(),
        )),
    }
}

/// `(namespace, name)` of a `system:serviceaccount:<ns>:<name>` subject.
pub fn parse_subject(sub: &str) -> Option<(&str, &str)> {
    let rest = sub.strip_prefix(SUBJECT_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// Verifies ServiceAccount tokens of one cluster. Immutable: build a new one when the keys
/// are refetched.
#[derive(Debug)]
pub struct ServiceAccountVerifier {
    jwt: JwtVerifier,
}

impl ServiceAccountVerifier {
    /// A verifier for tokens of `issuer` (the discovered one) signed by a key of `jwks`.
    pub fn new(issuer: &str, jwks: Jwks) -> Result<Self, JwtError> {
        let config = JwtVerifierConfig {
            idp: ISSUER_NAME.to_string(),
            issuer: issuer.to_string(),
            audiences: vec![AUDIENCE.to_string()],
            groups_claim: "groups".to_string(),
            email_claim: "email".to_string(),
            clock_skew: DEFAULT_CLOCK_SKEW,
        };
        Ok(Self {
            jwt: JwtVerifier::new(config, jwks)?,
        })
    }

    /// The issuer tokens must name.
    pub fn issuer(&self) -> &str {
        &self.jwt.config().issuer
    }

    /// Whether `token` claims (unverified) to come from this issuer: such a token is checked
    /// by this verifier alone, and any other token never by it.
    pub fn claims_issuer(&self, token: &str) -> bool {
        super::jwt::unverified_claims(token)
            .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string))
            .is_some_and(|iss| iss == self.issuer())
    }

    /// Verifies `token` at `now` (unix seconds).
    pub fn verify(
        &self,
        token: &str,
        now: u64,
    ) -> Result<ServiceAccountIdentity, ServiceAccountError> {
        self.jwt.verify(token, now)?;
        account(token)
    }

    /// [`verify`](Self::verify) with the signature check cached in `cache` (shared with the
    /// tenants' JWT providers: the key includes this verifier's fingerprint).
    pub fn verify_cached(
        &self,
        cache: &TokenCache,
        token: &str,
        now: u64,
    ) -> Result<ServiceAccountIdentity, ServiceAccountError> {
        self.jwt.verify_cached(cache, token, now)?;
        account(token)
    }
}

/// The account of a token whose signature and claims already verified: `sub` and the
/// `kubernetes.io` claim must name the same one.
fn account(token: &str) -> Result<ServiceAccountIdentity, ServiceAccountError> {
    let claims = super::jwt::unverified_claims(token).ok_or(JwtError::Malformed("payload"))?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (ns, name) =
        parse_subject(sub).ok_or_else(|| ServiceAccountError::NotAServiceAccount(sub.into()))?;
    let k8s = claims.get("kubernetes.io");
    let claim_ns = k8s.and_then(|k| k.get("namespace")).and_then(Value::as_str);
    let claim_name = k8s
        .and_then(|k| k.get("serviceaccount"))
        .and_then(|s| s.get("name"))
        .and_then(Value::as_str);
    if claim_ns != Some(ns) || claim_name != Some(name) {
        return Err(ServiceAccountError::ClaimMismatch(sub.into()));
    }
    Ok(ServiceAccountIdentity {
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_only_in_the_service_account_form() {
        assert_eq!(
            parse_subject("system:serviceaccount:team-a:api"),
            Some(("team-a", "api"))
        );
        for bad in [
            "system:serviceaccount:team-a",
            "system:serviceaccount::api",
            "system:serviceaccount:team-a:",
            "system:serviceaccount:a:b:c",
            "system:serviceaccounts:team-a:api",
            "alice",
        ] {
            assert_eq!(parse_subject(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_issuer_comes_from_the_discovery_document() {
        let doc = br#"{"issuer":"https://kubernetes.default.svc.cluster.local","jwks_uri":"https://x/openid/v1/jwks"}"#;
        assert_eq!(
            issuer_from_discovery(doc).unwrap(),
            "https://kubernetes.default.svc.cluster.local"
        );
        assert!(issuer_from_discovery(br#"{"issuer":""}"#).is_err());
        assert!(issuer_from_discovery(b"not json").is_err());
    }
}

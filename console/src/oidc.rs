//! OpenID Connect login: authorization code flow with PKCE (S256), as a confidential client.
//!
//! ```text
//! GET /login         -> LoginState sealed in a cookie, 302 to authorization_endpoint
//!                       (response_type=code, state, nonce, code_challenge=S256(verifier))
//! GET /oidc/callback -> state == cookie's state, POST token_endpoint (client_secret_basic,
//!                       code, redirect_uri, code_verifier), ID token iss/aud/exp/nonce,
//!                       userinfo -> Identity -> Session cookie, 302 back
//! ```
//!
//! The ID token's signature is not checked: the console receives it directly from the token
//! endpoint over TLS, authenticated with its client secret, which OpenID Connect Core 1.0
//! §3.1.3.7 (6) allows in place of the signature. Its `iss`, `aud`, `exp` and `nonce` are
//! still checked, and the userinfo response must name the same `sub`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Largest response body read from the IdP.
const MAX_BODY: usize = 256 * 1024;
/// Bound on one exchange with the IdP.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to the IdP or checking what it said.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The CA file could not be read or parsed.
    #[error("failed to load CA file {path}: {reason}")]
    Roots {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A request could not be sent or its response read.
    #[error("request to {url} failed: {reason}")]
    Request {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// The IdP answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A document was not the JSON expected.
    #[error("{what} is not valid: {reason}")]
    Invalid {
        /// Which document.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// An ID token claim did not match.
    #[error("the ID token's {claim} does not match")]
    Claim {
        /// Which claim.
        claim: &'static str,
    },
    /// The username falls in Kubernetes' reserved `system:` namespace.
    #[error("the user name {0:?} is reserved by Kubernetes")]
    ReservedName(String),
    /// The username claim was missing or not a string.
    #[error("the IdP did not provide the username claim {0:?}")]
    NoUsername(String),
}

/// The OIDC client settings.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// Issuer URL (https).
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Redirect URI registered at the IdP (`<public url>/oidc/callback`).
    pub redirect_uri: String,
    /// Scopes requested (`openid` is always included).
    pub scopes: Vec<String>,
    /// Claim naming the Kubernetes user (default `email`).
    pub username_claim: String,
    /// Prefix put before the username (like the API server's `--oidc-username-prefix`).
    pub username_prefix: String,
    /// Claim listing the person's groups (default `groups`).
    pub groups_claim: String,
    /// Prefix put before every group.
    pub groups_prefix: String,
}

/// The endpoints of the issuer's discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// The issuer, which must equal the configured one.
    pub issuer: String,
    /// Where the browser is sent to log in.
    pub authorization_endpoint: String,
    /// Where the code is exchanged.
    pub token_endpoint: String,
    /// Where the person's claims are read.
    pub userinfo_endpoint: Option<String>,
}

/// The person as Kubernetes will know them through impersonation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub user: String,
    /// The groups.
    pub groups: Vec<String>,
}

/// The S256 PKCE challenge of `verifier` (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The URL the browser is sent to for logging in.
pub fn authorize_url(
    d: &Discovery,
    s: &OidcSettings,
    state: &str,
    nonce: &str,
    verifier: &str,
) -> String {
    let mut scopes = vec!["openid".to_string()];
    scopes.extend(s.scopes.iter().filter(|x| *x != "openid").cloned());
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &s.client_id)
        .append_pair("redirect_uri", &s.redirect_uri)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge(verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let sep = if d.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{query}", d.authorization_endpoint)
}

/// The claims of a JWT's payload, without checking its signature (see the module docs).
pub fn jwt_claims(token: &str) -> Result<Value, OidcError> {
    let invalid = |reason: &str| OidcError::Invalid {
        what: "ID token",
        reason: reason.to_string(),
    };
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid("not a JWT"))?;
    let raw = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid("payload is not base64url"))?;
    serde_json::from_slice(&raw).map_err(|e| invalid(&e.to_string()))
}

/// Checks an ID token's claims against what this login expects.
pub fn check_id_token(
    claims: &Value,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: u64,
) -> Result<(), OidcError> {
    let same_issuer = |a: &str| a.trim_end_matches('/') == issuer.trim_end_matches('/');
    if !claims["iss"].as_str().is_some_and(same_issuer) {
        return Err(OidcError::Claim { claim: "iss" });
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == client_id,
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(OidcError::Claim { claim: "aud" });
    }
    if claims["exp"].as_u64().is_none_or(|e| e <= now) {
        return Err(OidcError::Claim { claim: "exp" });
    }
    if claims["nonce"].as_str() != Some(nonce) {
        return Err(OidcError::Claim { claim: "nonce" });
    }
    Ok(())
}

/// The Kubernetes identity named by `claims` (ID token merged with userinfo).
pub fn identity(claims: &Value, s: &OidcSettings) -> Result<Identity, OidcError> {
    let user = claims[&s.username_claim]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| OidcError::NoUsername(s.username_claim.clone()))?;
    let mut groups: Vec<String> = match &claims[&s.groups_claim] {
        Value::Array(g) => g
            .iter()
            .filter_map(Value::as_str)
            .map(|g| format!("{}{g}", s.groups_prefix))
            .collect(),
        Value::String(g) => vec![format!("{}{g}", s.groups_prefix)],
        _ => vec![],
    };
    // An IdP claim must never become one of Kubernetes' own identities (a group claim
    // "system:masters" would otherwise be cluster-admin through impersonation).
    groups.retain(|g| !g.starts_with("system:"));
    groups.sort();
    groups.dedup();
    let user = format!("{}{user}", s.username_prefix);
    if user.starts_with("system:") {
        return Err(OidcError::ReservedName(user));
    }
    Ok(Identity { user, groups })
}

/// Talks to the IdP over HTTPS. Cheap to clone.
#[derive(Clone)]
pub struct OidcClient {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The settings.
    pub settings: Arc<OidcSettings>,
    discovery: Arc<tokio::sync::OnceCell<Discovery>>,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcClient {
    /// A client trusting the OS store plus `extra_ca` (PEM file), if given.
    pub fn new(settings: OidcSettings, extra_ca: Option<&str>) -> Result<Self, OidcError> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // Unusable OS certificates are skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let err = |reason: String| OidcError::Roots {
                path: path.to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| err(e.to_string()))?)
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| OidcError::Roots {
            path: "-".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            settings: Arc::new(settings),
            discovery: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Value, OidcError> {
        let url = req.uri().to_string();
        let err = |reason: String| OidcError::Request {
            url: url.clone(),
            reason,
        };
        let resp = tokio::time::timeout(TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        if !(200..300).contains(&status) {
            return Err(OidcError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| OidcError::Invalid {
            what: "IdP response",
            reason: e.to_string(),
        })
    }

    async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Value, OidcError> {
        let mut req = http::Request::get(url).header(http::header::ACCEPT, "application/json");
        if let Some(t) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::default()).map_err(|e| OidcError::Request {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        self.send(req).await
    }

    /// The issuer's discovery document, fetched once.
    pub async fn discovery(&self) -> Result<&Discovery, OidcError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.settings.issuer.trim_end_matches('/')
                );
                let d: Discovery =
                    serde_json::from_value(self.get(&url, None).await?).map_err(|e| {
                        OidcError::Invalid {
                            what: "discovery document",
                            reason: e.to_string(),
                        }
                    })?;
                if d.issuer.trim_end_matches('/') != self.settings.issuer.trim_end_matches('/') {
                    return Err(OidcError::Invalid {
                        what: "discovery document",
                        reason: format!("issuer {} is not the configured one", d.issuer),
                    });
                }
                Ok(d)
            })
            .await
    }

    /// Exchanges `code` and returns who logged in.
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: u64,
    ) -> Result<Identity, OidcError> {
        let d = self.discovery().await?.clone();
        let s = &self.settings;
        let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        // client_secret_basic: id and secret form-encoded, then base64 (RFC 6749 §2.3.1).
        let basic = STANDARD.encode(format!("{}:{}", enc(&s.client_id), enc(&s.client_secret)));
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &s.redirect_uri)
            .append_pair("code_verifier", verifier)
            .finish();
        let req = http::Request::post(&d.token_endpoint)
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| OidcError::Request {
                url: d.token_endpoint.clone(),
                reason: e.to_string(),
            })?;
        let tokens = self.send(req).await?;
        let id_token = tokens["id_token"].as_str().ok_or(OidcError::Invalid {
            what: "token response",
            reason: "no id_token".into(),
        })?;
        let mut claims = jwt_claims(id_token)?;
        check_id_token(&claims, &s.issuer, &s.client_id, nonce, now)?;
        if let (Some(url), Some(at)) = (&d.userinfo_endpoint, tokens["access_token"].as_str()) {
            let info = self.get(url, Some(at)).await?;
            if info["sub"] != claims["sub"] {
                return Err(OidcError::Claim { claim: "sub" });
            }
            if let (Value::Object(c), Value::Object(i)) = (&mut claims, info) {
                for (k, v) in i {
                    c.entry(k).or_insert(v);
                }
            }
        }
        identity(&claims, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> OidcSettings {
        OidcSettings {
            issuer: "https://idp.example".into(),
            client_id: "console".into(),
            client_secret: "s".into(),
            redirect_uri: "https://console.example/oidc/callback".into(),
            scopes: vec!["email".into(), "openid".into()],
            username_claim: "email".into(),
            username_prefix: "oidc:".into(),
            groups_claim: "groups".into(),
            groups_prefix: "oidc:".into(),
        }
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_example() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_authorize_url_asks_for_a_code_with_s256_pkce() {
        let d = Discovery {
            issuer: "https://idp.example".into(),
            authorization_endpoint: "https://idp.example/auth".into(),
            token_endpoint: "https://idp.example/token".into(),
            userinfo_endpoint: None,
        };
        let url = authorize_url(
            &d,
            &settings(),
            "st",
            "no",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        );
        assert_eq!(
            url,
            "https://idp.example/auth?response_type=code&client_id=console\
             &redirect_uri=https%3A%2F%2Fconsole.example%2Foidc%2Fcallback&scope=openid+email\
             &state=st&nonce=no&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM\
             &code_challenge_method=S256"
        );
    }

    #[test]
    fn id_token_claims_are_checked_one_by_one() {
        let good = json!({"iss": "https://idp.example/", "aud": ["x", "console"], "exp": 100, "nonce": "n"});
        assert!(check_id_token(&good, "https://idp.example", "console", "n", 99).is_ok());
        let cases = [
            ("iss", json!("https://other.example"), "iss"),
            ("aud", json!("other"), "aud"),
            ("exp", json!(99), "exp"),
            ("nonce", json!("m"), "nonce"),
        ];
        for (field, value, claim) in cases {
            let mut bad = good.clone();
            bad[field] = value;
            match check_id_token(&bad, "https://idp.example", "console", "n", 99) {
                Err(OidcError::Claim { claim: c }) => assert_eq!(c, claim),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_jwt_payload_is_read_and_garbage_refused() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"1"}"#);
        assert_eq!(jwt_claims(&format!("h.{payload}.s")).unwrap()["sub"], "1");
        assert!(jwt_claims("nodots").is_err());
        assert!(jwt_claims("a.!!!.c").is_err());
    }

    #[test]
    fn the_identity_is_the_prefixed_username_and_groups() {
        let id = identity(
            &json!({"email": "alice@acme.example", "groups": ["sre", "dev", "sre"]}),
            &settings(),
        )
        .unwrap();
        assert_eq!(
            id,
            Identity {
                user: "oidc:alice@acme.example".into(),
                groups: vec!["oidc:dev".into(), "oidc:sre".into()]
            }
        );
        let bare = OidcSettings {
            username_prefix: String::new(),
            groups_prefix: String::new(),
            ..settings()
        };
        let id = identity(
            &json!({"email": "a", "groups": ["system:masters", "ops"]}),
            &bare,
        );
        assert_eq!(id.unwrap().groups, vec!["ops".to_string()]);
        assert!(matches!(
            identity(&json!({"email": "system:admin"}), &bare),
            Err(OidcError::ReservedName(_))
        ));
        assert!(matches!(
            identity(&json!({"email": ""}), &settings()),
            Err(OidcError::NoUsername(_))
        ));
        assert_eq!(
            identity(&json!({"email": "b"}), &settings())
                .unwrap()
                .groups,
            Vec::<String>::new()
        );
    }
}

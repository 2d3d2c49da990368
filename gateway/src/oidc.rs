//! OpenID Connect browser login at the gateway: authorization-code flow with PKCE, the
//! callback, logout.
//!
//! ```text
//!  browser GET /x (no session) --pipeline: needs_login--> begin
//!     state, nonce, PKCE verifier -> login-state cookie (sealed, 10 min)
//!     302 <authorization_endpoint>?response_type=code&client_id&redirect_uri&scope
//!         &state&nonce&code_challenge(S256)
//!  IdP login --> 302 https://<host>/.rustronaut/oidc/callback?code&state --> callback
//!     login-state cookie opens (this tenant), state matches, same host
//!     POST token_endpoint (client_secret_basic, code, redirect_uri, code_verifier)
//!     ID token verified with the IdP's JWKS (iss, aud = client_id, exp, nonce)
//!     email/groups missing from the ID token? -> userinfo (same sub)
//!     session cookie (sealed, tenant duration); 302 <return path>
//!  GET /.rustronaut/oidc/logout --> session cookie cleared; 302 end_session_endpoint
//! ```
//!
//! The provider's discovery document and JWKS are fetched through the same HTTPS client as
//! remote JWKS ([`crate::jwks::Fetcher`]: OS roots plus the extra CA file, https only, 10 s,
//! 1 MiB), cached per (tenant, provider) and refetched after [`REFRESH`], or early when an
//! ID token names a key the cached JWKS lacks. Nothing about a login is stored on the
//! gateway: the browser carries it in sealed cookies ([`crate::session`]), so any replica
//! can finish a login another started.

use crate::jwks::{Fetcher, JwksError};
use crate::session::{
    LOGIN_COOKIE, LOGIN_STATE_SECONDS, LoginState, SESSION_COOKIE, Session, SessionError,
    TenantKeys, clear_cookie, is_local_path, random_token, set_cookie,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use ring::rand::SystemRandom;
use rustronaut_contract::identity::UserIdentity;
use rustronaut_contract::identity::jwt::{
    Jwks, JwtError, JwtVerifier, JwtVerifierConfig, identity_from_claims,
};
use rustronaut_contract::snapshot::{IdentityProviderKind, OidcProvider, Tenant};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Paths the gateway answers itself on hosts of tenants with an OIDC provider.
pub const PATH_PREFIX: &str = "/.rustronaut/oidc/";
/// Where the IdP sends the browser back (`redirect_uri = https://<host>` + this).
pub const CALLBACK_PATH: &str = "/.rustronaut/oidc/callback";
/// Ends the session.
pub const LOGOUT_PATH: &str = "/.rustronaut/oidc/logout";
/// How long a fetched discovery document and JWKS are used before a refetch.
pub const REFRESH: Duration = Duration::from_secs(15 * 60);
/// Least time between refetches triggered by an unknown key id.
const KID_REFETCH_MIN: Duration = Duration::from_secs(10);
/// Tolerated clock difference for the ID token's `exp`/`iat`.
const CLOCK_SKEW: u64 = 60;

/// Why a login step failed; [`OidcError::status`] is the answer to the browser.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Login over plain HTTP: the session cookie would travel in clear text.
    #[error("OIDC login needs an HTTPS listener")]
    NotHttps,
    /// The tenant has no session keys: login fails closed.
    #[error("the tenant has no session signing keys; OIDC login is off")]
    NoKeys,
    /// The provider is not an OIDC provider of the tenant.
    #[error("no OIDC provider {0} in the tenant")]
    UnknownProvider(String),
    /// A callback that does not belong to a login this browser started here (missing or
    /// expired login state, wrong state, other host, code the IdP refuses, nonce mismatch).
    #[error("invalid callback: {0}")]
    Forged(String),
    /// The IdP answered the authorization request with an error (the user declined, say).
    #[error("the identity provider refused the login: {0}")]
    Refused(String),
    /// The IdP is unreachable or answered something unusable.
    #[error("identity provider: {0}")]
    Provider(String),
    /// Sealing a cookie failed.
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl OidcError {
    /// The HTTP status for the browser.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotHttps | Self::Forged(_) | Self::Refused(_) => 400,
            Self::NoKeys | Self::UnknownProvider(_) | Self::Session(_) => 500,
            Self::Provider(_) => 502,
        }
    }

    /// A short, stable reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotHttps => "OidcNeedsHttps",
            Self::NoKeys => "NoSessionKeys",
            Self::UnknownProvider(_) => "UnknownProvider",
            Self::Forged(_) => "InvalidCallback",
            Self::Refused(_) => "LoginRefused",
            Self::Provider(_) => "ProviderUnavailable",
            Self::Session(_) => "SessionError",
        }
    }
}

impl From<JwksError> for OidcError {
    fn from(e: JwksError) -> Self {
        Self::Provider(e.to_string())
    }
}

/// What the gateway answers: a redirect (with cookies) or a short text page.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status (302 for redirects).
    pub status: u16,
    /// `Location`.
    pub location: Option<String>,
    /// `Set-Cookie` values.
    pub cookies: Vec<String>,
    /// Body (text/plain).
    pub body: &'static str,
}

/// The parts of a discovery document the gateway uses (OpenID Connect Discovery 1.0 §3).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    /// Must equal the configured issuer exactly (§4.3).
    pub issuer: String,
    /// Where browsers log in.
    pub authorization_endpoint: String,
    /// Where codes become tokens.
    pub token_endpoint: String,
    /// The signing keys of ID tokens.
    pub jwks_uri: String,
    /// Claims the ID token may lack.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0), when offered.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

impl Discovery {
    /// Parses a discovery document for `issuer`; every endpoint must be https.
    pub fn parse(bytes: &[u8], issuer: &str) -> Result<Self, OidcError> {
        let d: Self = serde_json::from_slice(bytes)
            .map_err(|e| OidcError::Provider(format!("discovery document: {e}")))?;
        if d.issuer != issuer {
            return Err(OidcError::Provider(format!(
                "discovery names issuer {:?}, expected {issuer:?}",
                d.issuer
            )));
        }
        let endpoints = [
            Some(&d.authorization_endpoint),
            Some(&d.token_endpoint),
            Some(&d.jwks_uri),
            d.userinfo_endpoint.as_ref(),
            d.end_session_endpoint.as_ref(),
        ];
        for e in endpoints.into_iter().flatten() {
            if !e.starts_with("https://") {
                return Err(OidcError::Provider(format!("endpoint {e:?} is not https")));
            }
        }
        Ok(d)
    }
}

/// `<issuer>/.well-known/openid-configuration`.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// A provider's discovery document and ID-token verifier, as fetched.
#[derive(Debug)]
pub struct ProviderState {
    /// The settings it was fetched for (a change refetches).
    config: JwtVerifierConfig,
    /// Discovery.
    pub discovery: Discovery,
    /// Verifies ID tokens: iss = issuer, aud = client id.
    pub verifier: JwtVerifier,
    fetched: Instant,
}

/// Where a login step happens.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    /// The tenant of the Resource the host routes to.
    pub tenant: &'a Tenant,
    /// Its cookie keys; `None`: login fails closed.
    pub keys: Option<&'a TenantKeys>,
    /// The host (and port) the browser used ([`public_host`]).
    pub host: &'a str,
    /// Whether the listener terminates TLS.
    pub https: bool,
    /// Unix seconds.
    pub now: u64,
    /// The claims the tenant's policies name ([`rustronaut_contract::PolicySet::session_claims`]):
    /// what a session sealed at the callback keeps.
    pub session_claims: &'a [String],
}

/// The OIDC client of the gateway: one per process, shared by every listener.
pub struct Oidc {
    fetcher: Fetcher,
    rng: SystemRandom,
    cache: Mutex<HashMap<(String, String), Arc<ProviderState>>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc").finish_non_exhaustive()
    }
}

/// `s` percent-encoded for a query or form value (RFC 3986 unreserved characters pass).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The value of query parameter `name`; `None` when absent, undecodable or repeated (a
/// repeated `state` or `code` is not a callback any IdP sends).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let mut found = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| decode(k).as_deref() == Some(name));
    let (_, v) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    decode(v)
}

/// The OIDC provider `idp` of `tenant`.
pub fn provider<'t>(tenant: &'t Tenant, idp: &str) -> Result<&'t OidcProvider, OidcError> {
    match tenant.identity_provider(idp).map(|p| &p.kind) {
        Some(IdentityProviderKind::Oidc(o)) => Ok(o),
        _ => Err(OidcError::UnknownProvider(idp.to_string())),
    }
}

/// Whether `tenant` has any OIDC provider (then [`PATH_PREFIX`] belongs to the gateway on its
/// hosts).
pub fn has_oidc(tenant: &Tenant) -> bool {
    tenant
        .identity_providers
        .iter()
        .any(|p| matches!(p.kind, IdentityProviderKind::Oidc(_)))
}

fn verifier_config(idp: &str, p: &OidcProvider) -> JwtVerifierConfig {
    JwtVerifierConfig {
        idp: idp.to_string(),
        issuer: p.issuer.clone(),
        audiences: vec![p.client_id.clone()],
        groups_claim: p.claim_mappings.groups.clone(),
        email_claim: p.claim_mappings.email.clone(),
        clock_skew: CLOCK_SKEW,
    }
}

fn eq_ct(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session in the request's cookies, if one opens with the tenant's keys at `now`.
pub fn session_from_cookies(keys: &TenantKeys, cookies: &[&str], now: u64) -> Option<Session> {
    crate::authn::cookie_values(cookies, SESSION_COOKIE)
        .into_iter()
        .find_map(|v| Session::open(keys, v, now))
}

impl Oidc {
    /// A client fetching through `fetcher`.
    pub fn new(fetcher: Fetcher) -> Self {
        Self {
            fetcher,
            rng: SystemRandom::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<Arc<ProviderState>> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The discovery document and verifier of `tenant`'s provider `idp`: cached, refetched
    /// after [`REFRESH`] or when `force` (an unknown key id). A failed refetch keeps serving
    /// the previous copy.
    pub async fn provider_state(
        &self,
        tenant: &str,
        idp: &str,
        p: &OidcProvider,
        force: bool,
    ) -> Result<Arc<ProviderState>, OidcError> {
        let key = (tenant.to_string(), idp.to_string());
        let config = verifier_config(idp, p);
        let old = self.cached(&key).filter(|s| s.config == config);
        if let Some(s) = &old {
            let age = s.fetched.elapsed();
            if age < REFRESH && !(force && age >= KID_REFETCH_MIN) {
                return Ok(s.clone());
            }
        }
        match self.fetch_provider(config, p).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, fresh.clone());
                tracing::info!(%tenant, %idp, issuer = %p.issuer, "OIDC provider discovered");
                Ok(fresh)
            }
            Err(e) => {
                tracing::warn!(%tenant, %idp, issuer = %p.issuer, error = %e,
                    "OIDC discovery failed");
                old.ok_or(e)
            }
        }
    }

    async fn fetch_provider(
        &self,
        config: JwtVerifierConfig,
        p: &OidcProvider,
    ) -> Result<ProviderState, OidcError> {
        if !p.issuer.starts_with("https://") {
            return Err(OidcError::Provider("issuer is not https".into()));
        }
        let body = self.fetcher.fetch(&discovery_url(&p.issuer)).await?;
        let discovery = Discovery::parse(&body, &p.issuer)?;
        let jwks = self.fetcher.fetch(&discovery.jwks_uri).await?;
        let verifier = Jwks::from_json(&jwks)
            .and_then(|j| JwtVerifier::new(config.clone(), j))
            .map_err(|e| OidcError::Provider(format!("JWKS: {e}")))?;
        Ok(ProviderState {
            config,
            discovery,
            verifier,
            fetched: Instant::now(),
        })
    }

    /// Starts a login with provider `idp`: the redirect to the IdP and the login-state
    /// cookie; `target` is where the browser wanted to go.
    pub async fn begin(&self, at: &At<'_>, idp: &str, target: &str) -> Result<Reply, OidcError> {
        let At {
            tenant,
            keys,
            host,
            https,
            now,
            session_claims: _,
        } = *at;
        if !https {
            return Err(OidcError::NotHttps);
        }
        let keys = keys.ok_or(OidcError::NoKeys)?;
        let p = provider(tenant, idp)?;
        let st = self.provider_state(&tenant.name, idp, p, false).await?;
        let login = LoginState {
            idp: idp.to_string(),
            state: random_token(&self.rng, 24)?,
            nonce: random_token(&self.rng, 24)?,
            verifier: random_token(&self.rng, 32)?,
            host: host.to_string(),
            return_to: if is_local_path(target) { target } else { "/" }.to_string(),
            expires_at: now + LOGIN_STATE_SECONDS,
        };
        let challenge = URL_SAFE_NO_PAD.encode(
            ring::digest::digest(&ring::digest::SHA256, login.verifier.as_bytes()).as_ref(),
        );
        let endpoint = &st.discovery.authorization_endpoint;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let location = format!(
            "{endpoint}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={challenge}&code_challenge_method=S256",
            encode(&p.client_id),
            encode(&redirect_uri(host)),
            encode(&p.scopes.join(" ")),
            login.state,
            login.nonce,
        );
        let cookie = login.seal(keys, &self.rng)?;
        Ok(Reply {
            status: 302,
            location: Some(location),
            cookies: vec![set_cookie(LOGIN_COOKIE, &cookie, LOGIN_STATE_SECONDS)],
            body: "login required",
        })
    }

    /// Finishes a login: checks the callback against the login-state cookie, exchanges the
    /// code, verifies the ID token, sets the session cookie and sends the browser back.
    pub async fn callback(
        &self,
        at: &At<'_>,
        query: &str,
        cookies: &[&str],
    ) -> Result<(Reply, Session), OidcError> {
        let At {
            tenant,
            keys,
            host,
            https,
            now,
            session_claims,
        } = *at;
        if !https {
            return Err(OidcError::NotHttps);
        }
        let keys = keys.ok_or(OidcError::NoKeys)?;
        let login = crate::authn::cookie_values(cookies, LOGIN_COOKIE)
            .into_iter()
            .find_map(|v| LoginState::open(keys, v, now))
            .ok_or_else(|| OidcError::Forged("no valid login state cookie".into()))?;
        let state = query_param(query, "state")
            .ok_or_else(|| OidcError::Forged("no state parameter".into()))?;
        if !eq_ct(&state, &login.state) {
            return Err(OidcError::Forged("state does not match".into()));
        }
        if login.host != host {
            return Err(OidcError::Forged("login started on another host".into()));
        }
        if let Some(err) = query_param(query, "error") {
            return Err(OidcError::Refused(err));
        }
        let code = query_param(query, "code").ok_or_else(|| OidcError::Forged("no code".into()))?;
        let p = provider(tenant, &login.idp)?;
        let st = self
            .provider_state(&tenant.name, &login.idp, p, false)
            .await?;

        let form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            encode(&code),
            encode(&redirect_uri(host)),
            encode(&login.verifier),
        );
        // client_secret_basic: id and secret form-encoded, then base64 (RFC 6749 §2.3.1).
        let basic = STANDARD.encode(format!(
            "{}:{}",
            encode(&p.client_id),
            encode(p.client_secret.expose())
        ));
        let req = http::Request::post(&st.discovery.token_endpoint)
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        let (status, body) = self.fetcher.send(req).await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            id_token: Option<String>,
            access_token: Option<String>,
            error: Option<String>,
        }
        let tokens: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        if (400..500).contains(&status) {
            // invalid_grant: a replayed, expired or stolen code, or a verifier that does not
            // match its challenge.
            let err = tokens.and_then(|t| t.error).unwrap_or_default();
            return Err(OidcError::Forged(format!(
                "token endpoint refused the code ({status} {err})"
            )));
        }
        if !(200..300).contains(&status) {
            return Err(OidcError::Provider(format!(
                "token endpoint answered {status}"
            )));
        }
        let tokens = tokens.ok_or_else(|| OidcError::Provider("token response".into()))?;
        let id_token = tokens
            .id_token
            .ok_or_else(|| OidcError::Provider("token response without id_token".into()))?;

        let verified = match st.verifier.verify(&id_token, now) {
            Err(JwtError::UnknownKid(_)) => {
                let st = self
                    .provider_state(&tenant.name, &login.idp, p, true)
                    .await?;
                st.verifier.verify(&id_token, now)
            }
            other => other,
        }
        .map_err(|e| OidcError::Provider(format!("ID token refused: {e}")))?;
        // Freshly verified, so not shared yet: taken out of its Arc without a copy.
        let mut user = std::sync::Arc::unwrap_or_clone(verified.identity);
        check_id_token_claims(&user, &login.nonce, &p.client_id)?;

        let lacks_claims = session_claims.iter().any(|c| !user.claims.contains_key(c));
        if (user.email.is_none() || user.groups.is_empty() || lacks_claims)
            && let (Some(endpoint), Some(access)) =
                (&st.discovery.userinfo_endpoint, &tokens.access_token)
        {
            self.merge_userinfo(&mut user, endpoint, access, p, session_claims)
                .await?;
        }

        let mut session = Session {
            idp: login.idp.clone(),
            subject: user.subject,
            email: user.email,
            groups: user.groups,
            known_claims: Vec::new(),
            claims: Default::default(),
            issued_at: now,
            expires_at: now + keys.duration_seconds(),
        };
        // The claims the tenant's policies name, so a Deny or an exclude on one decides for
        // this browser as for a bearer token of the same user (issue 14, item 7).
        session.keep_claims(session_claims, &user.claims);
        let value = match session.seal(keys, &self.rng) {
            // Too large with its claims: without them (rules on claims then fail closed for
            // this session) rather than no login at all.
            Err(SessionError::TooLarge(_)) if !session.known_claims.is_empty() => {
                session.forget_claims();
                session.seal(keys, &self.rng)?
            }
            other => other?,
        };
        Ok((
            Reply {
                status: 302,
                location: Some(login.return_to),
                cookies: vec![
                    set_cookie(SESSION_COOKIE, &value, keys.duration_seconds()),
                    clear_cookie(LOGIN_COOKIE),
                ],
                body: "logged in",
            },
            session,
        ))
    }

    /// Fills email, groups and the claims in `wanted` the ID token lacked from the userinfo
    /// endpoint (OpenID Connect Core §5.3), whose `sub` must be the ID token's (§5.3.2).
    async fn merge_userinfo(
        &self,
        user: &mut UserIdentity,
        endpoint: &str,
        access_token: &str,
        p: &OidcProvider,
        wanted: &[String],
    ) -> Result<(), OidcError> {
        let req = http::Request::get(endpoint)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {access_token}"),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        let (status, body) = self.fetcher.send(req).await?;
        if !(200..300).contains(&status) {
            return Err(OidcError::Provider(format!(
                "userinfo endpoint answered {status}"
            )));
        }
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|_| OidcError::Provider("userinfo is not a JSON object".into()))?;
        if claims.get("sub").and_then(|s| s.as_str()) != Some(user.subject.as_str()) {
            return Err(OidcError::Provider("userinfo names another subject".into()));
        }
        let info = identity_from_claims(
            &user.idp,
            user.subject.clone(),
            &claims,
            &p.claim_mappings.groups,
            &p.claim_mappings.email,
        );
        if user.email.is_none() {
            user.email = info.email;
        }
        if user.groups.is_empty() {
            user.groups = info.groups;
        }
        for name in wanted {
            if !user.claims.contains_key(name)
                && let Some(v) = info.claims.get(name)
            {
                user.claims.insert(name.clone(), v.clone());
            }
        }
        Ok(())
    }

    /// Ends the session: the cookie is cleared, and the browser goes to the provider's
    /// end_session_endpoint when it has one (so the IdP session ends too).
    pub async fn logout(&self, at: &At<'_>, cookies: &[&str]) -> Reply {
        let At {
            tenant, keys, now, ..
        } = *at;
        let clear = vec![clear_cookie(SESSION_COOKIE), clear_cookie(LOGIN_COOKIE)];
        let idp = keys
            .and_then(|k| session_from_cookies(k, cookies, now))
            .map(|s| s.idp)
            .or_else(|| {
                tenant
                    .identity_providers
                    .iter()
                    .find(|p| matches!(p.kind, IdentityProviderKind::Oidc(_)))
                    .map(|p| p.name.clone())
            });
        let end = match idp.as_deref().map(|i| (i, provider(tenant, i))) {
            Some((i, Ok(p))) => self
                .provider_state(&tenant.name, i, p, false)
                .await
                .ok()
                .and_then(|st| {
                    st.discovery.end_session_endpoint.as_ref().map(|e| {
                        let sep = if e.contains('?') { '&' } else { '?' };
                        format!("{e}{sep}client_id={}", encode(&p.client_id))
                    })
                }),
            _ => None,
        };
        match end {
            Some(location) => Reply {
                status: 302,
                location: Some(location),
                cookies: clear,
                body: "logged out",
            },
            None => Reply {
                status: 200,
                location: None,
                cookies: clear,
                body: "logged out",
            },
        }
    }
}

/// The host a browser used, as it goes into a redirect URI: lower-case, without a trailing
/// dot, with the port when one was sent; `None` when it is not a plausible host.
pub fn public_host(raw: &str) -> Option<String> {
    let name = crate::pipeline::host_only(raw)?.into_owned();
    let port = if raw.starts_with('[') {
        raw.rsplit_once("]:").map(|(_, p)| p)
    } else {
        raw.rsplit_once(':').map(|(_, p)| p)
    };
    match port {
        None => Some(name),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(format!("{name}:{p}"))
        }
        Some(_) => None,
    }
}

/// `https://<host>/.rustronaut/oidc/callback`.
pub fn redirect_uri(host: &str) -> String {
    format!("https://{host}{CALLBACK_PATH}")
}

/// The checks the JWT verifier does not do for an ID token (OpenID Connect Core §3.1.3.7):
/// the nonce of this login, and `azp` naming this client when there are other audiences.
fn check_id_token_claims(
    user: &UserIdentity,
    nonce: &str,
    client_id: &str,
) -> Result<(), OidcError> {
    let one = |name: &str| match user.claims.get(name).map(Vec::as_slice) {
        Some([v]) => Some(v.as_str()),
        _ => None,
    };
    if !one("nonce").is_some_and(|n| eq_ct(n, nonce)) {
        return Err(OidcError::Forged("ID token nonce does not match".into()));
    }
    let audiences = user.claims.get("aud").map_or(0, Vec::len);
    if audiences > 1 && one("azp") != Some(client_id) {
        return Err(OidcError::Provider(
            "ID token for several audiences without azp = client id".into(),
        ));
    }
    Ok(())
}

/// Whether a request looks like a browser navigation (which can follow a redirect to a login
/// page) rather than an API call: GET or HEAD, and an `Accept` that names `text/html`.
pub fn is_navigation(method: &str, accept: &[&str]) -> bool {
    (method == "GET" || method == "HEAD")
        && accept.iter().flat_map(|v| v.split(',')).any(|m| {
            m.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/html"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn query_params_decode_and_repeats_are_refused() {
        let q = "code=a%2Bb&state=x+y&empty=&flag";
        assert_eq!(query_param(q, "code").as_deref(), Some("a+b"));
        assert_eq!(query_param(q, "state").as_deref(), Some("x y"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("state=a&state=b", "state"), None);
        assert_eq!(query_param("state=%zz", "state"), None);
        assert_eq!(encode("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(decode(&encode("a b/c?d=é")).as_deref(), Some("a b/c?d=é"));
    }

    #[test]
    fn discovery_must_name_the_issuer_and_use_https() {
        let doc = |issuer: &str, token: &str| {
            serde_json::json!({
                "issuer": issuer,
                "authorization_endpoint": "https://idp.test/authorize",
                "token_endpoint": token,
                "jwks_uri": "https://idp.test/keys",
                "end_session_endpoint": "https://idp.test/end",
            })
            .to_string()
        };
        let ok = Discovery::parse(
            doc("https://idp.test", "https://idp.test/token").as_bytes(),
            "https://idp.test",
        )
        .unwrap();
        assert_eq!(ok.userinfo_endpoint, None);
        assert_eq!(
            ok.end_session_endpoint.as_deref(),
            Some("https://idp.test/end")
        );
        assert!(
            Discovery::parse(
                doc("https://evil.test", "https://idp.test/token").as_bytes(),
                "https://idp.test"
            )
            .is_err()
        );
        assert!(
            Discovery::parse(
                doc("https://idp.test", "http://idp.test/token").as_bytes(),
                "https://idp.test"
            )
            .is_err()
        );
        assert_eq!(
            discovery_url("https://idp.test/"),
            "https://idp.test/.well-known/openid-configuration"
        );
    }

    #[test]
    fn id_token_nonce_and_azp_are_checked() {
        let user = |claims: &[(&str, &[&str])]| UserIdentity {
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect::<BTreeMap<_, _>>(),
            ..UserIdentity::default()
        };
        let n: &[&str] = &["n1"];
        assert!(check_id_token_claims(&user(&[("nonce", n)]), "n1", "c").is_ok());
        assert!(check_id_token_claims(&user(&[("nonce", n)]), "n2", "c").is_err());
        assert!(check_id_token_claims(&user(&[]), "n1", "c").is_err());
        let two: &[&str] = &["c", "other"];
        assert!(check_id_token_claims(&user(&[("nonce", n), ("aud", two)]), "n1", "c").is_err());
        let azp: &[&str] = &["c"];
        assert!(
            check_id_token_claims(
                &user(&[("nonce", n), ("aud", two), ("azp", azp)]),
                "n1",
                "c"
            )
            .is_ok()
        );
    }

    #[test]
    fn public_hosts_keep_the_port_and_refuse_junk() {
        assert_eq!(
            public_host("App.Acme.Test:8443").as_deref(),
            Some("app.acme.test:8443")
        );
        assert_eq!(
            public_host("app.acme.test.").as_deref(),
            Some("app.acme.test")
        );
        assert_eq!(public_host("[::1]:443").as_deref(), Some("[::1]:443"));
        assert_eq!(public_host("app.test:x"), None);
        assert_eq!(public_host("app.test:"), None);
        assert_eq!(
            redirect_uri("a.test:1"),
            "https://a.test:1/.rustronaut/oidc/callback"
        );
    }

    #[test]
    fn navigation_needs_get_or_head_and_html() {
        let html = ["text/html,application/xhtml+xml,*/*;q=0.8"];
        assert!(is_navigation("GET", &html));
        assert!(is_navigation("HEAD", &["TEXT/HTML; q=0.9"]));
        assert!(!is_navigation("POST", &html));
        assert!(!is_navigation("GET", &["application/json"]));
        assert!(!is_navigation("GET", &["*/*"]));
        assert!(!is_navigation("GET", &[]));
    }
}

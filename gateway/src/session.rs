//! Browser sessions and OIDC login state, carried by the browser in cookies that the gateway
//! alone can read and write.
//!
//! ```text
//!  tenant.session.signingKeys [{id, secret}]   (first seals, all open: rotation)
//!    -- HKDF-SHA256(salt = "rustronaut session v1", ikm = secret,
//!                   info = tenant, purpose) --> AES-256-GCM key per (tenant, purpose, id)
//!
//!  cookie value = "v1." kid "." base64url(nonce[12] || ciphertext || tag[16])
//!  associated data = "v1" 0 tenant 0 purpose 0 kid   (bound, not encrypted)
//! ```
//!
//! Why AEAD and not a signature: the session holds the user's email, groups and the claims
//! the tenant's policies name ([`Session::known_claims`]), and the login state holds the
//! PKCE verifier; both must be secret as well as unforgeable. Why one
//! key per tenant and purpose: a session cookie of tenant A does not open at tenant B (its
//! key and associated data differ), and a login-state cookie can never be replayed as a
//! session. Nothing here is stored on the gateway, so any replica opens any cookie.
//!
//! Opening never fails loudly: a cookie that is tampered with, too large, sealed with a key
//! the tenant no longer has, or expired is simply "no session", and the request goes on as
//! anonymous (a browser then logs in again). Pure: time and randomness are arguments.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::SecureRandom;
use rustronaut_contract::identity::UserIdentity;
use rustronaut_contract::snapshot::SessionConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The session cookie. `__Host-` makes browsers refuse it unless it is `Secure`, has
/// `Path=/` and no `Domain`: it can only be set by this host over HTTPS and is never shared
/// with sibling hosts (another tenant's subdomain).
pub const SESSION_COOKIE: &str = "__Host-rtn_session";
/// The login-state cookie (PKCE verifier, state, nonce, where to return), same rules.
pub const LOGIN_COOKIE: &str = "__Host-rtn_login";
/// Longest cookie value accepted or produced. Browsers keep at least 4096 bytes per cookie
/// (RFC 6265 §6.1) including its name and attributes; a larger one would be silently
/// dropped, so it is refused here instead.
pub const MAX_COOKIE_LEN: usize = 3800;
/// How long a login may take (from the redirect to the IdP to the callback).
pub const LOGIN_STATE_SECONDS: u64 = 600;
/// Most bytes (names and values, JSON-encoded) of claims a session carries. The whole
/// cookie is bounded by [`MAX_COOKIE_LEN`] (about 2.8 KB of JSON after base64 and the AEAD
/// overhead), which the email and groups need too; claims beyond this bound are left out
/// and are unknown to policies (which then fail closed), rather than making the login fail.
pub const MAX_SESSION_CLAIMS_BYTES: usize = 1024;

const VERSION: &str = "v1";
const SALT: &[u8] = b"rustronaut session v1";
const TAG_LEN: usize = 16;

/// What a cookie is for; each purpose has its own keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A logged-in browser.
    Session,
    /// A login in progress.
    Login,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Login => "login",
        }
    }
}

/// Why a cookie could not be sealed. Opening has no error: see the module docs.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The tenant has no session keys: OIDC login fails closed.
    #[error("tenant {0} has no session signing keys")]
    NoKeys(String),
    /// A key secret that is not base64 of at least 32 bytes (validation refuses these).
    #[error("tenant {tenant}: session key {id} is not base64 of at least 32 bytes")]
    BadKey {
        /// Tenant.
        tenant: String,
        /// Key id.
        id: String,
    },
    /// The sealed value would be larger than [`MAX_COOKIE_LEN`].
    #[error("sealed cookie of {0} bytes is larger than {MAX_COOKIE_LEN}")]
    TooLarge(usize),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
    /// Serialisation or encryption failed.
    #[error("sealing failed")]
    Seal,
}

struct KeyPair {
    id: String,
    session: LessSafeKey,
    login: LessSafeKey,
}

/// The cookie keys of one tenant, derived once per snapshot.
pub struct TenantKeys {
    tenant: String,
    keys: Vec<KeyPair>,
    duration_seconds: u64,
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys")
            .field("tenant", &self.tenant)
            .field(
                "ids",
                &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .field("duration_seconds", &self.duration_seconds)
            .finish()
    }
}

fn derive(secret: &[u8], tenant: &str, purpose: Purpose) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, SALT).extract(secret);
    let info = [tenant.as_bytes(), &[0], purpose.label().as_bytes()];
    // 32 bytes from HKDF-SHA256 is far below its 255 * 32 limit: expand cannot fail.
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("HKDF output length is valid");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn aad(tenant: &str, purpose: Purpose, kid: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(tenant.len() + kid.len() + 16);
    for part in [VERSION, tenant, purpose.label(), kid] {
        a.extend_from_slice(part.as_bytes());
        a.push(0);
    }
    a
}

impl TenantKeys {
    /// The keys of `tenant` from its session settings; `None` when it has no keys (OIDC login
    /// then fails closed and no session cookie opens).
    pub fn new(tenant: &str, config: &SessionConfig) -> Result<Option<Self>, SessionError> {
        if config.signing_keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for k in &config.signing_keys {
            let secret = STANDARD
                .decode(k.secret.expose())
                .ok()
                .filter(|s| s.len() >= 32)
                .ok_or_else(|| SessionError::BadKey {
                    tenant: tenant.to_string(),
                    id: k.id.clone(),
                })?;
            keys.push(KeyPair {
                id: k.id.clone(),
                session: derive(&secret, tenant, Purpose::Session),
                login: derive(&secret, tenant, Purpose::Login),
            });
        }
        Ok(Some(Self {
            tenant: tenant.to_string(),
            keys,
            duration_seconds: config.duration_seconds,
        }))
    }

    /// How long a session lasts (the tenant's `session.durationSeconds`).
    pub fn duration_seconds(&self) -> u64 {
        self.duration_seconds
    }

    /// Encrypts `plain` with the first key into a cookie value.
    pub fn seal(
        &self,
        purpose: Purpose,
        plain: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<String, SessionError> {
        let k = self
            .keys
            .first()
            .ok_or_else(|| SessionError::NoKeys(self.tenant.clone()))?;
        let key = match purpose {
            Purpose::Session => &k.session,
            Purpose::Login => &k.login,
        };
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| SessionError::Random)?;
        let mut buf = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(&self.tenant, purpose, &k.id)),
            &mut body,
        )
        .map_err(|_| SessionError::Seal)?;
        buf.extend_from_slice(&body);
        let value = format!("{VERSION}.{}.{}", k.id, URL_SAFE_NO_PAD.encode(&buf));
        if value.len() > MAX_COOKIE_LEN {
            return Err(SessionError::TooLarge(value.len()));
        }
        Ok(value)
    }

    /// Decrypts a cookie value sealed by any of the tenant's keys for `purpose`; `None` for
    /// anything else.
    pub fn open(&self, purpose: Purpose, value: &str) -> Option<Vec<u8>> {
        if value.len() > MAX_COOKIE_LEN {
            return None;
        }
        let mut parts = value.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let k = self.keys.iter().find(|k| k.id == kid)?;
        let key = match purpose {
            Purpose::Session => &k.session,
            Purpose::Login => &k.login,
        };
        let raw = URL_SAFE_NO_PAD.decode(data).ok()?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad(&self.tenant, purpose, kid)), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// A logged-in browser: who, by which provider, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The OIDC provider (in the tenant) that logged the user in.
    #[serde(rename = "i")]
    pub idp: String,
    /// `sub` of the ID token.
    #[serde(rename = "s")]
    pub subject: String,
    /// Verified email, if the provider gave one.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Groups from the provider's groups claim.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The claims the session knows: those the tenant's policies named at login
    /// ([`rustronaut_contract::PolicySet::session_claims`]) that fit
    /// [`MAX_SESSION_CLAIMS_BYTES`], whether or not the provider gave them. Any other claim
    /// is unknown to policies, and a rule on it fails closed; a session sealed before this
    /// field existed knows none.
    #[serde(rename = "k", default, skip_serializing_if = "Vec::is_empty")]
    pub known_claims: Vec<String>,
    /// The values of those of [`Self::known_claims`] the provider gave.
    #[serde(rename = "c", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Vec<String>>,
    /// Login time (unix seconds), for policies with a shorter `session` override.
    #[serde(rename = "t")]
    pub issued_at: u64,
    /// End of the session (unix seconds): login time plus the tenant's duration.
    #[serde(rename = "x")]
    pub expires_at: u64,
}

impl Session {
    /// Seals the session into a cookie value.
    pub fn seal(&self, keys: &TenantKeys, rng: &dyn SecureRandom) -> Result<String, SessionError> {
        let plain = serde_json::to_vec(self).map_err(|_| SessionError::Seal)?;
        keys.seal(Purpose::Session, &plain, rng)
    }

    /// The session in `value`, if it opens with `keys` and has not expired at `now`.
    pub fn open(keys: &TenantKeys, value: &str, now: u64) -> Option<Self> {
        let plain = keys.open(Purpose::Session, value)?;
        let s: Self = serde_json::from_slice(&plain).ok()?;
        (now < s.expires_at && s.issued_at <= now.saturating_add(60)).then_some(s)
    }

    /// The user the evaluator sees: only what the cookie carries, and it says so
    /// ([`UserIdentity::known_claims`]): claims it did not keep and scopes (it keeps none)
    /// are unknown, so a Deny on them denies and an Allow requiring them does not allow,
    /// instead of reading as "no such claim" (issue 14, item 7).
    pub fn user(&self) -> UserIdentity {
        UserIdentity {
            idp: self.idp.clone(),
            subject: self.subject.clone(),
            email: self.email.clone(),
            groups: self.groups.clone(),
            claims: self.claims.clone(),
            scopes: Vec::new(),
            known_claims: Some(self.known_claims.iter().cloned().collect()),
            derived: Default::default(),
        }
    }

    /// Keeps of `claims` (the verified ID token's, with userinfo's) those named in `wanted`
    /// (sorted, as [`rustronaut_contract::PolicySet::session_claims`] gives them), in that
    /// order, while they fit [`MAX_SESSION_CLAIMS_BYTES`]: a wanted claim the provider did
    /// not give is known to be absent; one that does not fit is left unknown.
    pub fn keep_claims(&mut self, wanted: &[String], claims: &BTreeMap<String, Vec<String>>) {
        let mut used = 0;
        for name in wanted {
            let value = claims.get(name);
            let size = serde_json::to_string(&(name, value)).map_or(usize::MAX, |j| j.len());
            if used + size > MAX_SESSION_CLAIMS_BYTES {
                continue;
            }
            used += size;
            self.known_claims.push(name.clone());
            if let Some(v) = value {
                self.claims.insert(name.clone(), v.clone());
            }
        }
    }

    /// Forgets every claim: what [`crate::oidc`] falls back to when the sealed session
    /// would not fit in a cookie (policies on claims then fail closed for it).
    pub fn forget_claims(&mut self) {
        self.known_claims.clear();
        self.claims.clear();
    }
}

/// A login in progress, kept by the browser between the redirect to the IdP and the
/// callback, so any replica can finish it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The OIDC provider.
    #[serde(rename = "i")]
    pub idp: String,
    /// The `state` parameter sent to the IdP; the callback must bring it back.
    #[serde(rename = "st")]
    pub state: String,
    /// The `nonce` the ID token must carry.
    #[serde(rename = "n")]
    pub nonce: String,
    /// The PKCE code verifier.
    #[serde(rename = "v")]
    pub verifier: String,
    /// Host the login started on; the callback must arrive there.
    #[serde(rename = "h")]
    pub host: String,
    /// Where to send the browser after the login: a path on the same host.
    #[serde(rename = "r")]
    pub return_to: String,
    /// End of the login attempt (unix seconds).
    #[serde(rename = "x")]
    pub expires_at: u64,
}

impl LoginState {
    /// Seals the state into a cookie value.
    pub fn seal(&self, keys: &TenantKeys, rng: &dyn SecureRandom) -> Result<String, SessionError> {
        let plain = serde_json::to_vec(self).map_err(|_| SessionError::Seal)?;
        keys.seal(Purpose::Login, &plain, rng)
    }

    /// The state in `value`, if it opens with `keys` and has not expired at `now`.
    pub fn open(keys: &TenantKeys, value: &str, now: u64) -> Option<Self> {
        let plain = keys.open(Purpose::Login, value)?;
        let s: Self = serde_json::from_slice(&plain).ok()?;
        (now < s.expires_at).then_some(s)
    }
}

/// `n` random bytes from `rng`, base64url (for state, nonce and PKCE verifiers: 32 bytes
/// give a 43-character verifier, RFC 7636 §4.1).
pub fn random_token(rng: &dyn SecureRandom, n: usize) -> Result<String, SessionError> {
    let mut b = vec![0u8; n];
    rng.fill(&mut b).map_err(|_| SessionError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Whether `target` is a path on this host: `/` followed by anything but a second `/` or a
/// backslash (browsers read `//evil` and `/\evil` as another host), no control characters.
pub fn is_local_path(target: &str) -> bool {
    let b = target.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && !b.iter().any(|c| c.is_ascii_control() || *c == b' ')
}

/// A `Set-Cookie` value for `name`: `Secure; HttpOnly; SameSite=Lax; Path=/` always (Lax so
/// the cookie comes along on the top-level navigation back from the IdP), `Max-Age` as given
/// (0 clears it).
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax")
}

/// A `Set-Cookie` value that deletes cookie `name`: `Max-Age=0` for browsers, plus an
/// `Expires` in the past for clients that only honour that (curl keeps an emptied cookie
/// with `Max-Age=0` alone).
pub fn clear_cookie(name: &str) -> String {
    format!(
        "{name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Secure; HttpOnly; SameSite=Lax"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use rustronaut_contract::snapshot::{Sensitive, SessionKey};

    fn config(keys: &[(&str, u8)], duration: u64) -> SessionConfig {
        SessionConfig {
            duration_seconds: duration,
            signing_keys: keys
                .iter()
                .map(|(id, fill)| SessionKey {
                    id: (*id).into(),
                    secret: Sensitive::new(STANDARD.encode([*fill; 32])),
                })
                .collect(),
        }
    }

    fn keys(tenant: &str, k: &[(&str, u8)]) -> TenantKeys {
        TenantKeys::new(tenant, &config(k, 3600)).unwrap().unwrap()
    }

    fn session(now: u64) -> Session {
        Session {
            idp: "corp".into(),
            subject: "alice".into(),
            email: Some("alice@acme.test".into()),
            groups: vec!["eng".into(), "ops".into()],
            known_claims: Vec::new(),
            claims: BTreeMap::new(),
            issued_at: now,
            expires_at: now + 3600,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Issue 14, item 7: a session keeps the claims the tenant's policies name, says which
    /// it knows, and a session sealed before it kept any knows none.
    #[test]
    fn sessions_keep_the_claims_policies_name_and_say_which_they_know() {
        let rng = SystemRandom::new();
        let k = keys("acme", &[("k1", 1)]);
        let token: BTreeMap<String, Vec<String>> = [
            ("amr", &["pwd", "mfa"][..]),
            ("department", &["eng"]),
            ("nonce", &["n"]),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), strings(v)))
        .collect();
        let mut s = session(1000);
        s.keep_claims(&strings(&["amr", "contractor", "department"]), &token);
        let opened = Session::open(&k, &s.seal(&k, &rng).unwrap(), 1001).unwrap();
        assert_eq!(opened, s);
        let u = opened.user();
        assert_eq!(u.claims.get("amr"), Some(&strings(&["pwd", "mfa"])));
        assert_eq!(
            u.claims.get("nonce"),
            None,
            "not named by a policy: not kept"
        );
        assert!(
            u.claim_known("contractor"),
            "named, absent: known to be absent"
        );
        assert!(u.claim_known("amr") && u.claim_known("department"));
        assert!(!u.claim_known("nonce") && !u.claim_known("email"));

        // A cookie sealed before sessions kept claims (no "k" or "c"): nothing is known.
        let old = br#"{"i":"corp","s":"alice","t":1000,"x":4600}"#;
        let v = k.seal(Purpose::Session, old, &rng).unwrap();
        let u = Session::open(&k, &v, 1001).unwrap().user();
        assert_eq!(u.known_claims, Some(Default::default()));
        assert!(!u.claim_known("amr"));
    }

    #[test]
    fn claims_beyond_the_bound_are_left_unknown() {
        let big = "x".repeat(MAX_SESSION_CLAIMS_BYTES / 2);
        let token: BTreeMap<String, Vec<String>> = ["a", "b", "c"]
            .into_iter()
            .map(|n| (n.to_string(), vec![big.clone()]))
            .collect();
        let mut s = session(1000);
        s.keep_claims(&strings(&["a", "b", "c", "d"]), &token);
        // "a" fits, "b" would cross the bound, "c" too; "d" (absent) is small and fits.
        assert_eq!(s.known_claims, strings(&["a", "d"]));
        assert_eq!(s.claims.keys().collect::<Vec<_>>(), ["a"]);
        let u = s.user();
        assert!(!u.claim_known("b") && !u.claim_known("c"));
        s.forget_claims();
        assert!(s.known_claims.is_empty() && s.claims.is_empty());
        assert!(!s.user().claim_known("a"));
    }

    #[test]
    fn a_session_round_trips_and_its_value_hides_the_contents() {
        let rng = SystemRandom::new();
        let k = keys("acme", &[("k1", 1)]);
        let s = session(1000);
        let v = s.seal(&k, &rng).unwrap();
        assert!(v.starts_with("v1.k1."), "{v}");
        assert!(!v.contains("alice"));
        let raw = URL_SAFE_NO_PAD
            .decode(v.rsplit('.').next().unwrap())
            .unwrap();
        assert!(!raw.windows(5).any(|w| w == b"alice"));
        assert_eq!(Session::open(&k, &v, 1001), Some(s.clone()));
        // Two seals of the same session differ (fresh nonce).
        assert_ne!(v, s.seal(&k, &rng).unwrap());
        let u = s.user();
        assert_eq!((u.idp.as_str(), u.subject.as_str()), ("corp", "alice"));
        assert_eq!(u.groups, vec!["eng", "ops"]);
    }

    #[test]
    fn expired_tampered_and_foreign_cookies_are_no_session() {
        let rng = SystemRandom::new();
        let k = keys("acme", &[("k1", 1)]);
        let v = session(1000).seal(&k, &rng).unwrap();
        assert_eq!(Session::open(&k, &v, 1000 + 3600), None, "expired");
        // Issued in the future (beyond skew): refused.
        assert_eq!(Session::open(&k, &v, 900), None);
        // Every single-byte change of the payload is caught by the tag.
        let (head, data) = v.rsplit_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(data).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            let t = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&raw));
            assert_eq!(Session::open(&k, &t, 1001), None, "byte {i}");
            raw[i] ^= 1;
        }
        // Another tenant with the very same key material does not open it.
        let other = keys("globex", &[("k1", 1)]);
        assert_eq!(Session::open(&other, &v, 1001), None);
        // A login-state key does not open a session, nor the reverse.
        assert_eq!(k.open(Purpose::Login, &v), None);
        // Unknown key id, wrong version, garbage, oversized.
        assert_eq!(Session::open(&k, &v.replacen("k1", "k2", 1), 1001), None);
        assert_eq!(Session::open(&k, &v.replacen("v1", "v2", 1), 1001), None);
        assert_eq!(Session::open(&k, "v1.k1.", 1001), None);
        assert_eq!(Session::open(&k, "v1.k1.!!!", 1001), None);
        assert_eq!(Session::open(&k, "", 1001), None);
        let big = format!("v1.k1.{}", "A".repeat(MAX_COOKIE_LEN));
        assert_eq!(Session::open(&k, &big, 1001), None);
    }

    #[test]
    fn rotation_first_key_seals_all_keys_open() {
        let rng = SystemRandom::new();
        let old = keys("acme", &[("old", 1)]);
        let rotated = keys("acme", &[("new", 2), ("old", 1)]);
        let by_old = session(1000).seal(&old, &rng).unwrap();
        assert!(Session::open(&rotated, &by_old, 1001).is_some());
        let by_new = session(1000).seal(&rotated, &rng).unwrap();
        assert!(by_new.starts_with("v1.new."));
        assert_eq!(Session::open(&old, &by_new, 1001), None);
        // Retired key: its cookies no longer open.
        let retired = keys("acme", &[("new", 2)]);
        assert_eq!(Session::open(&retired, &by_old, 1001), None);
        assert!(Session::open(&retired, &by_new, 1001).is_some());
    }

    #[test]
    fn no_keys_fail_closed_and_bad_keys_are_refused() {
        assert!(TenantKeys::new("acme", &config(&[], 60)).unwrap().is_none());
        let short = SessionConfig {
            duration_seconds: 60,
            signing_keys: vec![SessionKey {
                id: "k".into(),
                secret: Sensitive::new(STANDARD.encode([0u8; 16])),
            }],
        };
        assert!(matches!(
            TenantKeys::new("acme", &short),
            Err(SessionError::BadKey { .. })
        ));
    }

    #[test]
    fn oversized_sessions_are_refused_when_sealed() {
        let rng = SystemRandom::new();
        let k = keys("acme", &[("k1", 1)]);
        let mut s = session(1000);
        s.groups = (0..500).map(|i| format!("group-{i}")).collect();
        assert!(matches!(s.seal(&k, &rng), Err(SessionError::TooLarge(_))));
    }

    #[test]
    fn login_state_round_trips_and_expires() {
        let rng = SystemRandom::new();
        let k = keys("acme", &[("k1", 1)]);
        let st = LoginState {
            idp: "corp".into(),
            state: random_token(&rng, 16).unwrap(),
            nonce: random_token(&rng, 16).unwrap(),
            verifier: random_token(&rng, 32).unwrap(),
            host: "app.acme.test".into(),
            return_to: "/x?y=1".into(),
            expires_at: 2000,
        };
        assert_eq!(st.verifier.len(), 43);
        let v = st.seal(&k, &rng).unwrap();
        assert_eq!(LoginState::open(&k, &v, 1999), Some(st));
        assert_eq!(LoginState::open(&k, &v, 2000), None);
        assert_eq!(Session::open(&k, &v, 1999), None);
    }

    #[test]
    fn only_same_host_paths_are_local() {
        for ok in ["/", "/a/b?c=d", "/a//b"] {
            assert!(is_local_path(ok), "{ok}");
        }
        for bad in [
            "",
            "//evil.test/",
            "/\\evil.test",
            "https://evil.test/",
            "evil",
            "/a\r\nSet-Cookie: x",
            "/a b",
        ] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }

    #[test]
    fn cookies_are_secure_http_only_lax() {
        assert_eq!(
            set_cookie(SESSION_COOKIE, "v", 60),
            "__Host-rtn_session=v; Max-Age=60; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
    }
}

//! Authentication: the credentials a request presents, verified against the providers of
//! the requested Resource's tenant, become an [`Identity`].
//!
//! A credential that is present but does not verify is an error (401), never a fallback to
//! anonymous: otherwise a Deny naming a user could be dodged by corrupting the token, and an
//! expired token would pass wherever anonymous callers may. What counts as presented:
//! - `Authorization: Bearer <token>`, when the tenant has a JWT provider or one of its
//!   Policies names a `serviceAccount` principal (otherwise the header belongs to the
//!   upstream and passes through untouched); a token whose `iss` is the cluster's
//!   ServiceAccount issuer is checked by that issuer's verifier alone (and yields a
//!   ServiceAccount, never a user), any other token by the tenant's JWT providers alone; an
//!   `Authorization` value
//!   that does not parse ([`authorization`]) is invalid credentials on every host;
//! - without such a header, a cookie named by a JWT provider's `cookieName` (browsers cannot
//!   add headers to a navigation); the proxy strips that cookie before forwarding;
//! - the header of any of the tenant's API-key providers;
//! - a TLS client certificate (already verified against the listener's CA bundle during the
//!   handshake; here it must also chain to a CA of one of this tenant's providers).
//!
//! Several credentials may be presented together; each must verify, and the identity holds
//! all of them.

use crate::state::TenantAuth;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustronaut_contract::Identity;
use rustronaut_contract::identity::cache::TokenCache;
use rustronaut_contract::identity::cert::{CertError, certificate_identity};
use rustronaut_contract::identity::jwt::{JwtError, JwtVerifier};
use rustronaut_contract::identity::serviceaccount::{ServiceAccountError, ServiceAccountVerifier};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The verifiers of the tenant's remote-JWKS providers, as fetched so far.
pub trait RemoteVerifiers {
    /// The verifier of provider `idp`, if its keys were fetched.
    fn verifier(&self, idp: &str) -> Option<Arc<JwtVerifier>>;
    /// A token named a key id the fetched keys lack: ask for an early refetch.
    fn unknown_kid(&self, idp: &str);
    /// The verifier of the cluster's ServiceAccount tokens, if its keys were fetched.
    fn service_accounts(&self) -> Option<Arc<ServiceAccountVerifier>> {
        None
    }
    /// A ServiceAccount token named a key id the cluster's fetched keys lack.
    fn unknown_service_account_kid(&self) {}
}

/// No remote keys (tests, tenants without remote providers).
#[derive(Debug)]
pub struct NoRemote;

impl RemoteVerifiers for NoRemote {
    fn verifier(&self, _: &str) -> Option<Arc<JwtVerifier>> {
        None
    }
    fn unknown_kid(&self, _: &str) {}
}

/// Why credentials were refused. Every variant means 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// A bearer token that no JWT provider of the tenant accepts.
    #[error("bearer token refused: {0}")]
    Token(JwtError),
    /// A token of the cluster's ServiceAccount issuer that does not verify (expired, another
    /// audience, unknown key, ...).
    #[error("ServiceAccount token refused: {0}")]
    ServiceAccount(ServiceAccountError),
    /// A bearer token while no JWT provider of the tenant has keys (remote JWKS not
    /// fetched yet, or the cluster's ServiceAccount keys not fetched).
    #[error("bearer token refused: no provider of the tenant has keys yet")]
    Unverifiable,
    /// An `Authorization` header the gateway cannot parse ([`authorization`]).
    #[error("Authorization header is malformed")]
    MalformedAuthorization,
    /// The same credential header sent more than once.
    #[error("credential header {0} sent more than once")]
    Repeated(String),
    /// An API key no client of the provider has.
    #[error("API key refused by provider {0}")]
    ApiKey(String),
    /// A client certificate no clientCertificate provider of the tenant issued.
    #[error("client certificate not issued by a CA of this tenant")]
    CertificateNotTrusted,
    /// A client certificate the identity extraction cannot read.
    #[error("client certificate unreadable: {0}")]
    Certificate(#[from] CertError),
}

impl AuthnError {
    /// Stable short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Token(_)
            | Self::ServiceAccount(_)
            | Self::Unverifiable
            | Self::MalformedAuthorization => "InvalidToken",
            Self::Repeated(_) => "RepeatedCredential",
            Self::ApiKey(_) => "InvalidApiKey",
            Self::CertificateNotTrusted | Self::Certificate(_) => "InvalidClientCertificate",
        }
    }
}

/// The values of one request header, in order: on the stack for the usual one or two, as
/// every request looks up several headers (issue 19).
pub type HeaderValues<'h> = smallvec::SmallVec<[&'h str; 2]>;

/// What the request presented, gathered by the proxy phase.
pub struct Credentials<'a, 'h> {
    /// Values of a request header (lower-case name), in order.
    pub header: &'a dyn Fn(&str) -> HeaderValues<'h>,
    /// The verified TLS client certificate chain, leaf first.
    pub client_chain: Option<&'a [CertificateDer<'static>]>,
}

/// The bearer token of an `Authorization` value, if it uses the Bearer scheme
/// (case-insensitive, RFC 9110 §11.1).
pub fn bearer(value: &str) -> Option<&str> {
    match authorization(value) {
        Some(Authorization::Bearer(t)) => Some(t),
        _ => None,
    }
}

/// An `Authorization` value, as the gateway reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Bearer <token68>` (scheme in any case, one or more spaces before the token).
    Bearer(&'a str),
    /// A well-formed value of another scheme (`Basic ...`): the upstream's business.
    Other,
}

/// Parses an `Authorization` value (RFC 9110 §11.4: `auth-scheme [ 1*SP ( token68 /
/// #auth-param ) ]`). `None` for anything else: a tab or other control character, an empty
/// value, a scheme that is not a token, a Bearer scheme without exactly one token68, or a
/// scheme that starts with `bearer` (`Bearer\ttoken`, `Bearer:token`). Such a value is
/// neither a token the gateway checked nor safely the upstream's, since a lenient upstream
/// might read it as a bearer token, so it is refused as invalid credentials.
///
/// One pass over the value: the gateway reads the Authorization value of every request,
/// and a bearer token is about a kilobyte (the first version, two passes with a small slice
/// search per byte, was the gateway's most expensive function of its own in issue 19's
/// profile, 3.4 % of the process's samples; a table lookup per byte was still 0.7 %, hence
/// [`all_token68`]).
pub fn authorization(value: &str) -> Option<Authorization<'_>> {
    match scan_authorization(value)? {
        Authorization::Bearer(t) => bearer_token68(t).then_some(Authorization::Bearer(t)),
        other => Some(other),
    }
}

/// [`authorization`] but for one check: a Bearer token comes back without being checked
/// against token68 ([`bearer_token68`]); every other byte of the value is checked.
///
/// Why [`authenticate`] takes this one: checking the token is a pass over about a kilobyte
/// on every request (~2,300 instructions, issue 19, `gateway/bench/instructions.sh`), and
/// a token that verifies, from the cache or afresh, has passed a stricter check already (a
/// JWT is three base64url segments joined by dots, each decoded by an alphabet without
/// padding, all token68 bytes). So [`authenticate`] checks a token only where it did not
/// verify, before that failure has any effect, which refuses exactly the values
/// [`authorization`] refuses, with the same error.
fn scan_authorization(value: &str) -> Option<Authorization<'_>> {
    let value = value.trim_matches(' ');
    // The scheme is the tchar bytes up to the first space (or the end): found and checked
    // in one short pass, not a `char` search of the whole value and a pass over its part.
    let n = value
        .bytes()
        .position(|b| !TCHAR[usize::from(b)])
        .unwrap_or(value.len());
    let rest = match value.as_bytes().get(n) {
        None => "",
        // A space (ASCII) ends the scheme: `n` and `n + 1` are char boundaries.
        Some(b' ') => &value[n + 1..],
        // Anything else before the first space: the scheme is not tchar.
        Some(_) => return None,
    };
    let scheme = &value[..n];
    if scheme.is_empty() {
        return None;
    }
    let rest = rest.trim_start_matches(' ');
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Authorization::Bearer(rest));
    }
    // The scheme is tchar only (ASCII), so its first six bytes are a char boundary.
    if scheme.len() > 6 && scheme[..6].eq_ignore_ascii_case("bearer") {
        return None;
    }
    // Spaces were trimmed and the scheme is tchar: what is left to check is the rest.
    if rest.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return None;
    }
    Some(Authorization::Other)
}

/// Whether the part of a Bearer value after its scheme and spaces is one token68: not
/// empty, token68 bytes, then only `=`. Every byte is checked, so a control character
/// anywhere refuses it.
fn bearer_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && all_token68(body.as_bytes())
}

/// `tchar` (RFC 9110 §5.6.2): the bytes of an auth-scheme.
static TCHAR: [bool; 256] = byte_set(b"!#$%&'*+-.^_`|~");

/// Whether every byte is one of a token68 (RFC 9110 §11.2) before its trailing `=`.
/// Comparisons without a branch per byte, 32 bytes a step, so the compiler checks a chunk
/// with vector compares; the first bad chunk ends the scan.
fn all_token68(s: &[u8]) -> bool {
    s.chunks(32)
        .all(|c| c.iter().fold(true, |ok, &b| ok & is_token68(b)))
}

/// ASCII letters and digits, `-._~+/`.
#[inline(always)]
fn is_token68(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// ASCII letters and digits, and `extra`.
const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut b = 0;
    while b < 256 {
        set[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        set[extra[i] as usize] = true;
        i += 1;
    }
    set
}

/// The values of cookie `name` in `Cookie` header values (`a=1; b=2`, RFC 6265 §5.4; HTTP/2
/// clients may send several headers). Names match exactly, as browsers store them.
pub fn cookie_values<'h>(headers: &[&'h str], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
        .collect()
}

/// A `Cookie` header value without the cookies in `names`; `None` when nothing is left.
pub fn strip_cookies(value: &str, names: &[String]) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let n = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !names.iter().any(|x| x == n)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Verifies `creds` against `auth` at `now` (unix seconds); tokens go through `cache`.
pub fn authenticate(
    auth: &TenantAuth,
    creds: &Credentials<'_, '_>,
    source_ip: IpAddr,
    now: u64,
    cache: &TokenCache,
    remote: &dyn RemoteVerifiers,
) -> Result<Identity, AuthnError> {
    let mut identity = Identity::anonymous(Some(source_ip));

    // On every host, with or without JWT providers: a value nobody can read the same way
    // twice is refused, not passed on as the upstream's business.
    // Each value read once: its bearer token kept for below, checked against token68 only
    // where it does not verify (`scan_authorization`).
    let mut tokens: HeaderValues<'_> = HeaderValues::new();
    for v in (creds.header)("authorization") {
        match scan_authorization(v) {
            None => return Err(AuthnError::MalformedAuthorization),
            Some(Authorization::Bearer(t)) => tokens.push(t),
            Some(Authorization::Other) => {}
        }
    }
    // Before any error of a header token that did not verify, and before that failure has
    // any effect (a fetch of keys for an unknown `kid`): a token that is not a token68 was
    // a malformed value. Tokens from cookies were never read as `Authorization` values.
    let from_header = !tokens.is_empty();
    let unreadable = |token: &str| {
        if from_header && !bearer_token68(token) {
            Err(AuthnError::MalformedAuthorization)
        } else {
            Ok(())
        }
    };
    if !auth.takes_bearer_tokens() || tokens.len() > 1 {
        // No token here will be verified: each is checked now.
        for t in &tokens {
            unreadable(t)?;
        }
    }
    if auth.takes_bearer_tokens() {
        if tokens.len() > 1 {
            return Err(AuthnError::Repeated("authorization".into()));
        }
        if tokens.is_empty() && !auth.jwt_cookies.is_empty() {
            let cookies = (creds.header)("cookie");
            for name in &auth.jwt_cookies {
                let found = cookie_values(&cookies, name);
                if found.len() > 1 {
                    return Err(AuthnError::Repeated(format!("cookie {name}")));
                }
                if let Some(t) = found.first() {
                    tokens.push(t);
                    break;
                }
            }
        }
        let cluster = auth
            .service_accounts
            .then(|| remote.service_accounts())
            .flatten();
        if let (Some(token), Some(sa)) = (tokens.first(), cluster)
            && sa.claims_issuer(token)
        {
            match sa.verify_cached(cache, token, now) {
                Ok(account) => identity.service_account = Some(account),
                Err(e) => {
                    unreadable(token)?;
                    if matches!(e, ServiceAccountError::Token(JwtError::UnknownKid(_))) {
                        remote.unknown_service_account_kid();
                    }
                    return Err(AuthnError::ServiceAccount(e));
                }
            }
        } else if let Some(token) = tokens.first() {
            let mut first_err = None;
            let remote_verifiers: Vec<(&str, Arc<JwtVerifier>)> = auth
                .remote_jwt
                .iter()
                .filter_map(|idp| remote.verifier(idp).map(|v| (idp.as_str(), v)))
                .collect();
            let inline = auth.jwt.iter().map(|v| (None, v));
            let fetched = remote_verifiers.iter().map(|(idp, v)| (Some(*idp), &**v));
            for (remote_idp, v) in inline.chain(fetched) {
                match v.verify_cached(cache, token, now) {
                    Ok(t) => {
                        identity.user = Some(t.identity.clone());
                        break;
                    }
                    Err(e) => {
                        if first_err.is_none() {
                            unreadable(token)?;
                        }
                        if let (Some(idp), JwtError::UnknownKid(_)) = (remote_idp, &e) {
                            remote.unknown_kid(idp);
                        }
                        first_err.get_or_insert(e);
                    }
                }
            }
            if identity.user.is_none() {
                // No verifier at all (remote keys not fetched yet): checked here.
                unreadable(token)?;
                return Err(first_err.map_or(AuthnError::Unverifiable, AuthnError::Token));
            }
        }
    }

    for p in &auth.api_keys {
        let values = (creds.header)(&p.header);
        match values.as_slice() {
            [] => {}
            [key] => match p.verifier.verify(key) {
                // Two providers reading the same header: the first that knows the key wins.
                Some(id) if identity.api_key.is_none() => identity.api_key = Some(id),
                Some(_) => {}
                None if identity.api_key.is_some() => {}
                None => {
                    // Another provider with the same header may still know it.
                    let other = auth
                        .api_keys
                        .iter()
                        .filter(|q| q.header == p.header && !std::ptr::eq(*q, p))
                        .find_map(|q| q.verifier.verify(key));
                    match other {
                        Some(id) => identity.api_key = Some(id),
                        None => return Err(AuthnError::ApiKey(p.header.clone())),
                    }
                }
            },
            _ => return Err(AuthnError::Repeated(p.header.clone())),
        }
    }

    if let Some(chain) = creds.client_chain
        && let Some((leaf, intermediates)) = chain.split_first()
    {
        let at = UnixTime::since_unix_epoch(Duration::from_secs(now));
        let idp = auth
            .certs
            .iter()
            .find(|p| {
                p.verifier
                    .verify_client_cert(leaf, intermediates, at)
                    .is_ok()
            })
            .ok_or(AuthnError::CertificateNotTrusted)?;
        identity.client_certificate = Some(certificate_identity(&idp.idp, leaf.as_ref())?);
    }

    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token68_bytes_are_letters_digits_and_six_marks() {
        let table = byte_set(b"-._~+/");
        for b in 0..=255u8 {
            assert_eq!(is_token68(b), table[usize::from(b)], "byte {b:#04x}");
            // Anywhere in a long token, in any chunk position.
            for at in [0, 31, 32, 700] {
                let mut token = vec![b'a'; 701];
                token[at] = b;
                assert_eq!(
                    all_token68(&token),
                    table[usize::from(b)],
                    "{b:#04x} at {at}"
                );
            }
        }
        assert!(all_token68(b""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_not_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc"), Some("abc"));
        assert_eq!(bearer("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer("Bearer"), None);
    }

    /// The one-pass parser reads every value as the two-pass one it replaced (issue 19)
    /// did: every string of up to six bytes over an alphabet of the cases that matter
    /// (spaces, a tab, `=`, a letter of `bearer` in both cases, a token68-only `/`, a
    /// `,`, a control character and a non-ASCII letter).
    #[test]
    fn authorization_reads_every_short_value_as_the_two_pass_parser_did() {
        fn reference(value: &str) -> Option<Authorization<'_>> {
            let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if value.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
                return None;
            }
            let value = value.trim_matches(' ');
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.is_empty() || !scheme.bytes().all(is_tchar) {
                return None;
            }
            let rest = rest.trim_start_matches(' ');
            let lower = scheme.to_ascii_lowercase();
            if lower == "bearer" {
                let body = rest.trim_end_matches('=');
                let ok = !body.is_empty()
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
                return ok.then_some(Authorization::Bearer(rest));
            }
            if lower.starts_with("bearer") {
                return None;
            }
            Some(Authorization::Other)
        }
        let alphabet = [" ", "\t", "=", "b", "E", "/", ",", "\u{1}", "\u{e9}"];
        let mut checked = 0;
        let mut values = vec![String::new()];
        for _ in 0..6 {
            let mut longer = Vec::new();
            for v in &values {
                assert_eq!(authorization(v), reference(v), "{v:?}");
                checked += 1;
                for a in alphabet {
                    longer.push(format!("{v}{a}"));
                }
            }
            values = longer;
        }
        for prefix in ["Bearer ", "bearer  ", "BEARERx ", "Basic ", "Bearer"] {
            for v in &values {
                let v = format!("{prefix}{v}");
                assert_eq!(authorization(&v), reference(&v), "{v:?}");
                checked += 1;
            }
        }
        assert!(checked > 2_700_000, "{checked}");
    }

    /// Issue 14, item 17: a value the gateway cannot read is never "no credentials".
    #[test]
    fn unparseable_authorization_values_are_errors_and_other_schemes_are_not() {
        for bad in [
            "Bearer\tabc",
            "Bearer\t abc",
            "Bearer:abc",
            "Bearerabc",
            "Bearer a b",
            "Bearer a,b",
            "Bearer ",
            "Bearer",
            "",
            " ",
            "\tBearer abc",
            "Bearer abc\r",
            "B@sic x",
            "Basic \u{e9}",
        ] {
            assert_eq!(authorization(bad), None, "{bad:?}");
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
        assert_eq!(
            authorization("Bearer a.b-c_~+/=="),
            Some(Authorization::Bearer("a.b-c_~+/=="))
        );
        assert_eq!(
            authorization("bEaReR   abc  "),
            Some(Authorization::Bearer("abc"))
        );
        assert_eq!(
            authorization("Basic dXNlcjpwdw=="),
            Some(Authorization::Other)
        );
        assert_eq!(
            authorization("Digest username=\"a\", realm=\"b\""),
            Some(Authorization::Other)
        );
        assert_eq!(authorization("Negotiate"), Some(Authorization::Other));
    }

    /// A remote provider whose keys were fetched, counting the refetches asked for.
    struct Fetched {
        verifier: Arc<JwtVerifier>,
        refetches: std::sync::atomic::AtomicUsize,
    }

    impl RemoteVerifiers for Fetched {
        fn verifier(&self, _: &str) -> Option<Arc<JwtVerifier>> {
            Some(self.verifier.clone())
        }
        fn unknown_kid(&self, _: &str) {
            self.refetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Issue 19: a Bearer token is checked against token68 only where it does not verify.
    /// Every value is refused or accepted as [`authorization`] (the eager check) says, with
    /// the same error, whether the token is in the cache or not, whichever verifier reads
    /// it, and a malformed value never asks for a key refetch (its failure has no effect).
    #[test]
    fn a_token_is_checked_where_it_does_not_verify_with_the_eager_checks_outcome() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        use rustronaut_contract::identity::jwt::{Jwks, JwtVerifierConfig};
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        );
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        let b64 =
            |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "alg": "ES256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
        let config = JwtVerifierConfig {
            idp: "idp".into(),
            issuer: "https://issuer.test".into(),
            audiences: vec!["rtn".into()],
            groups_claim: "groups".into(),
            email_claim: "email".into(),
            clock_skew: 0,
        };
        let verifier =
            || JwtVerifier::new(config.clone(), Jwks::from_value(&jwks).unwrap()).unwrap();
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let sign = |kid: &str| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(kid.into());
            let claims = serde_json::json!({"iss": "https://issuer.test", "aud": "rtn",
                "sub": "alice", "exp": 2_000_000_000u64});
            encode(&h, &claims, &key).unwrap()
        };
        let good = sign("k1");
        let unknown_kid = sign("k9");
        let now = 1_900_000_000;

        // Values around a good token and one with an unknown key id: each byte class that
        // token68 refuses, at the start, in the middle and at the end (the signature), and
        // the valid spellings.
        let mut values = Vec::new();
        for token in [&good, &unknown_kid] {
            values.push(format!("Bearer {token}"));
            values.push(format!("bearer   {token}=="));
            for bad in ["\u{1}", "\t", " ", ",", "\"", "=", "\u{7f}", "\u{e9}", "!"] {
                for at in [0, token.len() / 2, token.len()] {
                    let mut t = token.clone();
                    t.insert_str(at, bad);
                    values.push(format!("Bearer {t}"));
                }
            }
        }
        let inline = TenantAuth {
            jwt: vec![verifier()],
            ..TenantAuth::default()
        };
        let remote = TenantAuth {
            remote_jwt: vec!["idp".into()],
            ..TenantAuth::default()
        };
        let fetched = Fetched {
            verifier: Arc::new(verifier()),
            refetches: 0.into(),
        };
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut refused = 0;
        for (auth, remote) in [
            (&inline, &fetched as &dyn RemoteVerifiers),
            (&remote, &fetched),
        ] {
            let cache = TokenCache::new(16).unwrap();
            // Twice: the first time the good token verifies afresh, the second from the cache.
            for _ in 0..2 {
                for v in &values {
                    let header = |n: &str| {
                        if n == "authorization" {
                            HeaderValues::from_slice(&[v.as_str()])
                        } else {
                            HeaderValues::new()
                        }
                    };
                    let creds = Credentials {
                        header: &header,
                        client_chain: None,
                    };
                    let before = fetched.refetches.load(std::sync::atomic::Ordering::Relaxed);
                    let got = authenticate(auth, &creds, ip, now, &cache, remote);
                    let after = fetched.refetches.load(std::sync::atomic::Ordering::Relaxed);
                    match authorization(v) {
                        None => {
                            assert!(
                                matches!(got, Err(AuthnError::MalformedAuthorization)),
                                "{v:?}: {got:?}"
                            );
                            assert_eq!(before, after, "{v:?} asked for a refetch");
                            refused += 1;
                        }
                        Some(Authorization::Bearer(t)) if t == good => {
                            assert!(got.is_ok_and(|id| id.user.is_some()), "{v:?}");
                        }
                        // Well-formed, but padded or naming a key the JWKS lacks.
                        Some(_) => {
                            assert!(matches!(got, Err(AuthnError::Token(_))), "{v:?}: {got:?}")
                        }
                    }
                }
            }
            assert_eq!(cache.len(), 1, "only the good token was cached");
        }
        // Two tenants, two rounds, two tokens, and of the 27 insertions per token all but a
        // space at either end and a `=` at the end (still one token68).
        assert_eq!(refused, 2 * 2 * 2 * 24);
        // Only the well-formed spellings of the token with an unknown key id asked for
        // refetches: five (the two, and the three insertions above that stay one token68),
        // two rounds, through the remote provider only.
        assert_eq!(
            fetched.refetches.load(std::sync::atomic::Ordering::Relaxed),
            10
        );

        // Two values, one malformed: malformed first, as before; a tenant without bearer
        // providers refuses a malformed one too.
        let cache = TokenCache::new(16).unwrap();
        let (ok, malformed) = (format!("Bearer {good}"), format!("Bearer {good}!"));
        let none = TenantAuth::default();
        for (auth, [a, b], want_malformed) in [
            (&inline, [&ok, &malformed], true),
            (&inline, [&ok, &ok], false),
            (&none, [&malformed, &"Basic x".to_string()], true),
            (&none, [&ok, &"Basic x".to_string()], false),
        ] {
            let header = |n: &str| {
                if n == "authorization" {
                    HeaderValues::from_slice(&[a.as_str(), b.as_str()])
                } else {
                    HeaderValues::new()
                }
            };
            let creds = Credentials {
                header: &header,
                client_chain: None,
            };
            let got = authenticate(auth, &creds, ip, now, &cache, &NoRemote);
            assert_eq!(
                matches!(got, Err(AuthnError::MalformedAuthorization)),
                want_malformed,
                "{a:?}, {b:?}: {got:?}"
            );
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name_and_stripped_alone() {
        let headers = ["theme=dark; rtn_token=abc.def.ghi", "other=1; rtn_token2=x"];
        assert_eq!(cookie_values(&headers, "rtn_token"), vec!["abc.def.ghi"]);
        assert_eq!(cookie_values(&headers, "RTN_TOKEN"), Vec::<&str>::new());
        assert_eq!(cookie_values(&["a=\"q\""], "a"), vec!["q"]);
        let names = vec!["rtn_token".to_string()];
        assert_eq!(
            strip_cookies(headers[0], &names).as_deref(),
            Some("theme=dark")
        );
        assert_eq!(strip_cookies("rtn_token=x", &names), None);
        assert_eq!(
            strip_cookies(headers[1], &names).as_deref(),
            Some("other=1; rtn_token2=x")
        );
    }

    #[test]
    fn a_repeated_token_cookie_is_refused() {
        let auth = TenantAuth {
            remote_jwt: vec!["remote".into()],
            jwt_cookies: vec!["t".into()],
            ..TenantAuth::default()
        };
        let header = |n: &str| {
            if n == "cookie" {
                HeaderValues::from_slice(&["t=a.b.c", "t=d.e.f"])
            } else {
                HeaderValues::new()
            }
        };
        let creds = Credentials {
            header: &header,
            client_chain: None,
        };
        let cache = TokenCache::new(16).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let err = authenticate(&auth, &creds, ip, 0, &cache, &NoRemote);
        assert!(matches!(err, Err(AuthnError::Repeated(h)) if h == "cookie t"));
    }

    #[test]
    fn anonymous_when_nothing_is_presented() {
        let auth = TenantAuth::default();
        let header = |_: &str| HeaderValues::new();
        let creds = Credentials {
            header: &header,
            client_chain: None,
        };
        let cache = TokenCache::new(16).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let id = authenticate(&auth, &creds, ip, 0, &cache, &NoRemote).unwrap();
        assert!(!id.authenticated());
        assert_eq!(id.source_ip, Some(ip));
    }

    #[test]
    fn a_bearer_token_is_refused_while_remote_keys_are_not_fetched() {
        let auth = TenantAuth {
            remote_jwt: vec!["remote".into()],
            ..TenantAuth::default()
        };
        let header = |n: &str| {
            if n == "authorization" {
                HeaderValues::from_slice(&["Bearer x.y.z"])
            } else {
                HeaderValues::new()
            }
        };
        let creds = Credentials {
            header: &header,
            client_chain: None,
        };
        let cache = TokenCache::new(16).unwrap();
        let err = authenticate(
            &auth,
            &creds,
            "192.0.2.7".parse().unwrap(),
            0,
            &cache,
            &NoRemote,
        );
        assert!(matches!(err, Err(AuthnError::Unverifiable)));
    }
}

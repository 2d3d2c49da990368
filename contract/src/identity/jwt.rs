//! Bearer JWT verification: RS256/384/512, PS256/384/512, ES256, ES384, EdDSA against a JWKS,
//! with `iss`, `aud`, `exp`, `nbf`, `iat` checked against a caller-supplied time.
//!
//! ```text
//!  token --size--> split in 3 --header: alg, kid, crit--> key by kid (or every key when the
//!  token has none) --alg allowed for that key?--> signature (ring) --claims: iss, aud, exp,
//!  nbf, iat, sub--> VerifiedToken { UserIdentity, exp }
//! ```
//!
//! jsonwebtoken parses the JWKS (its `Jwk` types) and names the algorithms; the signature
//! itself is checked with ring, the crypto library the rest of the tree already uses (rustls,
//! certificates), on key material parsed once per JWKS. jsonwebtoken's RustCrypto backend
//! measured 7-20x slower on the project's machines for RS256 and ES256 (see
//! docs/benchmarks-contract.md), and one crypto stack is less to audit.
//!
//! What is refused, and why:
//! - `alg: none` (any case): unsigned tokens.
//! - every `HS*` algorithm, and every symmetric (`kty: oct`) key in a JWKS: a JWKS is public,
//!   so a symmetric key there is a key anyone has; and accepting HS256 is what makes the
//!   classic algorithm-confusion attack (HMAC "signed" with the RSA public key) possible.
//! - an `alg` the selected key does not allow. A key's algorithms come from its type and
//!   curve (EC P-256 -> ES256 only, Ed25519 -> EdDSA only, RSA -> the RSA family) narrowed by
//!   the JWK's own `alg` when present: the token never chooses how its key is used.
//! - RSA keys under 2048 bits; keys whose `use` is not `sig` or whose `key_ops` lack `verify`;
//!   keys embedded in the token (`jwk`, `jku`, `x5u`, `x5c` headers are ignored, never used).
//! - a `crit` header: we implement no JWS extensions, so RFC 7515 says reject.
//! - tokens over [`MAX_TOKEN_LEN`] bytes, before any parsing.
//!
//! Time is an argument: jsonwebtoken's own `exp`/`nbf` checks read the system clock, so they
//! are not used; this module checks `exp` (required), `nbf` and `iat` itself with a bounded
//! clock skew (default 60 s, at most [`MAX_CLOCK_SKEW`]). Claims are only read after the
//! signature verified.

use super::UserIdentity;
use super::cache::TokenCache;
use crate::snapshot::JwtProvider;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use ring::signature as sig;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

/// Default tolerated clock difference, seconds.
pub const DEFAULT_CLOCK_SKEW: u64 = 60;
/// Largest accepted clock skew, seconds.
pub const MAX_CLOCK_SKEW: u64 = 300;
/// Largest token accepted, bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Smallest RSA modulus accepted, bytes (2048 bits).
const MIN_RSA_MODULUS: usize = 256;

/// Why a token or a JWKS was refused. For tokens, every variant means 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// Not three base64url parts with a JSON header and payload.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg: none`.
    #[error("unsigned token (alg none) refused")]
    AlgNone,
    /// An HMAC algorithm.
    #[error("symmetric algorithm {0} refused: only asymmetric signatures are accepted")]
    SymmetricAlgorithm(String),
    /// An algorithm this verifier does not implement.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A `crit` header.
    #[error("token has critical header extensions, which are not supported")]
    CriticalHeader,
    /// No key with the token's `kid`: the caller may refetch the JWKS (rate-limited).
    #[error("no key with kid {0:?} in the JWKS")]
    UnknownKid(String),
    /// No key allows the token's algorithm (token without `kid`).
    #[error("no key in the JWKS allows algorithm {0:?}")]
    NoMatchingKey(String),
    /// The key named by `kid` does not allow the token's algorithm.
    #[error("key {kid:?} does not allow algorithm {alg:?}")]
    AlgorithmMismatch {
        /// Key id.
        kid: String,
        /// Token algorithm.
        alg: String,
    },
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// `iss` is not the provider's issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// No `aud` value is accepted.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is absent.
    #[error("missing claim {0:?}")]
    MissingClaim(&'static str),
    /// A claim has the wrong type.
    #[error("invalid claim {0:?}")]
    InvalidClaim(&'static str),
    /// `exp` is past (beyond the clock skew).
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// `exp`.
        exp: u64,
        /// The evaluation time.
        now: u64,
    },
    /// `nbf` or `iat` is in the future (beyond the clock skew).
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// `nbf` (or `iat`).
        nbf: u64,
        /// The evaluation time.
        now: u64,
    },
    /// The JWKS document is malformed.
    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),
    /// The JWKS has no key this verifier can use.
    #[error("JWKS has no usable signing key ({0})")]
    NoUsableKeys(String),
    /// The verifier settings cannot work.
    #[error("invalid JWT provider settings: {0}")]
    InvalidConfig(&'static str),
}

/// The RSA algorithms accepted for an RSA key whose JWK names no `alg`.
const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Public key material, parsed and checked once per JWKS.
enum KeyMaterial {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point `04 || x || y`.
    Ec(Vec<u8>),
    /// 32-byte Ed25519 public key.
    Ed(Vec<u8>),
}

impl KeyMaterial {
    fn bytes(&self) -> Vec<&[u8]> {
        match self {
            Self::Rsa { n, e } => vec![n, e],
            Self::Ec(p) | Self::Ed(p) => vec![p],
        }
    }

    /// Whether `signature` is valid for `message` under `alg` with this key. The algorithm was
    /// already checked against the key's allowed algorithms; a mismatch here is `false`.
    fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        let rsa = |params: &sig::RsaParameters, n: &[u8], e: &[u8]| {
            sig::RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok()
        };
        let unparsed = |algorithm: &'static dyn sig::VerificationAlgorithm, key: &[u8]| {
            sig::UnparsedPublicKey::new(algorithm, key)
                .verify(message, signature)
                .is_ok()
        };
        match (self, alg) {
            (Self::Rsa { n, e }, Algorithm::RS256) => rsa(&sig::RSA_PKCS1_2048_8192_SHA256, n, e),
            (Self::Rsa { n, e }, Algorithm::RS384) => rsa(&sig::RSA_PKCS1_2048_8192_SHA384, n, e),
            (Self::Rsa { n, e }, Algorithm::RS512) => rsa(&sig::RSA_PKCS1_2048_8192_SHA512, n, e),
            (Self::Rsa { n, e }, Algorithm::PS256) => rsa(&sig::RSA_PSS_2048_8192_SHA256, n, e),
            (Self::Rsa { n, e }, Algorithm::PS384) => rsa(&sig::RSA_PSS_2048_8192_SHA384, n, e),
            (Self::Rsa { n, e }, Algorithm::PS512) => rsa(&sig::RSA_PSS_2048_8192_SHA512, n, e),
            (Self::Ec(p), Algorithm::ES256) => unparsed(&sig::ECDSA_P256_SHA256_FIXED, p),
            (Self::Ec(p), Algorithm::ES384) => unparsed(&sig::ECDSA_P384_SHA384_FIXED, p),
            (Self::Ed(k), Algorithm::EdDSA) => unparsed(&sig::ED25519, k),
            _ => false,
        }
    }
}

struct JwksKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: KeyMaterial,
}

/// A parsed JWKS: only asymmetric signing keys this verifier can use, each with the
/// algorithms it allows. Keys that cannot be used are skipped (see [`Jwks::skipped`]).
pub struct Jwks {
    keys: Vec<JwksKey>,
    skipped: Vec<String>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped)
            .finish()
    }
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, JwtError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| JwtError::InvalidJwks(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Parses a JWKS document already read as JSON.
    pub fn from_value(v: &Value) -> Result<Self, JwtError> {
        let keys = v.get("keys").and_then(Value::as_array).ok_or_else(|| {
            JwtError::InvalidJwks("expected an object with a \"keys\" list".into())
        })?;
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for (i, raw) in keys.iter().enumerate() {
            let label = raw
                .get("kid")
                .and_then(Value::as_str)
                .map_or_else(|| format!("key {i}"), |k| format!("key {k:?}"));
            match serde_json::from_value::<Jwk>(raw.clone())
                .map_err(|e| format!("unparseable: {e}"))
                .and_then(|jwk| usable_key(&jwk))
            {
                Ok(k) => out.push(k),
                Err(why) => skipped.push(format!("{label}: {why}")),
            }
        }
        if out.is_empty() {
            return Err(JwtError::NoUsableKeys(if skipped.is_empty() {
                "no keys".into()
            } else {
                skipped.join("; ")
            }));
        }
        Ok(Self { keys: out, skipped })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no usable keys (never true for a successfully parsed JWKS).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that were skipped, and why (for logs and status).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

fn usable_key(jwk: &Jwk) -> Result<JwksKey, String> {
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("use is not sig".into());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include verify".into());
    }
    let declared: Option<Algorithm> = match &jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            Some(Algorithm::from_str(&a.to_string()).map_err(|_| format!("unsupported alg {a}"))?)
        }
    };
    let narrow = |allowed: &[Algorithm]| -> Result<Vec<Algorithm>, String> {
        match declared {
            None => Ok(allowed.to_vec()),
            Some(a) if allowed.contains(&a) => Ok(vec![a]),
            Some(a) => Err(format!("alg {a:?} does not fit the key type")),
        }
    };
    let (algorithms, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64(&p.n).ok_or("n is not base64url")?;
            let e = b64(&p.e).ok_or("e is not base64url")?;
            let n_trimmed = n.iter().skip_while(|b| **b == 0).count();
            if n_trimmed < MIN_RSA_MODULUS {
                return Err("RSA key shorter than 2048 bits".into());
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent out of range".into());
            }
            if n_trimmed > 1024 {
                return Err("RSA key longer than 8192 bits".into());
            }
            let n = n[n.len() - n_trimmed..].to_vec();
            (narrow(RSA_ALGS)?, KeyMaterial::Rsa { n, e })
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (alg, len) = match p.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                _ => return Err("unsupported curve".into()),
            };
            let x = b64(&p.x).ok_or("x is not base64url")?;
            let y = b64(&p.y).ok_or("y is not base64url")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (narrow(&[alg])?, KeyMaterial::Ec(point))
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve".into());
            }
            let x = b64(&p.x).ok_or("x is not base64url")?;
            if x.len() != 32 {
                return Err("Ed25519 key must be 32 bytes".into());
            }
            (narrow(&[Algorithm::EdDSA])?, KeyMaterial::Ed(x))
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never accepted".into());
        }
        _ => return Err("unsupported key type".into()),
    };
    Ok(JwksKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// Settings of one JWT (or OIDC ID-token) provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtVerifierConfig {
    /// Provider name, recorded in the identity.
    pub idp: String,
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Claim carrying groups.
    pub groups_claim: String,
    /// Claim carrying the email address.
    pub email_claim: String,
    /// Tolerated clock difference, seconds (at most [`MAX_CLOCK_SKEW`]).
    pub clock_skew: u64,
}

impl JwtVerifierConfig {
    /// Settings from a snapshot provider.
    pub fn from_provider(idp: &str, p: &JwtProvider) -> Self {
        Self {
            idp: idp.to_string(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            groups_claim: p.claim_mappings.groups.clone(),
            email_claim: p.claim_mappings.email.clone(),
            clock_skew: p.clock_skew_seconds,
        }
    }
}

/// A token that verified, and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The caller.
    pub identity: std::sync::Arc<UserIdentity>,
    /// `exp`.
    pub expires_at: u64,
}

/// Verifies tokens of one provider against one JWKS. Immutable: build a new one when the
/// JWKS is refetched (the cache key includes a fingerprint of both, so cached tokens of a
/// rotated-out key are not served).
pub struct JwtVerifier {
    config: JwtVerifierConfig,
    jwks: Jwks,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.config)
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for `config` and `jwks`.
    pub fn new(config: JwtVerifierConfig, jwks: Jwks) -> Result<Self, JwtError> {
        if config.issuer.is_empty() {
            return Err(JwtError::InvalidConfig("issuer is empty"));
        }
        if config.audiences.is_empty() || config.audiences.iter().any(String::is_empty) {
            return Err(JwtError::InvalidConfig("audiences must be non-empty"));
        }
        if config.clock_skew > MAX_CLOCK_SKEW {
            return Err(JwtError::InvalidConfig("clock skew above 300 seconds"));
        }
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(config.idp.as_bytes());
        field(config.issuer.as_bytes());
        for a in &config.audiences {
            field(a.as_bytes());
        }
        field(config.groups_claim.as_bytes());
        field(config.email_claim.as_bytes());
        field(&config.clock_skew.to_be_bytes());
        for k in &jwks.keys {
            field(k.kid.as_deref().unwrap_or("").as_bytes());
            for a in &k.algorithms {
                field(format!("{a:?}").as_bytes());
            }
            for b in k.key.bytes() {
                field(b);
            }
        }
        let fingerprint = h.finalize().into();
        Ok(Self {
            config,
            jwks,
            fingerprint,
        })
    }

    /// The settings.
    pub fn config(&self) -> &JwtVerifierConfig {
        &self.config
    }

    /// Verifies `token` at unix time `now` (seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("expected three dot-separated parts"));
        };
        let header = decode_json_object(header_b64).ok_or(JwtError::Malformed("header"))?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed("header has no alg"))?;
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(JwtError::AlgNone);
        }
        if alg_name
            .as_bytes()
            .get(..2)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"HS"))
        {
            return Err(JwtError::SymmetricAlgorithm(alg_name.to_string()));
        }
        let alg = Algorithm::from_str(alg_name)
            .map_err(|_| JwtError::UnsupportedAlgorithm(alg_name.to_string()))?;
        if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return Err(JwtError::SymmetricAlgorithm(alg_name.to_string()));
        }
        if header.contains_key("crit") {
            return Err(JwtError::CriticalHeader);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(JwtError::Malformed("kid is not a string")),
        };

        // Candidate keys.
        let candidates: Vec<&JwksKey> = match kid {
            Some(kid) => {
                let with_kid: Vec<&JwksKey> = self
                    .jwks
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if with_kid.is_empty() {
                    return Err(JwtError::UnknownKid(kid.to_string()));
                }
                let allowed: Vec<&JwksKey> = with_kid
                    .into_iter()
                    .filter(|k| k.algorithms.contains(&alg))
                    .collect();
                if allowed.is_empty() {
                    return Err(JwtError::AlgorithmMismatch {
                        kid: kid.to_string(),
                        alg: alg_name.to_string(),
                    });
                }
                allowed
            }
            None => {
                let allowed: Vec<&JwksKey> = self
                    .jwks
                    .keys
                    .iter()
                    .filter(|k| k.algorithms.contains(&alg))
                    .collect();
                if allowed.is_empty() {
                    return Err(JwtError::NoMatchingKey(alg_name.to_string()));
                }
                allowed
            }
        };

        // Signature over "header.payload".
        let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let signature = match URL_SAFE_NO_PAD.decode(sig_b64) {
            Ok(s) if !s.is_empty() => s,
            _ => return Err(JwtError::BadSignature),
        };
        let verified = candidates
            .iter()
            .any(|k| k.key.verify(alg, message, &signature));
        if !verified {
            return Err(JwtError::BadSignature);
        }

        let claims = decode_json_object(payload_b64).ok_or(JwtError::Malformed("payload"))?;
        self.check_claims(&claims, now)
    }

    /// [`verify`](Self::verify) through `cache`: a token verified before (by this verifier,
    /// with this JWKS) is served from the cache until its `exp` plus the clock skew.
    pub fn verify_cached(
        &self,
        cache: &TokenCache,
        token: &str,
        now: u64,
    ) -> Result<Arc<VerifiedToken>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        // The key is made of the signature only (the part after the last dot; the whole
        // token when it has none); the signed part before it, dot included, is compared on
        // a hit, so a hit is this exact token (super::cache's module docs say why).
        let (signed, signature) = token
            .as_bytes()
            .split_at(memchr::memrchr(b'.', token.as_bytes()).map_or(0, |i| i + 1));
        let key = cache.key(&self.fingerprint, signature);
        if let Some(hit) = cache.get(&key, signed, now) {
            return Ok(hit);
        }
        let verified = Arc::new(self.verify(token, now)?);
        let valid_until = verified.expires_at.saturating_add(self.config.clock_skew);
        cache.insert(key, signed, verified.clone(), valid_until, now);
        Ok(verified)
    }

    fn check_claims(&self, c: &Map<String, Value>, now: u64) -> Result<VerifiedToken, JwtError> {
        let skew = self.config.clock_skew;
        match c.get("iss") {
            None => return Err(JwtError::MissingClaim("iss")),
            Some(Value::String(iss)) if *iss == self.config.issuer => {}
            Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
            Some(_) => return Err(JwtError::InvalidClaim("iss")),
        }
        let aud_ok = match c.get("aud") {
            None => return Err(JwtError::MissingClaim("aud")),
            Some(Value::String(a)) => self.config.audiences.contains(a),
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| self.config.audiences.iter().any(|x| x == a))
            }),
            Some(_) => return Err(JwtError::InvalidClaim("aud")),
        };
        if !aud_ok {
            return Err(JwtError::WrongAudience);
        }
        let exp = numeric(c, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(skew) {
            return Err(JwtError::Expired { exp, now });
        }
        for claim in ["nbf", "iat"] {
            if let Some(t) = numeric(c, claim)?
                && t > now.saturating_add(skew)
            {
                return Err(JwtError::NotYetValid { nbf: t, now });
            }
        }
        let subject = match c.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => return Err(JwtError::MissingClaim("sub")),
            Some(_) => return Err(JwtError::InvalidClaim("sub")),
        };
        Ok(VerifiedToken {
            identity: std::sync::Arc::new(identity_from_claims(
                &self.config.idp,
                subject,
                c,
                &self.config.groups_claim,
                &self.config.email_claim,
            )),
            expires_at: exp,
        })
    }
}

/// The payload of `token`, **not verified**: for routing a token to the verifier of the
/// issuer it names, or for reading claims of a token a verifier already accepted.
pub fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    decode_json_object(token.split('.').nth(1)?)
}

fn decode_json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A NumericDate claim: a non-negative number (fractions truncated).
fn numeric(c: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match c.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1.8e19).contains(&f) => Ok(Some(f as u64)),
                    _ => Err(JwtError::InvalidClaim(name)),
                }
            }
        }
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Builds the identity from verified claims: `sub`; email from `email_claim`: the standard
/// `email` claim only when `email_verified` is true (boolean, or the string `"true"`), another
/// configured claim unless `email_verified` is false; groups from `groups_claim` (a list of strings, or one string);
/// scopes from `scope` (space-separated) and `scp` (list or space-separated string); every
/// top-level claim with a scalar or list value into `claims`.
pub fn identity_from_claims(
    idp: &str,
    subject: String,
    c: &Map<String, Value>,
    groups_claim: &str,
    email_claim: &str,
) -> UserIdentity {
    // Only an address the provider vouches for is an identity fact: without
    // `email_verified: true` anyone who can set their own address at the provider (many
    // providers let users) would match `emails` and `emailDomains` of whatever domain they
    // typed. The raw claim stays in `claims` for rules that want it anyway.
    // `email_verified` speaks for the standard `email` claim; a tenant that maps the email
    // to another claim (`upn`, which the directory's admins set, not the user) chose to
    // trust that claim, unless the provider says it is unverified.
    let marked = |b: bool| {
        matches!(c.get("email_verified"), Some(Value::Bool(v)) if *v == b)
            || c.get("email_verified")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case(if b { "true" } else { "false" }))
    };
    let trusted = if email_claim == "email" {
        marked(true)
    } else {
        !marked(false)
    };
    let email = if !trusted {
        None
    } else {
        c.get(email_claim)
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
    };
    let groups = c
        .get(groups_claim)
        .map(|v| match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default();
    let mut scopes: Vec<String> = Vec::new();
    if let Some(Value::String(s)) = c.get("scope") {
        scopes.extend(s.split_ascii_whitespace().map(str::to_string));
    }
    match c.get("scp") {
        Some(Value::String(s)) => scopes.extend(s.split_ascii_whitespace().map(str::to_string)),
        Some(Value::Array(items)) => {
            scopes.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
        }
        _ => {}
    }
    scopes.sort();
    scopes.dedup();
    let claims: BTreeMap<String, Vec<String>> = c
        .iter()
        .filter_map(|(k, v)| {
            let vals = strings(v);
            (!vals.is_empty()).then(|| (k.clone(), vals))
        })
        .collect();
    UserIdentity {
        idp: idp.to_string(),
        subject,
        email,
        groups,
        claims,
        scopes,
        known_claims: None,
        derived: Default::default(),
    }
}

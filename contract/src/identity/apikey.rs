//! API keys, stored only as salted hashes.
//!
//! Format of a stored hash (what the operator's `rustronaut apikey hash` writes into the
//! provider's Secret, keyed by client ID):
//!
//! ```text
//!   sha256$<salt: base64, no padding>$<digest: base64, no padding>
//!   digest = SHA-256(salt || key)          salt: at least 16 random bytes
//! ```
//!
//! Why SHA-256 and not argon2/bcrypt: a slow hash protects low-entropy secrets (passwords)
//! whose hashes leak. API keys are generated, high-entropy random strings (at least 128 bits;
//! [`MIN_KEY_LEN`] is enforced when hashing), so brute-forcing a leaked SHA-256 digest is
//! hopeless anyway, while argon2 at a safe cost (tens of milliseconds) would be paid on every
//! request and make the gateway trivially DoS-able. The salt keeps equal keys from having
//! equal hashes and defeats precomputation.
//!
//! Comparison is constant-time (`subtle`) and every stored hash is checked, so the time taken
//! does not reveal how much of a digest matched.

use super::ApiKeyIdentity;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Scheme name at the start of a stored hash.
pub const SCHEME: &str = "sha256";
/// Shortest salt accepted, bytes.
pub const MIN_SALT_LEN: usize = 16;
/// Shortest key [`hash_api_key`] accepts, bytes (about 128 bits of base64url randomness).
pub const MIN_KEY_LEN: usize = 22;
/// Longest key presented that is considered at all, bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a stored hash or a key to hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Not `sha256$<salt>$<digest>`.
    #[error("expected sha256$<salt>$<digest>")]
    Format,
    /// A scheme other than sha256.
    #[error("unsupported hash scheme {0:?}")]
    Scheme(String),
    /// Salt or digest not base64.
    #[error("salt or digest is not base64 (standard alphabet, no padding)")]
    Base64,
    /// Salt too short.
    #[error("salt must be at least {MIN_SALT_LEN} bytes")]
    SaltTooShort,
    /// Digest not 32 bytes.
    #[error("digest must be 32 bytes")]
    DigestLength,
    /// Key too short to be a generated key.
    #[error("API keys must be at least {MIN_KEY_LEN} bytes of randomness")]
    KeyTooShort,
    /// Two entries with one client ID.
    #[error("duplicate client ID {0:?}")]
    DuplicateClient(String),
}

fn digest(salt: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(key);
    h.finalize().into()
}

/// Hashes `key` with `salt` (at least [`MIN_SALT_LEN`] random bytes; the caller supplies
/// them so this stays a pure function) into the stored format.
pub fn hash_api_key(key: &str, salt: &[u8]) -> Result<String, ApiKeyError> {
    if key.len() < MIN_KEY_LEN {
        return Err(ApiKeyError::KeyTooShort);
    }
    if salt.len() < MIN_SALT_LEN {
        return Err(ApiKeyError::SaltTooShort);
    }
    Ok(format!(
        "{SCHEME}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(digest(salt, key.as_bytes()))
    ))
}

/// A parsed stored hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyHash {
    salt: Vec<u8>,
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyHash([redacted])")
    }
}

impl ApiKeyHash {
    /// Parses `sha256$<salt>$<digest>`.
    pub fn parse(s: &str) -> Result<Self, ApiKeyError> {
        let mut parts = s.split('$');
        let (Some(scheme), Some(salt), Some(digest), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ApiKeyError::Format);
        };
        if scheme != SCHEME {
            return Err(ApiKeyError::Scheme(scheme.to_string()));
        }
        let salt = STANDARD_NO_PAD
            .decode(salt)
            .map_err(|_| ApiKeyError::Base64)?;
        let digest = STANDARD_NO_PAD
            .decode(digest)
            .map_err(|_| ApiKeyError::Base64)?;
        if salt.len() < MIN_SALT_LEN {
            return Err(ApiKeyError::SaltTooShort);
        }
        let digest: [u8; 32] = digest.try_into().map_err(|_| ApiKeyError::DigestLength)?;
        Ok(Self { salt, digest })
    }

    /// Whether `key` hashes to this digest (constant-time comparison).
    pub fn matches(&self, key: &str) -> bool {
        digest(&self.salt, key.as_bytes())
            .ct_eq(&self.digest)
            .into()
    }
}

/// The keys of one apiKey provider.
#[derive(Debug, Clone)]
pub struct ApiKeyVerifier {
    idp: String,
    entries: Vec<(String, ApiKeyHash)>,
}

impl ApiKeyVerifier {
    /// A verifier for provider `idp` over `(client ID, stored hash)` pairs.
    pub fn new<'a>(
        idp: &str,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ApiKeyError> {
        let mut out: Vec<(String, ApiKeyHash)> = Vec::new();
        for (client, hash) in entries {
            if out.iter().any(|(c, _)| c == client) {
                return Err(ApiKeyError::DuplicateClient(client.to_string()));
            }
            out.push((client.to_string(), ApiKeyHash::parse(hash)?));
        }
        Ok(Self {
            idp: idp.to_string(),
            entries: out,
        })
    }

    /// A verifier for a snapshot provider.
    pub fn from_provider(
        idp: &str,
        p: &crate::snapshot::ApiKeyProvider,
    ) -> Result<Self, ApiKeyError> {
        Self::new(
            idp,
            p.keys
                .iter()
                .map(|k| (k.client_id.as_str(), k.hash.as_str())),
        )
    }

    /// The client whose key `presented` is, if any. Every stored hash is computed and
    /// compared, whatever matches. `None` for a key that is present but unknown means 401.
    pub fn verify(&self, presented: &str) -> Option<ApiKeyIdentity> {
        if presented.is_empty() || presented.len() > MAX_KEY_LEN {
            return None;
        }
        let mut found: Option<&str> = None;
        for (client, hash) in &self.entries {
            let hit = hash.matches(presented);
            if hit && found.is_none() {
                found = Some(client);
            }
        }
        found.map(|client_id| ApiKeyIdentity {
            idp: self.idp.clone(),
            client_id: client_id.to_string(),
        })
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &[u8] = b"0123456789abcdef";
    const KEY: &str = "rtn_4f9a8c2e7b1d6053a9e8f7c6";

    #[test]
    fn round_trip() {
        let h = hash_api_key(KEY, SALT).unwrap();
        assert!(h.starts_with("sha256$MDEyMzQ1Njc4OWFiY2RlZg$"));
        let parsed = ApiKeyHash::parse(&h).unwrap();
        assert!(parsed.matches(KEY));
        assert!(!parsed.matches("rtn_4f9a8c2e7b1d6053a9e8f7c7"));
        assert!(!parsed.matches(""));
        assert_eq!(format!("{parsed:?}"), "ApiKeyHash([redacted])");
    }

    #[test]
    fn salts_make_hashes_differ() {
        let a = hash_api_key(KEY, SALT).unwrap();
        let b = hash_api_key(KEY, b"fedcba9876543210").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn verifier_finds_the_client() {
        let h1 = hash_api_key(KEY, SALT).unwrap();
        let h2 = hash_api_key("rtn_another_key_0000000000", b"saltsaltsaltsalt").unwrap();
        let v =
            ApiKeyVerifier::new("partners", [("ci", h1.as_str()), ("bot", h2.as_str())]).unwrap();
        assert_eq!(
            v.verify(KEY),
            Some(ApiKeyIdentity {
                idp: "partners".into(),
                client_id: "ci".into()
            })
        );
        assert_eq!(
            v.verify("rtn_another_key_0000000000").unwrap().client_id,
            "bot"
        );
        assert_eq!(v.verify("wrong"), None);
        assert_eq!(v.verify(&"x".repeat(MAX_KEY_LEN + 1)), None);
        assert!(matches!(
            ApiKeyVerifier::new("p", [("ci", h1.as_str()), ("ci", h2.as_str())]),
            Err(ApiKeyError::DuplicateClient(_))
        ));
    }

    #[test]
    fn bad_hashes_are_refused() {
        let good = hash_api_key(KEY, SALT).unwrap();
        let digest = good.rsplit('$').next().unwrap();
        assert_eq!(ApiKeyHash::parse("sha256$abc"), Err(ApiKeyError::Format));
        assert_eq!(
            ApiKeyHash::parse(&format!("md5$MDEyMzQ1Njc4OWFiY2RlZg${digest}")),
            Err(ApiKeyError::Scheme("md5".into()))
        );
        assert_eq!(
            ApiKeyHash::parse(&format!("sha256$c2hvcnQ${digest}")),
            Err(ApiKeyError::SaltTooShort)
        );
        assert_eq!(
            ApiKeyHash::parse("sha256$MDEyMzQ1Njc4OWFiY2RlZg$AAAA"),
            Err(ApiKeyError::DigestLength)
        );
        assert_eq!(
            ApiKeyHash::parse("sha256$!!!$AAAA"),
            Err(ApiKeyError::Base64)
        );
        assert_eq!(
            ApiKeyHash::parse(&format!("{good}$x")),
            Err(ApiKeyError::Format)
        );
        assert_eq!(hash_api_key("short", SALT), Err(ApiKeyError::KeyTooShort));
        assert_eq!(hash_api_key(KEY, b"short"), Err(ApiKeyError::SaltTooShort));
    }
}

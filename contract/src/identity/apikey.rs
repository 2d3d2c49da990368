//! API keys, stored only as salted hashes.
//!
//! Format of a stored hash (what the operator's `rustronaut apikey hash` writes into the
//! provider's Secret, keyed by client ID):
//!
//! ```text
//!   sha256$<salt: base64, no padding>$<digest: base64, no padding>$<lookup: base64, no padding>
//!   digest = SHA-256(salt || key)          salt: at least 16 random bytes
//!   lookup = SHA-256("rustronaut-apikey-lookup-v1" || 0x00 || key)[..8]
//! ```
//!
//! Why SHA-256 and not argon2/bcrypt: a slow hash protects low-entropy secrets (passwords)
//! whose hashes leak. API keys are generated, high-entropy random strings (at least 128 bits;
//! [`MIN_KEY_LEN`] is enforced when hashing), so brute-forcing a leaked SHA-256 digest is
//! hopeless anyway, while argon2 at a safe cost (tens of milliseconds) would be paid on every
//! request and make the gateway trivially DoS-able. The salt keeps equal keys from having
//! equal hashes and defeats precomputation.
//!
//! The lookup tag is an index, not a secret: a presented key's tag (one SHA-256) finds the
//! one stored entry it can be, and only that entry's salted digest is computed and compared,
//! in constant time (`subtle`). So a key costs two hashes whatever the number of stored keys;
//! an unknown key is compared with a fixed dummy entry, so hit and miss cost the same. The
//! tag is unsalted, which lets whoever reads the Secret test a guess against every entry at
//! once; for keys of 128 random bits that changes nothing (and 64 bits say little about a key).
//! Entries written before the tag existed (`sha256$<salt>$<digest>`) still verify, by
//! computing each of them for every presented key, as before; re-hash them to get the index.

use super::ApiKeyIdentity;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use subtle::ConstantTimeEq;

/// Scheme name at the start of a stored hash.
pub const SCHEME: &str = "sha256";
/// Shortest salt accepted, bytes.
pub const MIN_SALT_LEN: usize = 16;
/// Shortest key [`hash_api_key`] accepts, bytes (about 128 bits of base64url randomness).
pub const MIN_KEY_LEN: usize = 22;
/// Longest key presented that is considered at all, bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Domain separation of the lookup tag from the salted digest.
const LOOKUP_CONTEXT: &[u8] = b"rustronaut-apikey-lookup-v1\0";
/// Bytes of the lookup tag.
pub const LOOKUP_LEN: usize = 8;

/// Why a stored hash or a key to hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Not `sha256$<salt>$<digest>[$<lookup>]`.
    #[error("expected sha256$<salt>$<digest>$<lookup> (or sha256$<salt>$<digest>)")]
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
    /// Lookup tag not [`LOOKUP_LEN`] bytes.
    #[error("lookup tag must be {LOOKUP_LEN} bytes")]
    LookupLength,
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

/// The index tag of a key (see the module docs).
pub fn lookup_tag(key: &[u8]) -> [u8; LOOKUP_LEN] {
    let mut h = Sha256::new();
    h.update(LOOKUP_CONTEXT);
    h.update(key);
    let d: [u8; 32] = h.finalize().into();
    let mut tag = [0u8; LOOKUP_LEN];
    tag.copy_from_slice(&d[..LOOKUP_LEN]);
    tag
}

/// Hashes `key` with `salt` (at least [`MIN_SALT_LEN`] random bytes; the caller supplies
/// them so this stays a pure function) into the stored format, lookup tag included.
pub fn hash_api_key(key: &str, salt: &[u8]) -> Result<String, ApiKeyError> {
    if key.len() < MIN_KEY_LEN {
        return Err(ApiKeyError::KeyTooShort);
    }
    if salt.len() < MIN_SALT_LEN {
        return Err(ApiKeyError::SaltTooShort);
    }
    Ok(format!(
        "{SCHEME}${}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(digest(salt, key.as_bytes())),
        STANDARD_NO_PAD.encode(lookup_tag(key.as_bytes()))
    ))
}

/// A parsed stored hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyHash {
    salt: Vec<u8>,
    digest: [u8; 32],
    lookup: Option<[u8; LOOKUP_LEN]>,
}

impl std::fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyHash([redacted])")
    }
}

impl ApiKeyHash {
    /// Parses `sha256$<salt>$<digest>$<lookup>` or the older `sha256$<salt>$<digest>`.
    pub fn parse(s: &str) -> Result<Self, ApiKeyError> {
        let mut parts = s.split('$');
        let (Some(scheme), Some(salt), Some(digest), lookup, None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
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
        let lookup = match lookup {
            None => None,
            Some(l) => Some(
                STANDARD_NO_PAD
                    .decode(l)
                    .map_err(|_| ApiKeyError::Base64)?
                    .try_into()
                    .map_err(|_| ApiKeyError::LookupLength)?,
            ),
        };
        Ok(Self {
            salt,
            digest,
            lookup,
        })
    }

    /// The lookup tag, when the stored hash has one.
    pub fn lookup(&self) -> Option<[u8; LOOKUP_LEN]> {
        self.lookup
    }

    /// Whether `key` hashes to this digest (constant-time comparison).
    pub fn matches(&self, key: &str) -> bool {
        digest(&self.salt, key.as_bytes())
            .ct_eq(&self.digest)
            .into()
    }
}

/// The keys of one apiKey provider, indexed by lookup tag at load.
#[derive(Debug, Clone)]
pub struct ApiKeyVerifier {
    idp: String,
    entries: Vec<(String, ApiKeyHash)>,
    /// Entries with a lookup tag, by tag (several only if two keys share a tag).
    by_lookup: HashMap<[u8; LOOKUP_LEN], Vec<usize>>,
    /// Entries without one (older hashes): computed for every presented key.
    unindexed: Vec<usize>,
}

/// Compared with an unknown key, so that a miss costs what a hit does.
fn dummy() -> &'static ApiKeyHash {
    static DUMMY: std::sync::OnceLock<ApiKeyHash> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| ApiKeyHash {
        salt: vec![0u8; MIN_SALT_LEN],
        digest: [0u8; 32],
        lookup: None,
    })
}

impl ApiKeyVerifier {
    /// A verifier for provider `idp` over `(client ID, stored hash)` pairs.
    pub fn new<'a>(
        idp: &str,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ApiKeyError> {
        let mut out: Vec<(String, ApiKeyHash)> = Vec::new();
        let mut clients = HashSet::new();
        for (client, hash) in entries {
            if !clients.insert(client) {
                return Err(ApiKeyError::DuplicateClient(client.to_string()));
            }
            out.push((client.to_string(), ApiKeyHash::parse(hash)?));
        }
        let mut by_lookup: HashMap<[u8; LOOKUP_LEN], Vec<usize>> = HashMap::new();
        let mut unindexed = Vec::new();
        for (i, (_, h)) in out.iter().enumerate() {
            match h.lookup {
                Some(tag) => by_lookup.entry(tag).or_default().push(i),
                None => unindexed.push(i),
            }
        }
        Ok(Self {
            idp: idp.to_string(),
            entries: out,
            by_lookup,
            unindexed,
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

    /// The client whose key `presented` is, if any. `None` for a key that is present but
    /// unknown means 401.
    pub fn verify(&self, presented: &str) -> Option<ApiKeyIdentity> {
        self.verify_counted(presented).0
    }

    /// [`Self::verify`], with the number of salted digests computed: one for a key (known or
    /// not) when every entry has a lookup tag, plus one per entry without a tag.
    pub fn verify_counted(&self, presented: &str) -> (Option<ApiKeyIdentity>, usize) {
        if presented.is_empty() || presented.len() > MAX_KEY_LEN {
            return (None, 0);
        }
        let tag = lookup_tag(presented.as_bytes());
        let candidates = self.by_lookup.get(&tag).map_or(&[][..], Vec::as_slice);
        let mut found: Option<&str> = None;
        let mut computed = 0;
        if candidates.is_empty() {
            // Same work as a hit; the answer is thrown away.
            let _ = std::hint::black_box(dummy().matches(presented));
            computed += 1;
        }
        // Every candidate and every unindexed entry is computed, whatever matches, so the
        // time does not tell which one (or how much of a digest) matched.
        for &i in candidates.iter().chain(&self.unindexed) {
            let (client, hash) = &self.entries[i];
            let hit = hash.matches(presented);
            computed += 1;
            if hit && found.is_none() {
                found = Some(client);
            }
        }
        let id = found.map(|client_id| ApiKeyIdentity {
            idp: self.idp.clone(),
            client_id: client_id.to_string(),
        });
        (id, computed)
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Clients whose stored hash has no lookup tag (each costs a hash per presented key).
    pub fn unindexed(&self) -> usize {
        self.unindexed.len()
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
    fn a_presented_key_costs_one_verification_whatever_the_number_of_stored_keys() {
        let keys: Vec<(String, String)> = (0..1000)
            .map(|i| {
                let key = format!("rtn_key_number_{i:06}_0123456789");
                let salt = format!("salt-{i:011}");
                (
                    format!("client-{i}"),
                    hash_api_key(&key, salt.as_bytes()).unwrap(),
                )
            })
            .collect();
        let v = ApiKeyVerifier::new(
            "partners",
            keys.iter().map(|(c, h)| (c.as_str(), h.as_str())),
        )
        .unwrap();
        assert_eq!(v.unindexed(), 0);
        // An unknown key: one salted digest (against the dummy), not a thousand.
        assert_eq!(v.verify_counted("rtn_not_a_key_at_all_0000000"), (None, 1));
        // A known key: its own entry only.
        let (id, n) = v.verify_counted("rtn_key_number_000777_0123456789");
        assert_eq!(id.unwrap().client_id, "client-777");
        assert_eq!(n, 1);

        // Entries stored without a tag (older hashes) still verify, each computed per key.
        let legacy = |key: &str, salt: &[u8]| {
            let h = hash_api_key(key, salt).unwrap();
            h.rsplit_once('$').unwrap().0.to_string()
        };
        let old = legacy(KEY, SALT);
        let new = hash_api_key("rtn_another_key_0000000000", b"saltsaltsaltsalt").unwrap();
        let v = ApiKeyVerifier::new("p", [("old", old.as_str()), ("new", new.as_str())]).unwrap();
        assert_eq!(v.unindexed(), 1);
        assert_eq!(v.verify(KEY).unwrap().client_id, "old");
        assert_eq!(
            v.verify("rtn_another_key_0000000000").unwrap().client_id,
            "new"
        );
        assert_eq!(v.verify_counted("rtn_unknown_key_000000000000").1, 2);
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
        let digest = good.split('$').nth(2).unwrap();
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
        assert_eq!(
            ApiKeyHash::parse(&format!("sha256$MDEyMzQ1Njc4OWFiY2RlZg${digest}$AAAA")),
            Err(ApiKeyError::LookupLength)
        );
        assert_eq!(hash_api_key("short", SALT), Err(ApiKeyError::KeyTooShort));
        assert_eq!(hash_api_key(KEY, b"short"), Err(ApiKeyError::SaltTooShort));
    }
}

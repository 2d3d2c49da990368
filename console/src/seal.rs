//! Sealed cookies: AES-256-GCM over a serde value, the cookie name as associated data.
//!
//! The console keeps no server-side state, so the session (who the person is, their CSRF
//! token, when it expires) and the login state (PKCE verifier, state, nonce) live in the
//! browser, encrypted and authenticated with a key only the console holds. Binding the
//! cookie name as associated data means a sealed login cookie cannot be replayed as a
//! session cookie. Several keys may be configured: the first seals, all of them open, so a
//! key can be rotated without signing everybody out.
//!
//! ```text
//! cookie value = base64url( nonce[12] || ciphertext || tag[16] )
//! ```

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a key could not be loaded or a value not sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A configured key is not base64 of exactly 32 bytes.
    #[error("cookie key {index} is not base64 of 32 bytes")]
    BadKey {
        /// Position of the key in the configured list.
        index: usize,
    },
    /// No key was configured.
    #[error("no cookie key configured")]
    NoKey,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The value could not be serialised.
    #[error("failed to serialise the sealed value: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The sealing keys; cheap to share behind an `Arc`.
pub struct Sealer {
    keys: Vec<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Keys as standard base64 of 32 random bytes each; the first one seals.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Self, SealError> {
        if keys.is_empty() {
            return Err(SealError::NoKey);
        }
        let keys = keys
            .iter()
            .enumerate()
            .map(|(index, k)| {
                let raw = STANDARD
                    .decode(k.as_ref().trim())
                    .map_err(|_| SealError::BadKey { index })?;
                if raw.len() != 32 {
                    return Err(SealError::BadKey { index });
                }
                let key =
                    UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| SealError::BadKey { index })?;
                Ok(LessSafeKey::new(key))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// `n` random bytes, base64url without padding (state, nonce, PKCE verifier, CSRF).
    pub fn random_token(&self, n: usize) -> Result<String, SealError> {
        let mut buf = vec![0u8; n];
        self.rng.fill(&mut buf).map_err(|_| SealError::Random)?;
        Ok(URL_SAFE_NO_PAD.encode(buf))
    }

    /// Seals `value` for the cookie called `name`.
    pub fn seal<T: Serialize>(&self, name: &str, value: &T) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = serde_json::to_vec(value)?;
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value sealed for `name` by any configured key; `None` if it was forged,
    /// altered, sealed for another cookie or by an unknown key.
    pub fn open<T: DeserializeOwned>(&self, name: &str, sealed: &str) -> Option<T> {
        let raw = URL_SAFE_NO_PAD.decode(sealed.trim()).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        for key in &self.keys {
            let mut buf = ct.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf) {
                return serde_json::from_slice(plain).ok();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> String {
        STANDARD.encode([fill; 32])
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_name_and_known_keys() {
        let a = Sealer::new(&[key(1)]).unwrap();
        let sealed = a.seal("__Host-s", &("alice", 7)).unwrap();
        assert_eq!(
            a.open::<(String, u32)>("__Host-s", &sealed),
            Some(("alice".into(), 7))
        );
        assert_eq!(a.open::<(String, u32)>("__Host-login", &sealed), None);
        let other = Sealer::new(&[key(2)]).unwrap();
        assert_eq!(other.open::<(String, u32)>("__Host-s", &sealed), None);
        // Rotation: a new first key seals, the old one still opens.
        let rotated = Sealer::new(&[key(2), key(1)]).unwrap();
        assert_eq!(
            rotated.open::<(String, u32)>("__Host-s", &sealed),
            Some(("alice".into(), 7))
        );
    }

    #[test]
    fn a_flipped_bit_or_garbage_does_not_open() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let sealed = s.seal("c", &"bob").unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(s.open::<String>("c", &URL_SAFE_NO_PAD.encode(raw)), None);
        assert_eq!(s.open::<String>("c", "not base64 !"), None);
        assert_eq!(s.open::<String>("c", ""), None);
    }

    #[test]
    fn bad_keys_are_refused_with_their_position() {
        assert!(matches!(
            Sealer::new(&[key(1), STANDARD.encode([0u8; 16])]),
            Err(SealError::BadKey { index: 1 })
        ));
        assert!(matches!(Sealer::new::<String>(&[]), Err(SealError::NoKey)));
        assert_eq!(
            Sealer::new(&[key(1)])
                .unwrap()
                .random_token(32)
                .unwrap()
                .len(),
            43
        );
    }
}

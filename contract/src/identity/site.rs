//! WireGuard site identity: a site is its connector's public key. The tunnel hub knows which
//! peer a stream came through (boringtun authenticated it in the handshake); this maps that
//! key to the site name and tenant the evaluator matches `site` principals against.

use super::SiteIdentity;
use crate::snapshot::TunnelSite;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::collections::HashMap;

/// Why a key or a site list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// Not standard base64 of exactly 32 bytes.
    #[error("WireGuard public key must be standard base64 of 32 bytes, got {0:?}")]
    InvalidKey(String),
    /// Two sites with one key: traffic could not be attributed.
    #[error("sites {first:?} and {second:?} share a public key")]
    DuplicateKey {
        /// One site.
        first: String,
        /// The other.
        second: String,
    },
}

/// Decodes a WireGuard public key (`wg pubkey` output: 44 characters of standard base64).
pub fn decode_public_key(s: &str) -> Result<[u8; 32], SiteError> {
    let bytes = STANDARD
        .decode(s)
        .map_err(|_| SiteError::InvalidKey(s.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| SiteError::InvalidKey(s.to_string()))
}

/// Public key -> site.
#[derive(Debug, Clone, Default)]
pub struct SiteDirectory {
    by_key: HashMap<[u8; 32], SiteIdentity>,
}

impl SiteDirectory {
    /// A directory of the tunnel's sites.
    pub fn new(sites: &[TunnelSite]) -> Result<Self, SiteError> {
        let mut by_key: HashMap<[u8; 32], SiteIdentity> = HashMap::new();
        for s in sites {
            let key = decode_public_key(&s.public_key)?;
            if let Some(prev) = by_key.get(&key) {
                return Err(SiteError::DuplicateKey {
                    first: prev.name.clone(),
                    second: s.name.clone(),
                });
            }
            by_key.insert(
                key,
                SiteIdentity {
                    name: s.name.clone(),
                    tenant: s.tenant.clone(),
                },
            );
        }
        Ok(Self { by_key })
    }

    /// The site whose connector has `public_key`.
    pub fn lookup(&self, public_key: &[u8; 32]) -> Option<&SiteIdentity> {
        self.by_key.get(public_key)
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, tenant: &str, key: &str) -> TunnelSite {
        TunnelSite {
            name: name.into(),
            tenant: tenant.into(),
            public_key: key.into(),
            tunnel_address: None,
            advertised_cidrs: vec![],
            allowed_targets: vec![],
        }
    }

    const K1: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const K2: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn lookup_by_key() {
        let d = SiteDirectory::new(&[site("dc1", "acme", K1), site("dc2", "globex", K2)]).unwrap();
        let k1 = decode_public_key(K1).unwrap();
        assert_eq!(
            d.lookup(&k1),
            Some(&SiteIdentity {
                name: "dc1".into(),
                tenant: "acme".into()
            })
        );
        assert_eq!(d.lookup(&[0u8; 32]), None);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn refuses_bad_and_duplicate_keys() {
        assert!(decode_public_key("short").is_err());
        assert!(decode_public_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg").is_err());
        assert!(decode_public_key("AAAA").is_err());
        assert!(matches!(
            SiteDirectory::new(&[site("a", "t", K1), site("b", "t", K1)]),
            Err(SiteError::DuplicateKey { .. })
        ));
    }
}

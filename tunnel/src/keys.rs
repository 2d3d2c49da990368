//! WireGuard keys: parsing, generation and private key files.
//!
//! Private keys live only in files readable by their owner (mode `0600` or stricter). Loading a
//! key file that the group or others may read fails with [`KeyError::InsecurePermissions`]
//! rather than warning, because a leaked site key is a silent, permanent compromise of that
//! site's identity. [`PrivateKey`] never prints its bytes: its `Debug` is redacted and it has no
//! `Display`; the bytes are zeroed on drop (x25519-dalek's `zeroize`).
//!
//! The text form of both keys is standard base64 of 32 bytes, as `wg genkey` / `wg pubkey` use.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

/// Errors of key parsing and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not base64 of exactly 32 bytes.
    #[error("invalid WireGuard key: expected base64 of 32 bytes (44 characters ending in '=')")]
    InvalidEncoding,
    /// The key file could not be read.
    #[error("failed to read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file could not be written.
    #[error("failed to write key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file may be read by the group or by others.
    #[error(
        "refusing to use private key file {path}: its mode is {mode:04o}, which lets the group or \
         others read it; run `chmod 600 {path}` (or set defaultMode: 0600 on the Secret volume)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not contain a key.
    #[error("key file {path} does not contain a WireGuard private key (base64 of 32 bytes)")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A WireGuard (Curve25519) public key. Its `Display` is the base64 text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The boringtun form.
    pub fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }

    /// Lowercase hex, as the WireGuard UAPI wants it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. Never printed: `Debug` is redacted; zeroed on drop.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

impl PrivateKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        let key = Self(x25519::StaticSecret::from(bytes));
        bytes.fill(0);
        Ok(key)
    }

    /// Parses the base64 text form.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let mut bytes = decode_key(s)?;
        let key = Self(x25519::StaticSecret::from(bytes));
        bytes.fill(0);
        Ok(key)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// The boringtun form (a copy).
    pub fn to_x25519(&self) -> x25519::StaticSecret {
        self.0.clone()
    }

    /// The base64 text form. Only for writing key files and the WireGuard UAPI in tests.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// Lowercase hex, as the WireGuard UAPI wants it. Only for configuring peers in tests.
    pub fn expose_hex(&self) -> String {
        hex(self.0.as_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

fn decode_key(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    if s.len() != 44 {
        return Err(KeyError::InvalidEncoding);
    }
    let bytes = STANDARD.decode(s).map_err(|_| KeyError::InvalidEncoding)?;
    bytes.try_into().map_err(|_| KeyError::InvalidEncoding)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks that permission bits keep a private key to its owner.
pub fn mode_is_private(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// Checks that permission bits keep a private key to its owner and its group: the group
/// may read (not write or execute), others nothing. This is what a Kubernetes Secret volume
/// with `fsGroup` produces (`root:<fsGroup>`, 0440), the only form a non-root container can
/// read at all.
pub fn mode_is_private_to_group(mode: u32) -> bool {
    mode & 0o037 == 0
}

/// Reads a private key file, refusing one that the group or others may read.
///
/// Symbolic links are followed (Kubernetes mounts Secrets through them); the mode checked is
/// that of the file they point to.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    load_checked(path, mode_is_private)
}

/// Reads a private key file that its group may read but not write, and others nothing
/// (see [`mode_is_private_to_group`]); for hubs whose key comes from a Kubernetes Secret.
pub fn load_private_key_group_readable(path: &Path) -> Result<PrivateKey, KeyError> {
    load_checked(path, mode_is_private_to_group)
}

fn load_checked(path: &Path, private: fn(u32) -> bool) -> Result<PrivateKey, KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if !private(mode) {
        return Err(KeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    PrivateKey::from_base64(&text).map_err(|_| KeyError::BadKeyFile {
        path: path.to_owned(),
    })
}

/// Writes a private key to a new file with mode 0600. Never overwrites an existing file, so a
/// slip of the keyboard cannot destroy a site's identity.
pub fn write_private_key(path: &Path, key: &PrivateKey) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // The umask cannot widen 0600, but a pre-set default ACL could: make the mode explicit.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    let mut text = key.expose_base64();
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_and_rejects_bad_text() {
        let key = PrivateKey::generate().unwrap();
        let public = key.public_key();
        let text = public.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PublicKey>().unwrap(), public);
        for bad in [
            "",
            "abc",
            &text[..43],
            &format!("{text}A"),
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn known_key_pair_matches_wireguard_tools() {
        // From the wg(8) man page style: a fixed private key and its public key as `wg pubkey`
        // computes it (x25519 base point multiplication, RFC 7748 test vector 1 of 6.1).
        let private = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
        let public = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let key = PrivateKey::from_base64(private).unwrap();
        assert_eq!(key.public_key().to_string(), public);
    }

    #[test]
    fn debug_redacts_private_key() {
        let key = PrivateKey::generate().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(&key.expose_base64()));
        assert!(!shown.contains(&key.expose_hex()));
    }

    #[test]
    fn key_file_is_written_0600_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = PrivateKey::generate().unwrap();
        write_private_key(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_private_key(&path).unwrap().public_key(),
            key.public_key()
        );
        // Never overwrites.
        assert!(matches!(
            write_private_key(&path, &key),
            Err(KeyError::Write { .. })
        ));
    }

    #[test]
    fn group_or_world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = PrivateKey::generate().unwrap();
        write_private_key(&path, &key).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load_private_key(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::InsecurePermissions { .. }),
                "{mode:o}"
            );
            assert!(err.to_string().contains("chmod 600"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(load_private_key(&path).is_ok());
    }

    #[test]
    fn group_readable_key_file_is_accepted_only_where_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = PrivateKey::generate().unwrap();
        write_private_key(&path, &key).unwrap();
        for mode in [0o440, 0o640, 0o400, 0o600] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let loaded = load_private_key_group_readable(&path).unwrap();
            assert_eq!(loaded.public_key(), key.public_key(), "{mode:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert!(load_private_key(&path).is_err(), "the default stays strict");
        for mode in [0o460, 0o444, 0o404, 0o450, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load_private_key_group_readable(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::InsecurePermissions { .. }),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn garbage_key_file_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "not-a-key-but-maybe-a-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_private_key(&path).unwrap_err().to_string();
        assert!(!err.contains("not-a-key"), "{err}");
    }
}

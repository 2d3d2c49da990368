//! Gateway authentication at the hub's stream endpoint: bearer tokens from a file.
//!
//! Why a bearer token, not mTLS: the stream endpoint is an in-cluster port that only gateway
//! pods of the same Gateway use, and the operator already manages one Secret for both sides.
//! A random token in that Secret, mounted into the hub and the gateways, needs no CA, no
//! certificate rotation and no TLS handshake per stream. What it does not give is
//! confidentiality on the pod network: restrict the port with a NetworkPolicy to the gateway
//! pods (the operator does) and, where the pod network is untrusted, use a CNI or mesh that
//! encrypts it. mTLS on this port is the natural next step when that is not enough.
//!
//! The file holds one token per line; every listed token is accepted, so a rotation is: add
//! the new token, roll the gateways, remove the old one. The hub re-reads the file when it
//! changes. Comparison hashes both sides with SHA-256 and compares the digests in constant
//! time, so neither the content nor the length of a valid token leaks through timing, and every
//! configured token is compared (no early exit). Tokens shorter than 16 bytes are refused when
//! loading, so a placeholder like "changeme" never guards the endpoint.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;

/// Errors of loading tokens.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("failed to read token file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file has no token.
    #[error("token file {0} holds no token (one per line)")]
    Empty(PathBuf),
    /// A token is too short.
    #[error("token file {path}: line {line} holds a token shorter than {MIN_TOKEN_LEN} bytes")]
    TooShort {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
}

/// The accepted tokens, as SHA-256 digests.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Tokens {
    /// Parses the file content: one token per line, surrounding whitespace ignored, empty
    /// lines and lines starting with '#' skipped.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let mut digests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if t.len() < MIN_TOKEN_LEN {
                return Err(AuthError::TooShort {
                    path: path.to_owned(),
                    line: i + 1,
                });
            }
            digests.push(digest(t.as_bytes()));
        }
        if digests.is_empty() {
            return Err(AuthError::Empty(path.to_owned()));
        }
        Ok(Self { digests })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Whether `presented` is one of the tokens. Constant time in the token's content and
    /// length; time grows only with the number of configured tokens.
    pub fn verify(&self, presented: &str) -> bool {
        let d = digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0u8);
        for known in &self.digests {
            ok |= known.ct_eq(&d);
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_listed_tokens_only() {
        let t = Tokens::parse(
            "# rotation in progress\n  old-token-0123456789  \n\nnew-token-abcdefghij\n",
            Path::new("t"),
        )
        .unwrap();
        assert!(t.verify("old-token-0123456789"));
        assert!(t.verify("new-token-abcdefghij"));
        assert!(!t.verify("new-token-abcdefghiJ"));
        assert!(!t.verify(""));
        assert!(!t.verify("old-token-0123456789 "));
        assert!(!format!("{t:?}").contains("token-"));
    }

    #[test]
    fn refuses_empty_and_short() {
        assert!(matches!(
            Tokens::parse("\n# only a comment\n", Path::new("t")),
            Err(AuthError::Empty(_))
        ));
        assert!(matches!(
            Tokens::parse("long-enough-token-1\nchangeme\n", Path::new("t")),
            Err(AuthError::TooShort { line: 2, .. })
        ));
    }
}

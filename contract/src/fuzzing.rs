//! Fuzz entry points for every parser of untrusted input, shared by the cargo-fuzz targets in
//! `contract/fuzz/` (libFuzzer, nightly) and by a plain test that feeds them deterministic
//! pseudo-random inputs on stable, so CI exercises them on every run.
//!
//! Each function must never panic, whatever the bytes; beyond that it asserts the parser's
//! invariants (a panic is how the fuzzer reports a finding).

use crate::identity::client_ip::{ClientIpError, parse_proxy_header};
use crate::identity::jwt::{Jwks, JwtError, JwtVerifier, JwtVerifierConfig, identity_from_claims};
use crate::path::normalize;
use std::sync::OnceLock;

/// Errors of the fuzzing helpers: none of the entry points fail; this exists for building
/// the fixed verifier the JWT target uses.
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    /// The embedded JWKS did not load (a bug in this module).
    #[error("fuzzing JWKS did not load: {0}")]
    Jwks(#[from] JwtError),
}

/// A JWKS with one Ed25519 and one P-256 public key whose private halves were discarded when
/// they were generated: no input can verify, so "never accepts" is a true invariant. (Tokens
/// signed with the test keys in `contract/tests/fixtures` under the same kids reach the
/// signature check and fail there.)
const FUZZ_JWKS: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"N2kx7Hgo35NO5ivZPGfLXn3q2bpgWg1FAEh1Ww7bWFg"},
 {"kty":"EC","crv":"P-256","kid":"ec","alg":"ES256","x":"3JdJVYRT1Qd4wospfeMEyKZm_dSFyu45kF4wH3bjjwc","y":"PqK5e4V4n1N7IOGLi2_ykQK21lgyPxiZHKwZGFmPtv8"}
]}"#;

/// The issuer, audience and time the JWT target verifies with (for building seed inputs).
pub const FUZZ_JWT_ISSUER: &str = "https://issuer.example";
/// Audience of the JWT target.
pub const FUZZ_JWT_AUDIENCE: &str = "rtn";
/// Evaluation time of the JWT target.
pub const FUZZ_JWT_NOW: u64 = 1_700_000_000;

fn fuzz_verifier() -> Result<JwtVerifier, FuzzError> {
    let jwks = Jwks::from_json(FUZZ_JWKS.as_bytes())?;
    Ok(JwtVerifier::new(
        JwtVerifierConfig {
            idp: "fuzz".into(),
            issuer: FUZZ_JWT_ISSUER.into(),
            audiences: vec![FUZZ_JWT_AUDIENCE.into()],
            groups_claim: "groups".into(),
            email_claim: "email".into(),
            clock_skew: 60,
        },
        jwks,
    )?)
}

/// JWT verification on arbitrary bytes: never panics and never accepts (no private key
/// exists). Also feeds the bytes to the JWKS parser and, when they are a JSON object, to the
/// claims-to-identity mapping (reachable otherwise only past a valid signature).
pub fn jwt(data: &[u8]) {
    static VERIFIER: OnceLock<Option<JwtVerifier>> = OnceLock::new();
    let Some(verifier) = VERIFIER.get_or_init(|| fuzz_verifier().ok()) else {
        panic!("the fuzzing JWKS must load");
    };
    let token = String::from_utf8_lossy(data);
    let result = verifier.verify(&token, FUZZ_JWT_NOW);
    assert!(result.is_err(), "a token verified without the private key");
    let _ = Jwks::from_json(data);
    if let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(data) {
        let id = identity_from_claims("fuzz", "sub".into(), &claims, "groups", "email");
        assert_eq!(id.idp, "fuzz");
        assert!(
            id.scopes.windows(2).all(|w| w[0] < w[1]),
            "scopes sorted and unique"
        );
    }
}

/// PROXY protocol parsing on arbitrary bytes: never panics; a parsed header fits in the
/// buffer, parses identically on its own, and every prefix of it is `Incomplete` or the
/// same result class.
pub fn proxy_protocol(data: &[u8]) {
    match parse_proxy_header(data) {
        Ok(h) => {
            assert!(h.length <= data.len(), "header longer than the buffer");
            assert!(h.length >= 16 || h.version == 1);
            let again = parse_proxy_header(&data[..h.length]).expect("header alone must parse");
            assert_eq!(again, h);
            if h.length > 0 {
                assert!(
                    matches!(
                        parse_proxy_header(&data[..h.length - 1]),
                        Err(ClientIpError::Incomplete | ClientIpError::Malformed(_))
                    ),
                    "a truncated header must not parse"
                );
            }
        }
        Err(ClientIpError::Incomplete) => {
            assert!(
                data.len() < 16 + 65535,
                "incomplete beyond the longest header"
            );
        }
        Err(_) => {}
    }
}

/// Path normalisation on arbitrary bytes: never panics; the result starts with `/`, has no
/// empty, `.` or `..` segments, its forwarded form is ASCII, and normalising the forwarded
/// form changes nothing.
pub fn path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = normalize(s) else {
        return;
    };
    let d = t.path.as_str();
    assert!(d.starts_with('/'));
    let inner = d.strip_suffix('/').unwrap_or(d);
    if !inner.is_empty() {
        for seg in inner[1..].split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "bad segment in {d:?}"
            );
        }
    }
    assert!(t.path.forward().is_ascii());
    let again = normalize(t.path.forward()).expect("normalised path must normalise");
    assert_eq!(
        again.path, t.path,
        "normalisation is not idempotent for {s:?}"
    );
    if let Some(q) = &t.query {
        assert!(s.ends_with(q.as_str()));
    }
}

/// Deterministic pseudo-random inputs for the stable-toolchain fuzz smoke tests of this crate
/// and of the gateway (`tests/it/fuzz_smoke.rs`, `gateway/tests/fuzz_smoke.rs`): random bytes
/// and mutations of seeds. xorshift64*: reproducible from its seed, no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Up to `max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
    /// Flips, inserts, deletes, duplicates or truncates a few bytes of `seed`, biased
    /// towards the alphabet the seeds use.
    pub fn mutate(&mut self, seed: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=self.below(4) {
            let pick = |r: &mut Rng| {
                if r.below(4) == 0 {
                    r.next_u64() as u8
                } else {
                    alphabet[r.below(alphabet.len())]
                }
            };
            match self.below(5) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = pick(self);
                }
                1 => {
                    let i = self.below(v.len() + 1);
                    let b = pick(self);
                    v.insert(i, b);
                }
                2 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v.remove(i);
                }
                3 if !v.is_empty() => {
                    let i = self.below(v.len());
                    let j = i + self.below(v.len() - i);
                    let chunk = v[i..=j.min(v.len() - 1)].to_vec();
                    v.splice(i..i, chunk);
                }
                _ => v.truncate(self.below(v.len() + 1)),
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_jwks_loads() {
        assert!(super::fuzz_verifier().is_ok());
    }
}

//! JWT vectors, generated at test time from the committed test keys: valid tokens per
//! algorithm, and every refusal (expired, not yet valid, wrong aud/iss, alg none, HS256
//! signed with the RSA public key, unknown kid, tampering, confusion across key types).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rustronaut_contract::identity::cache::TokenCache;
use rustronaut_contract::identity::jwt::{
    Jwks, JwtError, JwtVerifier, JwtVerifierConfig, MAX_TOKEN_LEN,
};
use serde_json::{Value, json};
use std::sync::Arc;

const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://token.example";

const RSA_PEM: &[u8] = include_bytes!("../fixtures/rsa-2048.pem");
const RSA_PUB_PEM: &[u8] = include_bytes!("../fixtures/rsa-2048.pub.pem");
const EC_PEM: &[u8] = include_bytes!("../fixtures/ec-p256.pem");
const ED_PEM: &[u8] = include_bytes!("../fixtures/ed25519.pem");

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM).unwrap()
}
fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PEM).unwrap()
}
fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_PEM).unwrap()
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut j = Jwk::from_encoding_key(key, alg).unwrap();
    j.common.key_id = Some(kid.into());
    serde_json::to_value(j).unwrap()
}

fn jwks_json() -> Value {
    json!({"keys": [
        jwk(&rsa(), Algorithm::RS256, "rsa"),
        jwk(&ec(), Algorithm::ES256, "ec"),
        jwk(&ed(), Algorithm::EdDSA, "ed"),
    ]})
}

fn config() -> JwtVerifierConfig {
    JwtVerifierConfig {
        idp: "ci".into(),
        issuer: ISS.into(),
        audiences: vec!["rtn".into(), "other".into()],
        groups_claim: "groups".into(),
        email_claim: "email".into(),
        clock_skew: 60,
    }
}

fn verifier() -> JwtVerifier {
    JwtVerifier::new(config(), Jwks::from_value(&jwks_json()).unwrap()).unwrap()
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": "rtn", "sub": "svc-deployer",
        "exp": NOW + 3600, "iat": NOW - 10, "nbf": NOW - 10,
        "email": "deployer@acme.example", "email_verified": true,
        "groups": ["deployers", "ops"],
        "scope": "read write",
        "amr": ["mfa"],
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(Into::into);
    let key = match alg {
        Algorithm::RS256 | Algorithm::PS256 => rsa(),
        Algorithm::ES256 => ec(),
        Algorithm::EdDSA => ed(),
        _ => unreachable!(),
    };
    encode(&h, claims, &key).unwrap()
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

fn without(mut c: Value, key: &str) -> Value {
    c.as_object_mut().unwrap().remove(key);
    c
}

#[test]
fn valid_tokens_per_algorithm() {
    let v = verifier();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let t = v
            .verify(&sign(alg, Some(kid), &claims()), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(t.expires_at, NOW + 3600);
        let id = t.identity;
        assert_eq!(id.idp, "ci");
        assert_eq!(id.subject, "svc-deployer");
        assert_eq!(id.email.as_deref(), Some("deployer@acme.example"));
        assert_eq!(id.groups, vec!["deployers", "ops"]);
        assert_eq!(id.scopes, vec!["read", "write"]);
        assert_eq!(id.claims["amr"], vec!["mfa"]);
        assert_eq!(id.claims["sub"], vec!["svc-deployer"]);
    }
}

#[test]
fn token_without_kid_uses_the_key_that_allows_its_algorithm() {
    let v = verifier();
    assert!(
        v.verify(&sign(Algorithm::ES256, None, &claims()), NOW)
            .is_ok()
    );
    assert!(
        v.verify(&sign(Algorithm::EdDSA, None, &claims()), NOW)
            .is_ok()
    );
}

#[test]
fn rsa_key_without_alg_accepts_the_rsa_family_only() {
    let mut j = jwk(&rsa(), Algorithm::RS256, "rsa");
    j.as_object_mut().unwrap().remove("alg");
    let v = JwtVerifier::new(config(), Jwks::from_value(&json!({"keys": [j]})).unwrap()).unwrap();
    assert!(
        v.verify(&sign(Algorithm::RS256, Some("rsa"), &claims()), NOW)
            .is_ok()
    );
    assert!(
        v.verify(&sign(Algorithm::PS256, Some("rsa"), &claims()), NOW)
            .is_ok()
    );
    assert!(matches!(
        v.verify(&sign(Algorithm::ES256, Some("rsa"), &claims()), NOW),
        Err(JwtError::AlgorithmMismatch { .. })
    ));
}

#[test]
fn time_claims_with_bounded_skew() {
    let v = verifier();
    let at = |c: Value| v.verify(&sign(Algorithm::EdDSA, Some("ed"), &c), NOW);
    assert!(matches!(
        at(with(claims(), "exp", json!(NOW - 61))),
        Err(JwtError::Expired { .. })
    ));
    assert!(
        matches!(
            at(with(claims(), "exp", json!(NOW - 60))),
            Err(JwtError::Expired { .. })
        ),
        "exp + skew is exclusive"
    );
    assert!(
        at(with(claims(), "exp", json!(NOW - 30))).is_ok(),
        "within the clock skew"
    );
    assert!(matches!(
        at(with(claims(), "nbf", json!(NOW + 120))),
        Err(JwtError::NotYetValid { .. })
    ));
    assert!(
        at(with(claims(), "nbf", json!(NOW + 30))).is_ok(),
        "within the clock skew"
    );
    assert!(matches!(
        at(with(claims(), "iat", json!(NOW + 3000))),
        Err(JwtError::NotYetValid { .. })
    ));
    assert!(matches!(
        at(without(claims(), "exp")),
        Err(JwtError::MissingClaim("exp"))
    ));
    assert!(matches!(
        at(with(claims(), "exp", json!("tomorrow"))),
        Err(JwtError::InvalidClaim("exp"))
    ));
    assert!(matches!(
        at(with(claims(), "exp", json!(-5))),
        Err(JwtError::InvalidClaim("exp"))
    ));
    assert!(
        at(with(claims(), "exp", json!((NOW + 100) as f64 + 0.5))).is_ok(),
        "fractional NumericDate"
    );
    // The time is an input: the same token is valid at one time and expired at another.
    let t = sign(Algorithm::EdDSA, Some("ed"), &claims());
    assert!(v.verify(&t, NOW).is_ok());
    assert!(matches!(
        v.verify(&t, NOW + 3600 + 61),
        Err(JwtError::Expired { .. })
    ));
}

#[test]
fn issuer_and_audience() {
    let v = verifier();
    let at = |c: Value| v.verify(&sign(Algorithm::ES256, Some("ec"), &c), NOW);
    assert_eq!(
        at(with(claims(), "aud", json!("someone-else"))).unwrap_err(),
        JwtError::WrongAudience
    );
    assert_eq!(
        at(with(claims(), "aud", json!(["x", "y"]))).unwrap_err(),
        JwtError::WrongAudience
    );
    assert!(
        at(with(claims(), "aud", json!(["x", "other"]))).is_ok(),
        "any accepted audience"
    );
    assert_eq!(
        at(without(claims(), "aud")).unwrap_err(),
        JwtError::MissingClaim("aud")
    );
    assert_eq!(
        at(with(claims(), "iss", json!("https://evil.example"))).unwrap_err(),
        JwtError::WrongIssuer
    );
    assert_eq!(
        at(without(claims(), "iss")).unwrap_err(),
        JwtError::MissingClaim("iss")
    );
    assert_eq!(
        at(without(claims(), "sub")).unwrap_err(),
        JwtError::MissingClaim("sub")
    );
    assert_eq!(
        at(with(claims(), "sub", json!(""))).unwrap_err(),
        JwtError::MissingClaim("sub")
    );
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[test]
fn alg_none_is_refused() {
    let v = verifier();
    for alg in ["none", "None", "NONE"] {
        let t = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "kid": "ed"})),
            b64(&claims())
        );
        assert_eq!(v.verify(&t, NOW).unwrap_err(), JwtError::AlgNone);
        let t = format!("{}.{}.c2ln", b64(&json!({"alg": alg})), b64(&claims()));
        assert_eq!(v.verify(&t, NOW).unwrap_err(), JwtError::AlgNone);
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic algorithm-confusion attack: the verifier holds an RSA public key; the
    // attacker HMACs the token with that (public) key's bytes and says alg HS256.
    let v = verifier();
    for secret in [
        RSA_PUB_PEM.to_vec(),
        serde_json::to_vec(&jwks_json()).unwrap(),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa".into());
        let t = encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(
            v.verify(&t, NOW).unwrap_err(),
            JwtError::SymmetricAlgorithm("HS256".into())
        );
    }
    let t = format!("{}.{}.c2ln", b64(&json!({"alg": "HS512"})), b64(&claims()));
    assert!(matches!(
        v.verify(&t, NOW),
        Err(JwtError::SymmetricAlgorithm(_))
    ));
}

#[test]
fn algorithm_must_fit_the_key() {
    let v = verifier();
    // An ES256 token pointing at the Ed25519 key, an EdDSA token pointing at the EC key.
    assert!(matches!(
        v.verify(&sign(Algorithm::ES256, Some("ed"), &claims()), NOW),
        Err(JwtError::AlgorithmMismatch { .. })
    ));
    assert!(matches!(
        v.verify(&sign(Algorithm::EdDSA, Some("ec"), &claims()), NOW),
        Err(JwtError::AlgorithmMismatch { .. })
    ));
    assert!(matches!(
        v.verify(&sign(Algorithm::RS256, Some("ec"), &claims()), NOW),
        Err(JwtError::AlgorithmMismatch { .. })
    ));
    let t = format!("{}.{}.c2ln", b64(&json!({"alg": "RS1"})), b64(&claims()));
    assert!(matches!(
        v.verify(&t, NOW),
        Err(JwtError::UnsupportedAlgorithm(_))
    ));
}

#[test]
fn unknown_kid() {
    let v = verifier();
    assert_eq!(
        v.verify(
            &sign(Algorithm::EdDSA, Some("rotated-away"), &claims()),
            NOW
        )
        .unwrap_err(),
        JwtError::UnknownKid("rotated-away".into())
    );
}

#[test]
fn tampering_is_detected() {
    let v = verifier();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let t = sign(alg, Some(kid), &claims());
        let parts: Vec<&str> = t.split('.').collect();
        // Payload swapped for one granting more.
        let forged = b64(&with(claims(), "groups", json!(["admins"])));
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            v.verify(&tampered, NOW).unwrap_err(),
            JwtError::BadSignature,
            "{alg:?} payload"
        );
        // One signature character changed.
        let mut sig = parts[2].as_bytes().to_vec();
        let i = sig.len() / 2;
        sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(sig).unwrap()
        );
        assert_eq!(
            v.verify(&tampered, NOW).unwrap_err(),
            JwtError::BadSignature,
            "{alg:?} signature"
        );
        // Signature removed.
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(
            v.verify(&stripped, NOW).unwrap_err(),
            JwtError::BadSignature,
            "{alg:?} empty"
        );
        // Header changed (kid pointing elsewhere is covered above; here: extra field).
        let header2 = b64(&json!({"alg": format!("{alg:?}"), "kid": kid, "x": 1}));
        let tampered = format!("{header2}.{}.{}", parts[1], parts[2]);
        assert_eq!(
            v.verify(&tampered, NOW).unwrap_err(),
            JwtError::BadSignature,
            "{alg:?} header"
        );
    }
}

#[test]
fn malformed_tokens() {
    let v = verifier();
    for t in ["", "abc", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
        assert!(
            matches!(v.verify(t, NOW), Err(JwtError::Malformed(_))),
            "{t:?}"
        );
    }
    let big = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(v.verify(&big, NOW).unwrap_err(), JwtError::TooLarge);
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("ed".into());
    h.crit = Some(vec!["exp".into()]);
    let t = encode(&h, &claims(), &ed()).unwrap();
    assert_eq!(v.verify(&t, NOW).unwrap_err(), JwtError::CriticalHeader);
    // Multi-byte characters where "HS" would be: no slicing panic.
    let t = format!("{}.{}.c2ln", b64(&json!({"alg": "Hé256"})), b64(&claims()));
    assert!(matches!(
        v.verify(&t, NOW),
        Err(JwtError::UnsupportedAlgorithm(_))
    ));
    let t = format!("{}.{}.c2ln", b64(&json!({"alg": "é"})), b64(&claims()));
    assert!(matches!(
        v.verify(&t, NOW),
        Err(JwtError::UnsupportedAlgorithm(_))
    ));
    let t = format!("{}.{}.c2ln", b64(&json!({"alg": 5})), b64(&claims()));
    assert!(matches!(v.verify(&t, NOW), Err(JwtError::Malformed(_))));
    let t = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "EdDSA", "kid": 7})),
        b64(&claims())
    );
    assert!(matches!(v.verify(&t, NOW), Err(JwtError::Malformed(_))));
}

#[test]
fn claims_extraction() {
    let v = verifier();
    let id = |c: Value| {
        v.verify(&sign(Algorithm::EdDSA, Some("ed"), &c), NOW)
            .unwrap()
            .identity
    };
    let unverified = id(with(claims(), "email_verified", json!(false)));
    assert_eq!(
        unverified.email, None,
        "an unverified email is not an identity fact"
    );
    // Issue 14, item 15: nor is one the provider does not vouch for at all, though the raw
    // claim stays available to rules on claims.
    let unmarked = id(without(claims(), "email_verified"));
    assert_eq!(unmarked.email, None, "no email_verified: not verified");
    assert_eq!(unmarked.claims["email"], ["deployer@acme.example"]);
    assert_eq!(
        id(with(claims(), "email_verified", json!("true")))
            .email
            .as_deref(),
        Some("deployer@acme.example")
    );
    assert_eq!(
        id(with(claims(), "email_verified", json!("yes"))).email,
        None
    );
    assert_eq!(
        id(with(claims(), "email_verified", json!(true)))
            .email
            .as_deref(),
        Some("deployer@acme.example")
    );
    let scp = id(with(
        without(claims(), "scope"),
        "scp",
        json!(["b", "a", "a"]),
    ));
    assert_eq!(scp.scopes, vec!["a", "b"]);
    let single_group = id(with(claims(), "groups", json!("ops")));
    assert_eq!(single_group.groups, vec!["ops"]);
    let mixed = id(with(claims(), "groups", json!(["ops", 3, {"x": 1}])));
    assert_eq!(mixed.groups, vec!["ops"]);
    let custom = JwtVerifier::new(
        JwtVerifierConfig {
            groups_claim: "roles".into(),
            email_claim: "upn".into(),
            ..config()
        },
        Jwks::from_value(&jwks_json()).unwrap(),
    )
    .unwrap();
    let c = with(
        with(claims(), "roles", json!(["admin"])),
        "upn",
        json!("d@acme.example"),
    );
    let got = custom
        .verify(&sign(Algorithm::EdDSA, Some("ed"), &c), NOW)
        .unwrap()
        .identity;
    assert_eq!(got.groups, vec!["admin"]);
    assert_eq!(got.email.as_deref(), Some("d@acme.example"));
    // A mapped claim is the tenant's choice to trust it; `false` still wins.
    let c = without(c, "email_verified");
    let got = custom
        .verify(&sign(Algorithm::EdDSA, Some("ed"), &c), NOW)
        .unwrap()
        .identity;
    assert_eq!(got.email.as_deref(), Some("d@acme.example"));
    let c = with(c, "email_verified", json!(false));
    let got = custom
        .verify(&sign(Algorithm::EdDSA, Some("ed"), &c), NOW)
        .unwrap()
        .identity;
    assert_eq!(got.email, None);
    assert_eq!(got.claims["exp"], vec![(NOW + 3600).to_string()]);
}

#[test]
fn jwks_parsing_skips_unusable_keys() {
    let ed_jwk = jwk(&ed(), Algorithm::EdDSA, "ed");
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "RSA", "kid": "short", "n": URL_SAFE_NO_PAD.encode([0xc3u8; 128]), "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "stub", "x": URL_SAFE_NO_PAD.encode([1u8; 31])},
        {"kty": "EC", "crv": "P-256", "kid": "mixed", "alg": "RS256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([1u8; 32])},
        {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
        ed_jwk,
    ]});
    let jwks = Jwks::from_value(&doc).unwrap();
    assert_eq!(jwks.len(), 1);
    let skipped = jwks.skipped().join("\n");
    for kid in ["hmac", "short", "stub", "mixed", "k1", "enc"] {
        assert!(
            skipped.contains(&format!("key {kid:?}")),
            "{kid} not skipped: {skipped}"
        );
    }
    assert!(skipped.contains("symmetric"));
    assert!(skipped.contains("2048"));
    let only_bad = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
    assert!(matches!(
        Jwks::from_value(&only_bad),
        Err(JwtError::NoUsableKeys(_))
    ));
    assert!(matches!(
        Jwks::from_json(b"[]"),
        Err(JwtError::InvalidJwks(_))
    ));
    assert!(matches!(
        Jwks::from_json(b"{"),
        Err(JwtError::InvalidJwks(_))
    ));
}

#[test]
fn verifier_settings_are_checked() {
    let jwks = || Jwks::from_value(&jwks_json()).unwrap();
    assert!(
        JwtVerifier::new(
            JwtVerifierConfig {
                issuer: String::new(),
                ..config()
            },
            jwks()
        )
        .is_err()
    );
    assert!(
        JwtVerifier::new(
            JwtVerifierConfig {
                audiences: vec![],
                ..config()
            },
            jwks()
        )
        .is_err()
    );
    assert!(
        JwtVerifier::new(
            JwtVerifierConfig {
                clock_skew: 301,
                ..config()
            },
            jwks()
        )
        .is_err()
    );
}

/// The cache key is made of the signature only, and of its head only in the digest: a
/// token made of a cached token's signature and other claims, or of its claims and the
/// head of its signature with another tail, is verified (and refused), not served the
/// cached identity, and the real token's entry stays.
#[test]
fn a_cached_signature_with_other_claims_is_not_a_hit() {
    let v = verifier();
    let cache = TokenCache::new(100).unwrap();
    let t = sign(Algorithm::RS256, Some("rsa"), &claims());
    let real = v.verify_cached(&cache, &t, NOW).unwrap();
    let (signed, signature) = t.rsplit_once('.').unwrap();
    let (header, _) = signed.split_once('.').unwrap();
    let other = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&with(claims(), "sub", json!("mallory"))).unwrap());
    let mut tail = signature.to_string().into_bytes();
    tail[100] = if tail[100] == b'A' { b'B' } else { b'A' };
    let other_tail = String::from_utf8(tail).unwrap();
    for forged in [
        format!("{header}.{other}.{signature}"),
        format!("{signed}.{other_tail}"),
        format!("{signed}x.{signature}"),
        format!("{signed}{signature}"),
        signature.to_string(),
    ] {
        assert!(
            matches!(
                v.verify_cached(&cache, &forged, NOW),
                Err(JwtError::BadSignature | JwtError::Malformed(_))
            ),
            "{forged}"
        );
    }
    assert_eq!(cache.len(), 1);
    let again = v.verify_cached(&cache, &t, NOW).unwrap();
    assert!(Arc::ptr_eq(&real, &again), "the real token is still a hit");
}

#[test]
fn cache_serves_until_expiry_and_never_caches_failures() {
    let v = verifier();
    let cache = TokenCache::new(100).unwrap();
    let t = sign(
        Algorithm::RS256,
        Some("rsa"),
        &with(claims(), "exp", json!(NOW + 100)),
    );
    let a = v.verify_cached(&cache, &t, NOW).unwrap();
    let b = v.verify_cached(&cache, &t, NOW + 50).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second call served from the cache");
    assert_eq!(cache.len(), 1);
    // Past exp + skew the cached entry is gone and verification fails.
    assert!(matches!(
        v.verify_cached(&cache, &t, NOW + 161),
        Err(JwtError::Expired { .. })
    ));
    assert!(cache.is_empty());
    // Failures are not cached.
    let bad = sign(
        Algorithm::RS256,
        Some("rsa"),
        &with(claims(), "aud", json!("x")),
    );
    assert!(v.verify_cached(&cache, &bad, NOW).is_err());
    assert!(cache.is_empty());
    // A verifier with a different JWKS does not see another verifier's entries.
    let t = sign(Algorithm::EdDSA, Some("ed"), &claims());
    v.verify_cached(&cache, &t, NOW).unwrap();
    let only_rsa = JwtVerifier::new(
        config(),
        Jwks::from_value(&json!({"keys": [jwk(&rsa(), Algorithm::RS256, "rsa")]})).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        only_rsa.verify_cached(&cache, &t, NOW),
        Err(JwtError::UnknownKid(_))
    ));
}

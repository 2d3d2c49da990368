//! JWT verification per algorithm: cold (full check) and cached (a repeat of a token already
//! verified, served by the TokenCache), next to two references measured in the same run on
//! the same token's signing input:
//! - `ring_signature_only`: the bare ring signature check, so `cold / ring_signature_only` is
//!   the cost of everything the verifier adds (parsing, key selection, claims, identity);
//! - `rustcrypto_signature_only`: jsonwebtoken's RustCrypto backend, the alternative we did
//!   not take for the signature check.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use rustronaut_contract::identity::cache::TokenCache;
use rustronaut_contract::identity::jwt::{Jwks, JwtVerifier, JwtVerifierConfig};
use serde_json::json;
use std::hint::black_box;

const NOW: u64 = 1_700_000_000;

fn bench(c: &mut Criterion) {
    let keys = [
        (
            Algorithm::RS256,
            "rsa",
            EncodingKey::from_rsa_pem(include_bytes!("../tests/fixtures/rsa-2048.pem")).unwrap(),
        ),
        (
            Algorithm::ES256,
            "ec",
            EncodingKey::from_ec_pem(include_bytes!("../tests/fixtures/ec-p256.pem")).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            "ed",
            EncodingKey::from_ed_pem(include_bytes!("../tests/fixtures/ed25519.pem")).unwrap(),
        ),
    ];
    let jwks: Vec<serde_json::Value> = keys
        .iter()
        .map(|(alg, kid, key)| {
            let mut j = Jwk::from_encoding_key(key, *alg).unwrap();
            j.common.key_id = Some((*kid).into());
            serde_json::to_value(j).unwrap()
        })
        .collect();
    let verifier = JwtVerifier::new(
        JwtVerifierConfig {
            idp: "ci".into(),
            issuer: "https://token.example".into(),
            audiences: vec!["rtn".into()],
            groups_claim: "groups".into(),
            email_claim: "email".into(),
            clock_skew: 60,
        },
        Jwks::from_value(&json!({ "keys": jwks })).unwrap(),
    )
    .unwrap();
    let claims = json!({
        "iss": "https://token.example", "aud": "rtn", "sub": "svc-deployer",
        "exp": NOW + 3600, "iat": NOW, "email": "deployer@acme.example",
        "groups": ["deployers", "ops"], "scope": "read write",
    });
    let mut group = c.benchmark_group("jwt");
    group.throughput(Throughput::Elements(1));
    for (alg, kid, key) in &keys {
        let mut h = Header::new(*alg);
        h.kid = Some((*kid).into());
        let token = encode(&h, &claims, key).unwrap();
        verifier.verify(&token, NOW).unwrap();
        let jwk: Jwk =
            serde_json::from_value(jwks[keys.iter().position(|k| k.1 == *kid).unwrap()].clone())
                .unwrap();
        let dkey = DecodingKey::from_jwk(&jwk).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        assert!(jsonwebtoken::crypto::verify(signature, message.as_bytes(), &dkey, *alg).unwrap());
        let jv = &jwks[keys.iter().position(|k| k.1 == *kid).unwrap()];
        let b64 = |f: &str| URL_SAFE_NO_PAD.decode(jv[f].as_str().unwrap()).unwrap();
        let signature_bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        // Key material decoded once, outside the timed loop, as the verifier does per JWKS.
        let (n, e) = if *alg == Algorithm::RS256 {
            (b64("n"), b64("e"))
        } else {
            (vec![], vec![])
        };
        let point: Vec<u8> = if *alg == Algorithm::ES256 {
            [vec![4u8], b64("x"), b64("y")].concat()
        } else {
            vec![]
        };
        let ed_x = if *alg == Algorithm::EdDSA {
            b64("x")
        } else {
            vec![]
        };
        let ring_check = || -> bool {
            use ring::signature as s;
            let msg = message.as_bytes();
            match alg {
                Algorithm::RS256 => s::RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(&s::RSA_PKCS1_2048_8192_SHA256, msg, &signature_bytes)
                    .is_ok(),
                Algorithm::ES256 => s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_FIXED, &point)
                    .verify(msg, &signature_bytes)
                    .is_ok(),
                _ => s::UnparsedPublicKey::new(&s::ED25519, &ed_x)
                    .verify(msg, &signature_bytes)
                    .is_ok(),
            }
        };
        assert!(ring_check());
        group.bench_function(
            BenchmarkId::new("ring_signature_only", format!("{alg:?}")),
            |b| b.iter(|| black_box(ring_check())),
        );
        group.bench_function(
            BenchmarkId::new("rustcrypto_signature_only", format!("{alg:?}")),
            |b| {
                b.iter(|| {
                    jsonwebtoken::crypto::verify(
                        black_box(signature),
                        black_box(message.as_bytes()),
                        &dkey,
                        *alg,
                    )
                    .unwrap()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("cold", format!("{alg:?}")),
            &token,
            |b, t| b.iter(|| verifier.verify(black_box(t), NOW).unwrap()),
        );
        let cache = TokenCache::new(TokenCache::DEFAULT_CAPACITY).unwrap();
        verifier.verify_cached(&cache, &token, NOW).unwrap();
        group.bench_with_input(
            BenchmarkId::new("cached", format!("{alg:?}")),
            &token,
            |b, t| b.iter(|| verifier.verify_cached(&cache, black_box(t), NOW).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
